"""The serving side of the classifier: raw ticket text in, a :class:`Prediction` out.

The pipeline and the Flask app load one :class:`Classifier` per process and call
:meth:`Classifier.predict` from request and worker threads. Only onnxruntime and NumPy are
needed here, never scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model import signals
from model.explain import Explainer, basic_guards
from model.normalize import normalize_text
from model.onnx_graph import METRICS_FILE, MODEL_FILE, run_batched, session_for

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
ALTERNATIVES = 3


class ModelError(RuntimeError):
    """A model folder that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class Prediction:
    """The classifier's output for one ticket, as the policy and the side panel read it."""

    queue: str
    confidence: float
    threshold: float | None
    alternatives: list[tuple[str, float]]
    probabilities: dict[str, float]
    terms: list[str] = field(default_factory=list)
    guards: list[str] = field(default_factory=list)
    priority_signal: str | None = None
    model_version: str = ""
    # Names of the text rules behind priority_signal, such as "outage" or "urgency words".
    priority_rules: list[str] = field(default_factory=list)

    @property
    def meets_threshold(self) -> bool:
        """Whether the queue may be routed automatically: calibrated, confident, no guard."""
        return self.threshold is not None and self.confidence >= self.threshold and not self.guards

    def to_dict(self) -> dict:
        data = asdict(self)
        data["alternatives"] = [[queue, score] for queue, score in self.alternatives]
        data["meets_threshold"] = self.meets_threshold
        return data


class Classifier:
    """An ONNX ticket classifier with its metrics and per-queue thresholds.

    One InferenceSession per instance. onnxruntime allows concurrent ``run`` calls on one
    session and nothing here changes after loading, so :meth:`predict` is thread-safe.
    """

    def __init__(self, session, metrics: dict, path: Path, explainer: Explainer | None = None):
        self.path = path
        self.explainer = explainer
        self.metrics = metrics
        self.labels: list[str] = list(metrics["labels"])
        self.version: str = metrics["model_version"]
        self.thresholds: dict[str, float | None] = {
            label: (metrics.get("thresholds", {}).get(label) or {}).get("threshold")
            for label in self.labels
        }
        self._session = session

    @classmethod
    def load(cls, path: str | Path | None = None) -> Classifier:
        """Load a model folder; None loads the shipped model in model/default/.

        The folder contains ``model.onnx`` and ``metrics.json``, and ``terms.json`` when the model
        has explanation terms.

        Raises :class:`ModelError` when a file is missing, the metrics file does not belong
        to the ONNX file, or the model's outputs do not match the label list.
        """
        folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if folder.is_file():
            folder = folder.parent
        model_file = folder / MODEL_FILE
        metrics_file = folder / METRICS_FILE
        for required in (model_file, metrics_file):
            if not required.is_file():
                raise ModelError(f"model file not found: {required}")

        onnx_bytes = model_file.read_bytes()
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ModelError(f"{metrics_file}: invalid JSON: {error}") from error
        for key in ("labels", "model_version"):
            if key not in metrics:
                raise ModelError(f"{metrics_file}: missing key {key!r}")

        digest = hashlib.sha256(onnx_bytes).hexdigest()
        suffix = metrics["model_version"].rsplit("-", 1)[-1]
        if not digest.startswith(suffix):
            raise ModelError(
                f"{metrics_file} describes model version {metrics['model_version']}, but "
                f"{model_file} has SHA-256 {digest[:12]}; retrain or copy the matching pair"
            )

        try:
            session = session_for(onnx_bytes)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"{model_file}: onnxruntime cannot load it: {error}") from error

        try:
            explainer = Explainer.load(folder, metrics["model_version"])
        except (ValueError, KeyError) as error:
            raise ModelError(f"{folder}: invalid explanation terms: {error}") from error
        if explainer is None:
            logger.warning("model %s has no terms.json: no explanation terms", folder)

        classifier = cls(session, metrics, folder, explainer)
        width = run_batched(session, ["warm up"]).shape[1]
        if width != len(classifier.labels):
            raise ModelError(
                f"{model_file} returns {width} probabilities but {metrics_file} lists "
                f"{len(classifier.labels)} labels"
            )
        logger.info("loaded model %s from %s", classifier.version, folder)
        return classifier

    def predict(self, text: str) -> Prediction:
        """Classify one ticket text (subject and description, raw or HTML)."""
        return self.predict_many([text])[0]

    def predict_many(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        """Classify many texts, scoring ``batch_size`` at a time to bound memory."""
        normalized = [normalize_text(text or "") for text in texts]
        probabilities = self.probabilities(normalized, batch_size)
        return [
            self._prediction(text, row) for text, row in zip(normalized, probabilities, strict=True)
        ]

    def probabilities(self, normalized: list[str], batch_size: int = 64) -> np.ndarray:
        """Return the probability matrix for texts already passed through normalize_text."""
        return run_batched(self._session, normalized, batch_size)

    def _prediction(self, normalized: str, row: np.ndarray) -> Prediction:
        order = np.argsort(-row, kind="stable").tolist()
        rounded = np.round(row.astype(np.float64), 6).tolist()
        top = order[0]
        queue = self.labels[top]

        guards = basic_guards(normalized)
        terms: list[str] = []
        if self.explainer is not None and normalized:
            words = self.explainer.words(normalized)
            terms = self.explainer.terms(words, queue)
            if not guards:
                guards = self.explainer.guards(normalized, words)
        priority, priority_rules = signals.priority_signal(normalized)

        return Prediction(
            queue=queue,
            confidence=float(row[top]),
            threshold=self.thresholds.get(queue),
            alternatives=[(self.labels[i], rounded[i]) for i in order[1 : 1 + ALTERNATIVES]],
            probabilities=dict(zip(self.labels, rounded, strict=True)),
            terms=terms,
            guards=guards,
            priority_signal=priority,
            model_version=self.version,
            priority_rules=priority_rules,
        )

"""The serving side of the classifier: raw ticket text in, a :class:`Prediction` out.

The pipeline and the Flask app load one :class:`Classifier` per process and call
:meth:`Classifier.predict` from request and worker threads. Only onnxruntime and NumPy are
needed here, never scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model import signals
from model.explain import TERMS_FILE, Explainer, basic_guards
from model.normalize import normalize_text
from model.onnx_graph import (
    METRICS_FILE,
    MODEL_FILE,
    PRIORITY_MODEL_FILE,
    run_batched,
    session_for,
)
from model.priority import LEVELS as PRIORITY_LEVELS

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
    # The priority head's level when it reaches that level's threshold and no guard holds;
    # None otherwise, and always None for a model trained without a priority column.
    predicted_priority: str | None = None
    priority_confidence: float | None = None

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

    def __init__(
        self,
        session,
        metrics: dict,
        path: Path,
        explainer: Explainer | None = None,
        priority_session=None,
    ):
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
        self._priority_session = priority_session
        head = metrics.get("priority") or {}
        self.priority_levels: list[str] = list(head.get("labels") or [])
        self.priority_thresholds: dict[str, float | None] = {
            level: (head.get("thresholds", {}).get(level) or {}).get("threshold")
            for level in self.priority_levels
        }

    @classmethod
    def load(cls, path: str | Path | None = None) -> Classifier:
        """Load a model folder; None loads the shipped model in model/default/.

        The folder contains ``model.onnx``, ``metrics.json`` and ``terms.json``, and
        ``priority.onnx`` when metrics.json lists a priority head. terms.json is required
        because it holds the text profile the guards check.

        Raises :class:`ModelError` when a file is missing, the metrics file does not belong
        to the ONNX file, or the model's outputs do not match the label list.
        """
        folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if folder.is_file():
            folder = folder.parent
        model_file = folder / MODEL_FILE
        metrics_file = folder / METRICS_FILE
        for required in (model_file, metrics_file, folder / TERMS_FILE):
            if not required.is_file():
                raise ModelError(f"model file not found: {required}")

        onnx_bytes = model_file.read_bytes()
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelError(f"{metrics_file}: invalid JSON: {error}") from error
        _check_metrics(metrics, metrics_file)

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
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # ValueError covers invalid JSON and text that is not UTF-8, too.
            raise ModelError(f"{folder / TERMS_FILE}: invalid: {error}") from error
        # terms.json lists the queues in the order of the model's outputs; a metrics.json
        # whose labels were reordered would name every prediction wrongly.
        if explainer is not None and explainer.queues != list(metrics["labels"]):
            raise ModelError(
                f"{metrics_file} and {folder / TERMS_FILE} list the queues differently; "
                "retrain or copy the matching files"
            )

        priority_session = _load_priority_head(folder, metrics) if "priority" in metrics else None
        classifier = cls(session, metrics, folder, explainer, priority_session)
        width = run_batched(session, ["warm up"]).shape[1]
        if width != len(classifier.labels):
            raise ModelError(
                f"{model_file} returns {width} probabilities but {metrics_file} lists "
                f"{len(classifier.labels)} labels"
            )
        if priority_session is not None:
            width = run_batched(priority_session, ["warm up"]).shape[1]
            if width != len(classifier.priority_levels):
                raise ModelError(
                    f"{folder / PRIORITY_MODEL_FILE} returns {width} probabilities but "
                    f"{metrics_file} lists {len(classifier.priority_levels)} priority levels"
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
        if self._priority_session is None:
            priorities = [None] * len(normalized)
        else:
            priorities = list(run_batched(self._priority_session, normalized, batch_size))
        return [
            self._prediction(text, row, priority)
            for text, row, priority in zip(normalized, probabilities, priorities, strict=True)
        ]

    def probabilities(self, normalized: list[str], batch_size: int = 64) -> np.ndarray:
        """Return the probability matrix for texts already passed through normalize_text."""
        return run_batched(self._session, normalized, batch_size)

    def priority_probabilities(self, normalized: list[str], batch_size: int = 64) -> np.ndarray:
        """Return the priority head's probabilities; raises ModelError without a head."""
        if self._priority_session is None:
            raise ModelError(f"model {self.version} has no priority head")
        return run_batched(self._priority_session, normalized, batch_size)

    def _prediction(
        self, normalized: str, row: np.ndarray, priority_row: np.ndarray | None = None
    ) -> Prediction:
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
        predicted_priority = priority_confidence = None
        if priority_row is not None:
            level = self.priority_levels[int(priority_row.argmax())]
            priority_confidence = round(float(priority_row.max()), 6)
            cutoff = self.priority_thresholds.get(level)
            if cutoff is not None and priority_confidence >= cutoff and not guards:
                predicted_priority = level

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
            predicted_priority=predicted_priority,
            priority_confidence=priority_confidence,
        )


def _check_metrics(metrics, metrics_file: Path) -> None:
    """Reject a metrics.json whose labels or thresholds the server cannot use.

    A hand-edited threshold that is not a number would otherwise fail every delivery.
    """
    if not isinstance(metrics, dict):
        raise ModelError(f"{metrics_file}: expected a JSON object")
    for key in ("labels", "model_version"):
        if key not in metrics:
            raise ModelError(f"{metrics_file}: missing key {key!r}")
    labels = metrics["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ModelError(f"{metrics_file}: 'labels' must be a list of strings")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ModelError(f"{metrics_file}: 'labels' repeats {', '.join(repeated)}")
    if not isinstance(metrics.get("thresholds"), dict) or set(metrics["thresholds"]) != set(labels):
        raise ModelError(f"{metrics_file}: 'thresholds' must have one entry per label")
    version = metrics["model_version"]
    if not isinstance(version, str) or not re.fullmatch(r".+-[0-9a-f]{12}", version):
        raise ModelError(
            f"{metrics_file}: 'model_version' must be NAME-HASH, HASH the first 12 hex digits "
            f"of the SHA-256 of model.onnx, found {version!r}"
        )
    sections = [("thresholds", metrics.get("thresholds") or {})]
    if "priority" in metrics:
        head = metrics["priority"]
        if not isinstance(head, dict) or not isinstance(head.get("labels"), list):
            raise ModelError(f"{metrics_file}: 'priority' must be an object with 'labels'")
        levels = head["labels"]
        # Training writes the levels present in the data, lowest first.
        if levels != [level for level in PRIORITY_LEVELS if level in levels] or len(levels) < 2:
            raise ModelError(
                f"{metrics_file}: 'priority.labels' must list at least two of "
                f"{', '.join(PRIORITY_LEVELS)}, each once and in that order"
            )
        if not isinstance(head.get("thresholds"), dict) or set(head["thresholds"]) != set(levels):
            raise ModelError(f"{metrics_file}: 'priority.thresholds' must have one entry per level")
        sections.append(("priority.thresholds", head["thresholds"]))
    for name, thresholds in sections:
        if not isinstance(thresholds, dict):
            raise ModelError(f"{metrics_file}: {name!r} must be an object")
        for label, entry in thresholds.items():
            if not isinstance(entry, dict):
                raise ModelError(
                    f"{metrics_file}: {name}.{label} must be an object with a 'threshold'"
                )
            threshold = entry.get("threshold")
            valid = threshold is None or (
                isinstance(threshold, int | float)
                and not isinstance(threshold, bool)
                and 0.0 <= threshold <= 1.0
            )
            if not valid:
                raise ModelError(
                    f"{metrics_file}: {name}.{label}.threshold must be null or a number "
                    f"from 0 to 1, found {threshold!r}"
                )


def _load_priority_head(folder: Path, metrics: dict):
    """Open priority.onnx after checking it is the head that metrics.json describes."""
    head_file = folder / PRIORITY_MODEL_FILE
    if not head_file.is_file():
        raise ModelError(f"model file not found: {head_file} (metrics.json lists a priority head)")
    head_bytes = head_file.read_bytes()
    expected = (metrics.get("priority") or {}).get("sha256")
    if hashlib.sha256(head_bytes).hexdigest() != expected:
        raise ModelError(
            f"{head_file} is not the priority head that {folder / METRICS_FILE} describes; "
            "retrain or copy the matching files"
        )
    try:
        return session_for(head_bytes)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelError(f"{head_file}: onnxruntime cannot load it: {error}") from error

"""Training, ONNX export and threshold calibration of the ticket classifier.

Needs the ``train`` extra (scikit-learn, skl2onnx, onnx). The result is a folder with
``model.onnx`` (one string in, class probabilities out), ``metrics.json`` and ``terms.json``.

Steps:

1. a stratified 70/15/15 train/validation/test split with seed 0;
2. word (1-2) and character (2-4) n-gram TF-IDF, keeping the n-grams with the highest
   chi-squared score on the training split, so the exported graph stays small and fast;
3. a multinomial logistic regression;
4. export with skl2onnx and an agreement check of ONNX against scikit-learn on the test split;
5. per-queue thresholds chosen on the validation split, and figures on the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model import evaluation
from model.data import DataError, Dataset
from model.explain import TERMS_FILE
from model.onnx_graph import (
    METRICS_FILE,
    MODEL_FILE,
    PRIORITY_MODEL_FILE,
    model_version,
    run_batched,
    session_for,
)
from model.priority import LEVELS, map_priorities
from model.train_explain import build_terms

logger = logging.getLogger(__name__)

SEED = 0
# Tokens of two or more ASCII letters, digits or underscores, because normalize_text has
# folded accents already. The same pattern goes to scikit-learn and to the ONNX Tokenizer.
# Left to itself, skl2onnx replaces scikit-learn's default pattern by one that also keeps
# one-letter tokens.
WORD_PATTERN = "[a-z0-9_][a-z0-9_]+"
MIN_AGREEMENT = 0.995
EXPORT_BATCH_SIZE = 64


@dataclass
class TrainConfig:
    """Settings of one training run; stored in metrics.json."""

    name: str = "deskroute"
    target_precision: float = evaluation.DEFAULT_TARGET_PRECISION
    min_support: int = evaluation.DEFAULT_MIN_SUPPORT
    word_features: int = 4_000
    char_features: int = 5_000
    min_df: int = 2
    regularization_c: float = 2.0
    max_iter: int = 300
    # Languages recorded when the training texts have too few stop words to detect any.
    languages: list[str] = field(default_factory=lambda: ["en"])
    validation_share: float = 0.15
    test_share: float = 0.15
    # Try every entry of TUNING_GRID and keep the one with the best validation accuracy.
    tune: bool = False
    # Priority value (lower case) to level, applied before the built-in names and numbers.
    priority_map: dict[str, str] = field(default_factory=dict)


# (word features, character features, C) tried by ``tune``. The first entry is the default:
# few features and strong regularisation suit sets with few queues and long texts, and the
# others suit many queues with short texts, where every n-gram counts.
TUNING_GRID: tuple[tuple[int, int, float], ...] = (
    (4_000, 5_000, 2.0),
    (10_000, 15_000, 10.0),
    (30_000, 30_000, 10.0),
)


def split_indices(
    labels: list[str], validation_share: float, test_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split row indices into train, validation and test, stratified by label, seed 0."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    y = np.asarray(labels)
    holdout = validation_share + test_share
    try:
        train, rest = train_test_split(indices, test_size=holdout, stratify=y, random_state=SEED)
        validation, test = train_test_split(
            rest, test_size=test_share / holdout, stratify=y[rest], random_state=SEED
        )
    except ValueError as error:
        raise DataError(
            f"cannot split the data into train, validation and test: {error}"
        ) from error
    return np.sort(train), np.sort(validation), np.sort(test)


def build_pipeline(
    texts: list[str], labels: np.ndarray, config: TrainConfig, class_weight: str | None = None
):
    """Fit the TF-IDF features with chi-squared selection and the logistic regression.

    Selection keeps the ``word_features`` and ``char_features`` n-grams with the highest
    chi-squared score against the labels. The vectorizers are then refitted with that
    fixed vocabulary, so the exported graph never computes the discarded columns.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.feature_selection import chi2
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    # lowercase=False: normalize_text has lower-cased already, and the exported graph then
    # needs no StringNormalizer, whose default locale is not installed everywhere.
    settings = {
        "word": {"analyzer": "word", "ngram_range": (1, 2), "token_pattern": WORD_PATTERN},
        "char": {"analyzer": "char", "ngram_range": (2, 4)},
    }
    limits = {"word": config.word_features, "char": config.char_features}
    vectorizers = []
    for kind, options in settings.items():
        probe = TfidfVectorizer(lowercase=False, min_df=config.min_df, dtype=np.float32, **options)
        matrix = probe.fit_transform(texts)
        scores, _ = chi2(matrix, labels)
        scores = np.nan_to_num(scores)
        keep = np.sort(np.argsort(-scores, kind="stable")[: limits[kind]])
        vocabulary = probe.get_feature_names_out()[keep]
        if kind == "word":
            vocabulary = _with_bigram_parts(vocabulary)
        vectorizers.append(
            (
                kind,
                TfidfVectorizer(
                    lowercase=False, vocabulary=list(vocabulary), dtype=np.float32, **options
                ),
            )
        )
        logger.info("%s n-grams: kept %d of %d", kind, len(vocabulary), matrix.shape[1])

    classifier = LogisticRegression(
        C=config.regularization_c, max_iter=config.max_iter, class_weight=class_weight
    )
    pipeline = Pipeline([("features", FeatureUnion(vectorizers)), ("classifier", classifier)])
    pipeline.fit(texts, labels)
    return pipeline


def _with_bigram_parts(vocabulary) -> list[str]:
    """Add the words of every kept bigram to the vocabulary.

    skl2onnx 1.20 exports a bigram as two tokens only when both words are in the
    vocabulary. Otherwise the bigram becomes one token with a space inside. The ONNX
    tokenizer never produces such a token, so the bigram would silently score zero.
    """
    terms = set(vocabulary)
    for term in vocabulary:
        terms.update(term.split(" "))
    return sorted(terms)


def export_onnx(pipeline) -> bytes:
    """Convert the fitted pipeline to ONNX: a string tensor [N, 1] in, probabilities out."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    features = pipeline.named_steps["features"]
    word_vectorizer = dict(features.transformer_list)["word"]
    options = {
        id(word_vectorizer): {"tokenexp": WORD_PATTERN},
        id(pipeline.named_steps["classifier"]): {"zipmap": False},
    }
    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    _set_pad_value(onnx_model)
    # skl2onnx names the graph with a random UUID, and lists the operator set domains in
    # the iteration order of a set, which changes with Python's string hash seed. A fixed
    # name and sorted domains keep the bytes, and so the model version, the same for the
    # same data and settings.
    onnx_model.graph.name = "deskroute_classifier"
    _sort_opset_imports(onnx_model)
    return onnx_model.SerializeToString()


def _sort_opset_imports(onnx_model) -> None:
    from onnx import helper

    imports = sorted((entry.domain, entry.version) for entry in onnx_model.opset_import)
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(
        helper.make_opsetid(domain, version) for domain, version in imports
    )


def _set_pad_value(onnx_model) -> None:
    """Pad tokenised batches with ``\\x01`` in place of skl2onnx's ``#``.

    skl2onnx 1.20 pads shorter rows of a batch with ``#`` and only checks that ``#`` alone
    is not in the vocabulary. Character n-grams such as ``"# "`` are, so a batched call
    counted n-grams that were not in the text. normalize_text removes control
    characters, so ``\\x01`` never occurs in a real token.
    """
    from onnx import helper

    for node in onnx_model.graph.node:
        if node.op_type != "Tokenizer":
            continue
        for index, attribute in enumerate(node.attribute):
            if attribute.name == "pad_value":
                node.attribute[index].CopyFrom(helper.make_attribute("pad_value", "\x01"))


def train_model(
    dataset: Dataset,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train, export, check and calibrate a model; write model.onnx, metrics.json, terms.json.

    Returns the metrics dict. Raises :class:`DataError` for unusable data and
    RuntimeError when the exported model disagrees with scikit-learn.
    """
    config = config or TrainConfig()
    step = progress or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    priorities = None
    if dataset.priorities is not None:
        # Mapped before the queue head is fitted, so a bad value stops training at once.
        priorities = map_priorities(dataset.priorities, config.priority_map)

    labels = sorted(set(dataset.labels))
    label_index = {label: i for i, label in enumerate(labels)}
    y = np.array([label_index[label] for label in dataset.labels])
    texts = np.array(dataset.texts, dtype=object)

    step("splitting")
    train, validation, test = split_indices(
        dataset.labels, config.validation_share, config.test_share
    )

    step("fitting features and classifier")
    tuning: list[dict] = []
    if config.tune:
        pipeline, config, tuning = _tune(texts, y, train, validation, config)
    else:
        pipeline = build_pipeline(list(texts[train]), y[train], config)
    classes = list(pipeline.named_steps["classifier"].classes_)
    if classes != list(range(len(labels))):
        raise DataError("every label needs rows in the training split")

    step("exporting to ONNX")
    onnx_bytes = export_onnx(pipeline)
    session = session_for(onnx_bytes)

    step("checking ONNX against scikit-learn")
    test_onnx, agreement, max_difference = _check_export(pipeline, session, list(texts[test]))

    step("choosing thresholds on the validation split")
    validation_onnx = run_batched(session, list(texts[validation]), EXPORT_BATCH_SIZE)
    thresholds = evaluation.choose_thresholds(
        y[validation], validation_onnx, labels, config.target_precision, config.min_support
    )
    cutoffs = {label: entry["threshold"] for label, entry in thresholds.items()}

    metrics = {
        "model_version": model_version(config.name, onnx_bytes),
        "labels": labels,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": dataset.source,
        "rows": {
            "train": len(train),
            "validation": len(validation),
            "test": len(test),
        },
        "config": asdict(config),
        "tuning": tuning,
        "features": _feature_counts(pipeline),
        "target_precision": config.target_precision,
        "thresholds": thresholds,
        "validation": {
            "at_thresholds": evaluation.threshold_summary(
                y[validation], validation_onnx, labels, cutoffs
            ),
        },
        "test": {
            **evaluation.classification_summary(y[test], test_onnx.argmax(axis=1), labels),
            "at_thresholds": evaluation.threshold_summary(y[test], test_onnx, labels, cutoffs),
            "coverage_at_precision": {
                str(target): evaluation.coverage_at_precision(y[test], test_onnx, target)
                for target in (0.90, 0.95)
            },
            "onnx_agreement": round(agreement, 6),
            "onnx_max_probability_difference": max_difference,
        },
        "model_file_bytes": len(onnx_bytes),
        "software": _versions(),
    }
    files = {MODEL_FILE: onnx_bytes}
    if priorities is not None:
        step("training the priority head")
        priority_bytes, metrics["priority"] = _train_priority_head(
            dataset, priorities, texts, (train, validation, test), config
        )
        files[PRIORITY_MODEL_FILE] = priority_bytes

    step("writing explanation terms")
    terms = build_terms(
        pipeline,
        labels,
        WORD_PATTERN,
        list(texts[train]),
        list(texts[validation]),
        list(config.languages),
    )
    terms = {"model_version": metrics["model_version"], **terms}
    metrics["text_profile"] = {
        key: terms[key] for key in ("languages", "language_source", "scripts", "min_known_share")
    }
    files[TERMS_FILE] = (json.dumps(terms, ensure_ascii=False) + "\n").encode()
    files[METRICS_FILE] = (json.dumps(metrics, indent=2, ensure_ascii=False) + "\n").encode()
    _write_model_files(out, files)
    if PRIORITY_MODEL_FILE not in files:
        # A priority head left from an earlier run would not match this model.
        (out / PRIORITY_MODEL_FILE).unlink(missing_ok=True)
    logger.info(
        "trained %s: test accuracy %.4f, macro-F1 %.4f",
        metrics["model_version"],
        metrics["test"]["accuracy"],
        metrics["test"]["macro_f1"],
    )
    return metrics


def _check_export(pipeline, session, texts: list[str]) -> tuple[np.ndarray, float, float]:
    """Score ``texts`` with ONNX and scikit-learn; fail below MIN_AGREEMENT of the top class.

    Returns the ONNX probabilities, the agreement and the largest probability difference.
    """
    scored = run_batched(session, texts, EXPORT_BATCH_SIZE)
    expected = pipeline.predict_proba(texts)
    agreement = float((scored.argmax(axis=1) == expected.argmax(axis=1)).mean())
    if agreement < MIN_AGREEMENT:
        raise RuntimeError(
            f"ONNX and scikit-learn agree on {agreement:.4f} of the test rows, "
            f"below the required {MIN_AGREEMENT}; the export is not usable"
        )
    return scored, agreement, float(np.abs(scored - expected).max())


def _train_priority_head(dataset: Dataset, priorities, texts, split, config: TrainConfig):
    """Train, export and calibrate the priority head on the rows that have a priority.

    The head gets the queue head's split, features and settings, and thresholds for the
    same target precision, so a level is only reported when the head is that sure of it.
    ``priorities`` is the result of map_priorities: a level per row, and the value map.
    Returns the ONNX bytes and the ``priority`` section of metrics.json.
    """
    levels, value_map = priorities
    present = [level for level in LEVELS if level in set(levels)]
    index = {level: i for i, level in enumerate(present)}
    known = np.array([level is not None for level in levels])
    y = np.array([index.get(level, -1) for level in levels])
    train, validation, test = (part[known[part]] for part in split)
    if len(set(y[train])) < 2:
        raise DataError(
            f"column {dataset.source.get('priority_column')!r}: the priority head needs at "
            f"least two levels in the training rows, found {', '.join(present) or 'none'}"
        )
    if len(validation) == 0 or len(test) == 0:
        raise DataError("too few rows with a priority for validation and test rows")
    # Most tickets have the usual priority and the few urgent ones matter most, so the
    # levels are weighted by their inverse frequency. The per-level thresholds keep the
    # precision that this weighting would otherwise cost.
    pipeline = build_pipeline(list(texts[train]), y[train], config, class_weight="balanced")
    if list(pipeline.named_steps["classifier"].classes_) != list(range(len(present))):
        raise DataError("every priority level needs rows in the training split")
    onnx_bytes = export_onnx(pipeline)
    session = session_for(onnx_bytes)
    test_onnx, agreement, max_difference = _check_export(pipeline, session, list(texts[test]))
    validation_onnx = run_batched(session, list(texts[validation]), EXPORT_BATCH_SIZE)
    thresholds = evaluation.choose_thresholds(
        y[validation], validation_onnx, present, config.target_precision, config.min_support
    )
    cutoffs = {level: entry["threshold"] for level, entry in thresholds.items()}
    return onnx_bytes, {
        "column": dataset.source.get("priority_column"),
        "labels": present,
        "value_map": value_map,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "rows": {
            "train": len(train),
            "validation": len(validation),
            "test": len(test),
            "without_priority": int((~known).sum()),
        },
        "thresholds": thresholds,
        "test": {
            **evaluation.classification_summary(y[test], test_onnx.argmax(axis=1), present),
            "at_thresholds": evaluation.threshold_summary(y[test], test_onnx, present, cutoffs),
            "onnx_agreement": round(agreement, 6),
            "onnx_max_probability_difference": max_difference,
        },
        "model_file_bytes": len(onnx_bytes),
    }


def _write_model_files(out: Path, files: dict[str, bytes]) -> None:
    """Write all files of a model folder only after every check passed.

    Each file goes to a temporary name first and is then renamed, so a failed run leaves
    the previous model in place. A reader that loads during the renames can still see a
    mixed folder, which Classifier.load rejects through the version check.
    """
    staged = []
    for name, content in files.items():
        temporary = out / f".{name}.tmp"
        temporary.write_bytes(content)
        staged.append((temporary, out / name))
    for temporary, target in staged:
        os.replace(temporary, target)


def _tune(texts, y, train, validation, config: TrainConfig):
    """Fit one pipeline per TUNING_GRID entry; return the best, its config and all scores."""
    best = None
    scores = []
    for word_features, char_features, c in TUNING_GRID:
        candidate = replace(
            config, word_features=word_features, char_features=char_features, regularization_c=c
        )
        pipeline = build_pipeline(list(texts[train]), y[train], candidate)
        accuracy = float((pipeline.predict(list(texts[validation])) == y[validation]).mean())
        scores.append(
            {
                "word_features": word_features,
                "char_features": char_features,
                "regularization_c": c,
                "validation_accuracy": round(accuracy, 4),
            }
        )
        logger.info("tuning %s: validation accuracy %.4f", scores[-1], accuracy)
        if best is None or accuracy > best[0]:
            best = (accuracy, pipeline, candidate)
    return best[1], best[2], scores


def _feature_counts(pipeline) -> dict[str, int]:
    features = pipeline.named_steps["features"]
    return {name: len(vec.vocabulary_) for name, vec in features.transformer_list}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }

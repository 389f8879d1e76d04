"""Quality figures and per-queue thresholds, computed with NumPy only.

Training uses these on the validation and test splits. ``deskroute evaluate`` uses them on
any labelled file scored through the ONNX model, so both report the same numbers.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TARGET_PRECISION = 0.90
# A queue needs at least this many validation predictions at or above its threshold, so a
# threshold is never set by two or three lucky tickets.
DEFAULT_MIN_SUPPORT = 5
CURVE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Return accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``y_true`` and ``y_pred`` are class indices into ``labels``. The confusion matrix has
    one row per true class and one column per predicted class, in ``labels`` order.
    """
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_positive = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(n), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
    present = actual > 0

    per_class = {
        label: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(actual[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "rows": int(len(y_true)),
        "accuracy": round(float(true_positive.sum() / max(len(y_true), 1)), 4),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 4),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(labels), "rows": confusion.tolist()},
    }


def choose_thresholds(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> dict[str, dict]:
    """Choose, per queue, the lowest confidence threshold that reaches ``target_precision``.

    For queue q, the candidates are the confidences of the rows predicted as q. The
    threshold is the lowest candidate t at which the rows predicted as q with confidence
    >= t have precision >= target and number at least ``min_support``. A queue with no
    such t gets threshold None, which means it is never routed automatically. Coverage is
    the share of all rows predicted as q that meet the threshold.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    chosen: dict[str, dict] = {}
    for index, label in enumerate(labels):
        mask = predicted == index
        count = int(mask.sum())
        entry = {
            "threshold": None,
            "precision": None,
            "coverage": 0.0,
            "predicted": count,
            "routed": 0,
        }
        if count:
            order = np.argsort(-confidence[mask], kind="stable")
            scores = confidence[mask][order]
            correct = (y_true[mask][order] == index).astype(float)
            # Precision of the top-k predictions for every k. Rows with equal confidence
            # enter together, so only the last position of each tie is a valid cut.
            precision_at_k = np.cumsum(correct) / np.arange(1, count + 1)
            last_of_tie = np.append(scores[1:] != scores[:-1], True)
            valid = (
                last_of_tie
                & (precision_at_k >= target_precision)
                & (np.arange(1, count + 1) >= min_support)
            )
            if valid.any():
                k = int(np.flatnonzero(valid).max())
                entry.update(
                    threshold=float(scores[k]),
                    precision=round(float(precision_at_k[k]), 4),
                    coverage=round((k + 1) / count, 4),
                    routed=k + 1,
                )
        chosen[label] = entry
    return chosen


def threshold_summary(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    thresholds: dict[str, float | None],
) -> dict:
    """Return precision and coverage over all rows when each queue uses its own threshold."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    cutoffs = np.array(
        [np.inf if thresholds.get(label) is None else thresholds[label] for label in labels]
    )
    routed = confidence >= cutoffs[predicted]
    count = int(routed.sum())
    correct = int((predicted[routed] == y_true[routed]).sum())
    return {
        "rows": int(len(y_true)),
        "routed": count,
        "coverage": round(count / max(len(y_true), 1), 4),
        "precision": round(correct / count, 4) if count else None,
    }


def precision_coverage_curve(
    y_true: np.ndarray, probabilities: np.ndarray, thresholds=CURVE_THRESHOLDS
) -> list[dict]:
    """Return precision and coverage of the top prediction at one global threshold each."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    curve = []
    for threshold in thresholds:
        routed = confidence >= threshold
        count = int(routed.sum())
        correct = int((predicted[routed] == y_true[routed]).sum())
        curve.append(
            {
                "threshold": threshold,
                "coverage": round(count / max(len(y_true), 1), 4),
                "precision": round(correct / count, 4) if count else None,
            }
        )
    return curve


def coverage_at_precision(y_true: np.ndarray, probabilities: np.ndarray, target: float) -> float:
    """Return the largest share of rows that one global threshold routes at >= ``target``."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    order = np.argsort(-confidence, kind="stable")
    scores = confidence[order]
    precision_at_k = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    valid = last_of_tie & (precision_at_k >= target)
    if not valid.any():
        return 0.0
    return round((int(np.flatnonzero(valid).max()) + 1) / len(order), 4)

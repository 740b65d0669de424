"""Evaluation numbers from true labels and predicted class probabilities: pure functions, no MLflow, no training.

Every function takes integer labels ``y_true`` (N,) in 0-9 and, where it needs them, probabilities ``proba``
(N, 10) whose rows sum to 1. Keys and columns carry no prefix: the caller adds ``test_`` or ``val_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

N_CLASSES = 10
LABELS = list(range(N_CLASSES))
ECE_BINS = 15

METRIC_NAMES = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "roc_auc",
    "log_loss",
    "brier",
    "rmse",
    "ece",
)


@dataclass(frozen=True)
class Reliability:
    """Top-1 confidence binned into equal-width bins ``(edges[i], edges[i+1]]`` and the accuracy within each bin.

    ``confidence`` and ``accuracy`` are NaN for empty bins.
    """

    edges: np.ndarray  # (bins + 1,)
    count: np.ndarray  # (bins,) int
    confidence: np.ndarray  # (bins,) mean top-1 probability of the samples in the bin
    accuracy: np.ndarray  # (bins,) fraction of them whose top-1 class is right

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |accuracy - confidence| over the bins."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] * gaps) / total)

    def to_frame(self) -> pd.DataFrame:
        """One row per bin: lower, upper, count, confidence, accuracy."""
        return pd.DataFrame(
            {
                "lower": self.edges[:-1],
                "upper": self.edges[1:],
                "count": self.count,
                "confidence": self.confidence,
                "accuracy": self.accuracy,
            }
        )


def _check_labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional (N,), got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES):
        raise ValueError(
            f"y_true must hold integer digits 0-{N_CLASSES - 1}, got dtype {y.dtype} with values {y.min()}..{y.max()}"
        )
    return y.astype(np.int64, copy=False)


def _check(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true)
    p = np.asarray(proba)
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise ValueError(f"proba must have shape (N, {N_CLASSES}), got {p.shape}")
    if len(p) != len(y):
        raise ValueError(f"y_true holds {len(y)} labels but proba {len(p)} rows")
    if len(y) == 0:
        raise ValueError("no samples: y_true and proba are empty")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    return y, p


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin the top-1 confidence into ``bins`` equal-width bins over [0, 1]; the basis of the ECE and the reliability plot."""
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    y, p = _check(y_true, proba)
    confidence = p.max(axis=1).astype(np.float64)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left" on the inner edges puts a confidence equal to an edge into the bin below: bins are (lo, hi],
    # so a confidence of exactly 1.0 lands in the last bin and 0.0 in the first.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN, on purpose
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / count
        mean_acc = np.bincount(index, weights=correct, minlength=bins) / count
    return Reliability(edges=edges, count=count, confidence=mean_conf, accuracy=mean_acc)


def per_class_roc_auc(y_true: np.ndarray, proba: np.ndarray) -> dict[int, float]:
    """One-vs-rest ROC AUC of each digit that has both positives and negatives in ``y_true``; other digits are left out."""
    y, p = _check(y_true, proba)
    aucs = {}
    for digit in LABELS:
        positives = y == digit
        if positives.any() and not positives.all():  # AUC is undefined without both classes
            aucs[digit] = float(roc_auc_score(positives, p[:, digit]))
    return aucs


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1, ROC AUC, log loss, Brier score, RMSE and ECE of ``proba`` against ``y_true``.

    The predicted digit is the argmax of ``proba``. On a batch where some digits are missing:

    - ``macro_*`` average over the digits that occur in ``y_true`` or among the predictions (a digit that is in
      neither carries no information); a digit never predicted has precision 0, a digit predicted but absent from
      ``y_true`` has recall 0 (scikit-learn's ``zero_division=0``).
    - ``roc_auc`` is the one-vs-rest AUC averaged (unweighted) over the digits present in ``y_true``; NaN when
      ``y_true`` holds a single digit.
    - ``log_loss``, ``brier`` and ``rmse`` always use all 10 columns of ``proba``.

    ``brier`` is the multi-class Brier score, the mean over samples of the sum over classes of (p - onehot)^2
    (0 is perfect, uniform probabilities give 0.9); ``rmse`` is the root of the mean of (p - onehot)^2 over all
    N x 10 entries, so ``rmse == sqrt(brier / 10)``. ``ece`` uses 15 equal-width bins of top-1 confidence.
    """
    y, p = _check(y_true, proba)
    y_pred = p.argmax(axis=1)
    present = np.union1d(y, y_pred)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, y_pred, labels=present, average="macro", zero_division=0
    )
    aucs = per_class_roc_auc(y, p)
    onehot = np.eye(N_CLASSES)[y]
    squared = (p.astype(np.float64) - onehot) ** 2
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "roc_auc": float(np.mean(list(aucs.values()))) if aucs else float("nan"),
        # Positional y_proba: the keyword was renamed (y_pred -> y_proba) in scikit-learn 1.9.
        "log_loss": float(log_loss(y, p, labels=LABELS)),
        "brier": float(squared.sum(axis=1).mean()),
        "rmse": float(np.sqrt(squared.mean())),
        "ece": reliability_bins(y, p, ECE_BINS).ece,
    }


def per_class_report(y_true: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """One row per digit 0-9: digit, precision, recall, f1, support (precision is 0 for a digit never predicted)."""
    y, p = _check(y_true, proba)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, p.argmax(axis=1), labels=LABELS, average=None, zero_division=0
    )
    return pd.DataFrame(
        {"digit": LABELS, "precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}
    )


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The 10x10 confusion matrix of counts: rows are true digits, columns predicted digits."""
    y = _check_labels(y_true)
    pred = _check_labels(y_pred)
    if len(y) != len(pred):
        raise ValueError(f"y_true holds {len(y)} labels but y_pred {len(pred)}")
    if len(y) == 0:  # scikit-learn refuses an empty matrix
        return np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    return confusion_matrix(y, pred, labels=LABELS).astype(np.int64)


def top_confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int = 10) -> pd.DataFrame:
    """The ``k`` most frequent (true, predicted) pairs with true != predicted: columns true, predicted, count.

    Most frequent first, ties in (true, predicted) order; fewer than ``k`` rows when there are fewer such pairs.
    """
    matrix = confusion_counts(y_true, y_pred)
    true, predicted = np.nonzero(
        matrix * (1 - np.eye(N_CLASSES, dtype=np.int64))
    )  # row-major: already (true, predicted) order
    counts = matrix[true, predicted]
    order = np.argsort(-counts, kind="stable")[: max(0, k)]  # stable keeps the (true, predicted) order among ties
    return pd.DataFrame(
        {
            "true": true[order].astype(np.int64),
            "predicted": predicted[order].astype(np.int64),
            "count": counts[order].astype(np.int64),
        }
    )

"""The reject option: how many answers a model can keep when the doubtful ones go to a person.

A reader that answers only when its top-1 confidence reaches a threshold keeps a share of the digits (the coverage)
and is right on a share of those (the selective accuracy). The accuracy-coverage curve is that pair over every
threshold; ``coverage_at_99_9`` is the largest share of test digits it can answer when the kept answers must be
99.9% right. Thresholds are the model's own confidences, so digits of equal confidence are kept or rejected together.
The served models take the same rule as the request param ``min_confidence`` (``digits.serve.answers``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from digits.evaluate.metrics import _check

# The confidence thresholds of the logged table: coarse at first, fine where a careful reader sets them.
TABLE_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)
TARGETS = {"coverage_at_99": 0.99, "coverage_at_99_5": 0.995, "coverage_at_99_9": 0.999}


def curve(y_true: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """The accuracy-coverage curve: one row per distinct confidence c, the answers with confidence >= c kept.

    Columns: threshold, kept, coverage (kept / N), accuracy (of the kept answers), errors. Most confident first.
    """
    y, p = _check(y_true, proba)
    confidence = p.max(axis=1).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    correct = np.cumsum(p.argmax(axis=1)[order] == y[order])
    # Keep a row only where the next digit is less confident: a threshold cannot split digits of equal confidence.
    last = np.flatnonzero(np.append(sorted_conf[1:] < sorted_conf[:-1], True))
    kept = last + 1
    return pd.DataFrame(
        {
            "threshold": sorted_conf[last],
            "kept": kept,
            "coverage": kept / len(y),
            "accuracy": correct[last] / kept,
            "errors": kept - correct[last],
        }
    )


def coverage_at(frame: pd.DataFrame, target: float) -> float:
    """The largest coverage whose kept answers are at least ``target`` right (0 when none is), from ``curve``."""
    ok = frame["accuracy"].to_numpy() >= target - 1e-12
    return float(frame["coverage"].to_numpy()[ok].max()) if ok.any() else 0.0


def coverage_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``coverage_at_99``, ``coverage_at_99_5`` and ``coverage_at_99_9`` (unprefixed; the caller adds ``test_``)."""
    frame = curve(y_true, proba)
    return {name: coverage_at(frame, target) for name, target in TARGETS.items()}


def threshold_table(y_true: np.ndarray, proba: np.ndarray, thresholds=TABLE_THRESHOLDS) -> pd.DataFrame:
    """The curve at fixed thresholds (``min_confidence`` values a client may send): threshold, kept, coverage, accuracy, errors."""
    y, p = _check(y_true, proba)
    confidence = p.max(axis=1)
    right = p.argmax(axis=1) == y
    rows = []
    for threshold in thresholds:
        keep = confidence >= threshold
        n = int(keep.sum())
        rows.append(
            {
                "threshold": threshold,
                "kept": n,
                "coverage": n / len(y),
                "accuracy": float(right[keep].mean()) if n else float("nan"),
                "errors": int(n - right[keep].sum()),
            }
        )
    return pd.DataFrame(rows)


def coverage_figure(y_true: np.ndarray, proba: np.ndarray) -> Figure:
    """Selective accuracy against coverage, with the 99.9% line and the coverage it allows marked."""
    frame = curve(y_true, proba)
    at = coverage_at(frame, TARGETS["coverage_at_99_9"])
    fig = Figure(figsize=(7, 5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(
        frame["coverage"], frame["accuracy"], color="tab:blue", linewidth=1.5, label="answers kept above a threshold"
    )
    ax.axhline(0.999, color="tab:red", linestyle="--", linewidth=1, label="99.9% right")
    if at > 0:
        ax.axvline(at, color="0.4", linestyle=":", linewidth=1, label=f"coverage at 99.9%: {at:.2%}")
    lowest = float(frame["accuracy"].min())
    ax.set_ylim(max(0.0, min(lowest, 0.99) - 0.002), 1.0005)
    ax.set_xlim(0, 1.005)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax.set_xlabel("coverage (share of test digits answered; the rest go to a person)")
    ax.set_ylabel("accuracy of the answers kept")
    ax.set_title("Reject option: accuracy-coverage curve (top-1 confidence threshold)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return fig

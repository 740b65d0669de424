"""Test accuracy under corruptions (``digits.evaluate.corruptions``), logged for every evaluated model beside the clean figures.

``robustness_table(predict, images, labels)`` measures one model; ``log_robustness`` logs it into the active
run as metrics ``robust_<corruption>_accuracy`` and ``robust_mean_accuracy``, the table
``evaluation/robustness.csv`` and the figure ``evaluation/robustness.png`` (this model beside a reference, the
baseline, when one is given). The corrupted test sets are made once per process and reused by every model
evaluated in it (the picture corruptions cost ~1-9 ms per image). The config field ``robust_size`` (flag, MLproject
parameter, logged with the run's config) says how many test digits are corrupted (a stratified seeded sample;
default 2,000, ``10000`` for all of them).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from digits.core.errors import DigitsError
from digits.evaluate import corruptions, plots
from digits.learn.data import stratified_order

__all__ = [
    "DEFAULT_SIZE",
    "FIGURE",
    "TABLE",
    "corrupted_sets",
    "log_robustness",
    "robustness_figure",
    "robust_metrics",
    "robustness_table",
    "sample_size",
]

log = logging.getLogger(__name__)

DEFAULT_SIZE = 2000  # the picture corruptions of 2,000 digits take ~40 s on 2 cores, once per process
SEED = 0  # fixed: every model of every run is measured on the same corrupted digits
TABLE = "robustness.csv"
FIGURE = "robustness.png"

_CACHE: dict[tuple[str, int], dict[str, np.ndarray]] = {}


def sample_size(n_test: int, size: int | None = None) -> int:
    """How many test digits to corrupt: ``size`` (the config field ``robust_size``; ``DEFAULT_SIZE`` when None), at most ``n_test``."""
    size = DEFAULT_SIZE if size is None else int(size)
    if size < 10:
        raise DigitsError(f"robust_size must be at least 10 test digits, got {size}")
    return min(size, n_test)


def corrupted_sets(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The sample's labels and, per corruption, its corrupted images: a stratified seeded sample of ``size`` digits."""
    index = np.sort(stratified_order(labels, SEED)[:size])
    key = (hashlib.sha256(images[index].tobytes()).hexdigest(), size)
    if key not in _CACHE:
        t0 = time.perf_counter()
        _CACHE[key] = {name: corruptions.corrupt(name, images[index], SEED) for name in corruptions.names()}
        log.info(
            "robustness: %d corruptions of %d digits made in %.1fs",
            len(_CACHE[key]),
            size,
            time.perf_counter() - t0,
        )
    return labels[index], _CACHE[key]


def robustness_table(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, size: int | None = None
) -> pd.DataFrame:
    """Accuracy per corruption of the model behind ``predict`` (uint8 (N, 28, 28) -> probabilities (N, 10))."""
    size = sample_size(len(labels), size)
    y, sets = corrupted_sets(images, labels, size)
    rows = []
    for name, x in sets.items():
        c = corruptions.CORRUPTIONS[name]
        correct = int((np.asarray(predict(x)).argmax(axis=1) == y).sum())
        rows.append(
            {
                "corruption": name,
                "family": c.family,
                "kind": c.kind,
                "severity": "mild" if c.mild else "harsh",
                "accuracy": correct / len(y),
                "errors": len(y) - correct,
                "n": len(y),
                "description": c.describe,
            }
        )
    return pd.DataFrame(rows)


def robust_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``robust_<corruption>_accuracy`` for each row and ``robust_mean_accuracy`` over all of them."""
    values = {f"robust_{row.corruption}_accuracy": float(row.accuracy) for row in table.itertuples()}
    values["robust_mean_accuracy"] = float(table["accuracy"].mean())
    return values


def log_robustness(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    label: str,
    reference: tuple[str, dict[str, float]] | None = None,
    size: int | None = None,
) -> dict[str, float]:
    """Measure, then log metrics, table and figure into the active run; return the metrics.

    ``label`` names this model in the figure; ``reference`` (a name and its ``robust_*`` metrics, e.g. the
    baseline's) is drawn beside it; ``size``: test digits corrupted (``robust_size``; None: ``DEFAULT_SIZE``).
    """
    import mlflow

    t0 = time.perf_counter()
    table = robustness_table(predict, images, labels, size)
    values = robust_metrics(table)
    mlflow.log_metrics({**values, "robust_digits": float(table["n"].iloc[0])})  # robust_size, capped at the test set
    series = {label: table["accuracy"].to_numpy()}
    if reference is not None:
        name, metrics = reference
        series = {name: np.array([metrics.get(f"robust_{c}_accuracy", np.nan) for c in table["corruption"]]), **series}
    with tempfile.TemporaryDirectory(prefix="digits-robust-") as tmp:
        table.to_csv(Path(tmp) / TABLE, index=False)
        figure = robustness_figure(list(table["corruption"]), series, n=int(table["n"].iloc[0]))
        (Path(tmp) / FIGURE).write_bytes(plots.figure_to_png(figure))
        mlflow.log_artifacts(tmp, "evaluation")
    worst = table.nsmallest(3, "accuracy")
    log.info(
        "robustness (%s, %d digits, %.1fs): mean %.2f%%; weakest %s",
        label,
        int(table["n"].iloc[0]),
        time.perf_counter() - t0,
        100 * values["robust_mean_accuracy"],
        ", ".join(f"{r.corruption} {100 * r.accuracy:.1f}%" for r in worst.itertuples()),
    )
    return values


def robustness_figure(names: list[str], series: dict[str, np.ndarray], n: int) -> matplotlib.figure.Figure:  # noqa: F821 (matplotlib: imported where drawn)
    """Horizontal bars: accuracy per corruption, one bar per model (``series``: name -> accuracies in ``names`` order)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(8, 0.32 * len(names) * max(1, len(series)) ** 0.5 + 1.5), dpi=plots.DPI, layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    rows = np.arange(len(names))
    for i, (model, accuracy) in enumerate(series.items()):
        ax.barh(
            rows + (i - (len(series) - 1) / 2) * height,
            100 * np.asarray(accuracy),
            height=height,
            label=model,
            color=("#7f7f7f", "#1f77b4", "#ff7f0e")[i % 3],
        )
    ax.set_yticks(rows, names)
    ax.invert_yaxis()  # the catalogue's order, top to bottom
    low = min(float(np.nanmin(100 * np.asarray(a))) for a in series.values())
    ax.set_xlim(max(0.0, min(90.0, low - 2)), 100)  # the differences that matter are near 100%
    ax.xaxis.set_major_formatter(PercentFormatter())
    ax.axvline(98, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"test accuracy on {n:,} corrupted test digits (dashed: 98%)")
    ax.set_title("Accuracy under corruptions")
    ax.legend(loc="lower left")
    return fig


WEAK = 0.98  # below this a corruption is named as a weakness in the model card


def card_section(baseline: dict[str, float], cnn: dict[str, float]) -> str:
    """The model card's robustness section: the table of corruptions, baseline vs CNN, and the CNN's weak spots."""
    if "robust_mean_accuracy" not in cnn:
        return "Not measured for this model."
    rows, weak = [], []
    for c in corruptions.CORRUPTIONS.values():
        key = f"robust_{c.name}_accuracy"
        base, mine = baseline.get(key), cnn.get(key)
        rows.append(
            f"| {c.name} | {c.describe} | {'-' if base is None else f'{base:.2%}'} | {'-' if mine is None else f'{mine:.2%}'} |"
        )
        if mine is not None and mine < WEAK:
            weak.append(f"{c.name} ({mine:.1%})")
    lines = [
        "Test digits corrupted MNIST-C style at fixed seeds (`digits.evaluate.corruptions`); pictures go through the served"
        " model's preprocessing, pixel arrays straight to the network.",
        "",
        "| corruption | what | baseline | CNN |",
        "|---|---|---|---|",
        *rows,
        f"| **mean** | all of the above | {baseline.get('robust_mean_accuracy', float('nan')):.2%} | {cnn['robust_mean_accuracy']:.2%} |",
        "",
        f"Still weak (under {WEAK:.0%}): {', '.join(weak)}." if weak else f"No corruption under {WEAK:.0%}.",
    ]
    return "\n".join(lines)

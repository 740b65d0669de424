"""Matplotlib figures of predictions and of the data: each function returns a ``matplotlib.figure.Figure``.

Figures are built with ``Figure(...)`` directly, never with pyplot: no global figure registry, no backend chosen
at import, so they render headless and from any thread. ``figure_to_png`` turns one into PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from digits.evaluate.metrics import LABELS, N_CLASSES, confusion_counts, per_class_roc_auc, reliability_bins

DPI = 110
# matplotlib's tab10, written out so that nothing is computed at import and the rcParams colour cycle cannot change it.
DIGIT_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
# The tab10 colours alone are hard to tell apart for some readers: alternate the line style too.
_LINESTYLES = ["-", "--", "-.", ":"]
RELIABILITY_MIN_COUNT = 30  # reliability bins with fewer images are drawn hollow


def figure_to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes at its own size and dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == 28 * 28:
        return images.reshape(-1, 28, 28)
    if images.ndim == 4 and images.shape[1] == 1:
        return images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, 28, 28), (N, 1, 28, 28) or (N, 784), got {images.shape}")
    return images


def message_figure(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    return fig


def text_color(rgba: Sequence[float]) -> str:
    # Relative luminance (sRGB weights): dark cells get white text, light cells black.
    r, g, b = rgba[:3]
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


def confusion_matrix_figure(y_true: np.ndarray, y_pred: np.ndarray, normalize: bool) -> Figure:
    """10x10 confusion matrix heatmap with the count (or, with ``normalize``, the fraction of the true row) in each cell.

    The colour scale is logarithmic so that the few errors stay visible next to the large diagonal; zero cells are white.
    """
    counts = confusion_counts(y_true, y_pred)
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    else:
        values = counts.astype(np.float64)

    fig = new_figure(7.5, 6.5)
    ax = fig.add_subplot()
    # Blues from 15% up: the smallest non-zero cell still gets a visible tint, while zero cells stay white.
    cmap = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.15, 1.0, 256))).with_extremes(bad="white")
    positive = values[values > 0]
    # At least a decade between vmin and vmax, so the colour bar always has a labelled tick.
    vmax = 1.0 if normalize else max(10.0, float(positive.max(initial=1)))
    vmin = min(float(positive.min(initial=1)), 0.1) if normalize else 1.0
    norm = LogNorm(vmin=vmin, vmax=vmax)
    image = ax.imshow(np.ma.masked_equal(values, 0), cmap=cmap, norm=norm)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label(("fraction of the true digit's images" if normalize else "count") + " (log scale; white = 0)")

    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            value = values[i, j]
            if value == 0:
                text, color = "0", "0.7"  # grey: present but unobtrusive
            else:
                if normalize:
                    # Three decimals: at MNIST accuracies most errors are below 0.01; never print a non-zero share as 0.
                    text = f"{value:.3f}" if value >= 0.0005 else "<.001"
                else:
                    text = f"{int(value)}"
                color = text_color(cmap(norm(value)))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)

    ax.set_xticks(LABELS)
    ax.set_yticks(LABELS)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.tick_params(length=0)
    n = int(counts.sum())
    accuracy = np.trace(counts) / n if n else float("nan")
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({kind}), {n:,} images, accuracy {accuracy:.2%}")
    return fig


def roc_figure(y_true: np.ndarray, proba: np.ndarray) -> Figure:
    """One-vs-rest ROC curve of each digit, its AUC in the legend; the false-positive rate is on a log scale.

    MNIST AUCs are all near 0.999: on a linear axis the ten curves overlap in the top-left corner, while the log
    axis spreads out the low false-positive rates where they differ.
    """
    from sklearn.metrics import roc_curve

    y_true, proba = np.asarray(y_true), np.asarray(proba)
    aucs = per_class_roc_auc(y_true, proba)
    fig = new_figure(9, 6)
    ax = fig.add_subplot()
    if not aucs:
        ax.set_axis_off()
        ax.text(
            0.5, 0.5, "ROC undefined: the labels hold a single digit", ha="center", va="center", transform=ax.transAxes
        )
        return fig
    # The smallest non-zero FPR any curve can reach: 1 / (number of negatives of the digit with the most negatives).
    floor = 1.0 / max(int(np.sum(y_true != d)) for d in aucs)
    left = 10 ** math.floor(math.log10(floor))
    starts = []  # each curve's TPR at the left edge
    for digit, auc in aucs.items():
        fpr, tpr, _ = roc_curve(y_true == digit, proba[:, digit])
        starts.append(float(tpr[fpr <= left].max()))
        # FPR 0 has no place on a log axis: draw those points at the left edge, so each curve starts where it should.
        ax.plot(
            np.maximum(fpr, left),
            tpr,
            color=DIGIT_COLORS[digit],
            linestyle=_LINESTYLES[digit % len(_LINESTYLES)],
            linewidth=1.6,
            label=f"{digit}  (AUC {auc:.4f})",
        )
    # Zoom the TPR axis to where the curves start at the left edge (to a multiple of 0.1): near-perfect
    # classifiers otherwise squeeze all ten curves into a thin band under 1.0. The title says so.
    bottom = max(0.0, math.floor(min(starts) * 10) / 10 - 0.1) if min(starts) >= 0.3 else 0.0
    chance = np.logspace(math.log10(left), 0, 100)
    ax.plot(chance, chance, color="0.6", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(left, 1)
    ax.set_ylim(bottom, 1.005)
    ax.set_xlabel(f"false positive rate (log scale; a rate of 0 is drawn at {left:g})")
    ax.set_ylabel("true positive rate")
    ax.grid(True, which="major", alpha=0.3)
    macro = float(np.mean(list(aucs.values())))
    zoom = f"; true positive rate from {bottom:.1f}" if bottom > 0 else ""
    ax.set_title(f"ROC one-vs-rest per digit, macro AUC {macro:.4f}\n(false positive rate on a log scale{zoom})")
    # Outside the axes: inside, it would hide part of the curves or the chance line.
    ax.legend(title="digit", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, title_fontsize=9, frameon=False)
    return fig


def training_curves_figure(history: list[dict], *, x_label: str = "epoch", note: str | None = None) -> Figure:
    """Loss and accuracy per epoch: train_* against val_*; series absent from ``history`` are left out.

    x is each entry's ``step`` when it has one, else 1..n. ``x_label`` names the x axis; ``note`` is a second
    title line, e.g. why a series is missing.
    """
    fig = new_figure(10, 4.5)
    if not history:
        return message_figure(fig, "no epochs in the training history")
    epochs = np.array([h.get("step", i) for i, h in enumerate(history, start=1)], dtype=np.float64)
    panels = [("loss", "loss", None), ("accuracy", "accuracy", PercentFormatter(1.0))]
    axes = fig.subplots(1, 2)
    for ax, (name, ylabel, formatter) in zip(axes, panels):
        drawn = 0
        for split, style in (("train", "-o"), ("val", "--s")):
            key = f"{split}_{name}"
            values = np.array([np.nan if h.get(key) is None else float(h[key]) for h in history])
            if np.all(np.isnan(values)):
                continue
            ax.plot(epochs, values, style, markersize=4 if len(epochs) <= 30 else 0, label=key)
            drawn += 1
        ax.set_title(name.capitalize())
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)  # a tick at every point: with a few epochs, fractional ticks would be misread
        else:
            # min_n_ticks=1: otherwise MaxNLocator falls back to fractional ticks when few integers are in view.
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        # Half a step of margin on each side, so the first and last markers are not cut by the axes.
        margin = 0.5 * (np.min(np.diff(epochs)) if len(epochs) > 1 else 1.0)
        ax.set_xlim(epochs[0] - margin, epochs[-1] + margin)
        ax.grid(True, alpha=0.3)
        if formatter is not None:
            ax.yaxis.set_major_formatter(formatter)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes)
    plural = "s" if len(epochs) != 1 else ""
    points = f"{len(epochs)} epoch{plural}" if x_label == "epoch" else f"evaluated {len(epochs)} time{plural}"
    fig.suptitle(f"Training curves ({points})" + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def misclassified_figure(images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, max_images: int = 36) -> Figure:
    """Grid of the misclassified images, most confident mistakes first, each titled "true 4 → pred 9 (0.87)"."""
    images, y_true, proba = as_images(images), np.asarray(y_true), np.asarray(proba)
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    if wrong.size == 0 or max_images < 1:
        return message_figure(new_figure(6, 2.5), f"no misclassified images among {len(y_true):,}")
    confidence = proba[wrong, y_pred[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")[:max_images]]
    cols = min(6, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = new_figure(max(6.0, 1.4 * cols + 0.2), 1.5 * rows + 0.8)  # at least 6 inches, so the two-line title fits
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, shown):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true {y_true[i]} → pred {y_pred[i]} ({proba[i, y_pred[i]]:.2f})", fontsize=8.5)
    mistakes = f"{len(wrong):,} mistake{'s' if len(wrong) != 1 else ''}"
    which = f"all {mistakes}" if len(shown) == len(wrong) else f"the {len(shown)} most confident of {mistakes}"
    fig.suptitle(
        f"Misclassified: {which} in {len(y_true):,} images\n"
        "(in parentheses: the probability given to the wrong prediction)",
        fontsize=11,
    )
    return fig


def reliability_figure(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, the diagonal, and the bin counts below; ECE in the title."""
    rel = reliability_bins(y_true, proba, bins)
    fig = new_figure(7, 7)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = rel.count > 0
    top.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    # Each bin's point sits at its mean confidence, so its distance from the diagonal is exactly the bin's gap.
    top.plot(
        rel.confidence[filled],
        rel.accuracy[filled],
        "o-",
        color="tab:blue",
        markersize=5,
        label="bins: accuracy vs mean confidence",
    )
    # A bin of a handful of images swings from 0 to 1 by chance: hollow markers say "do not read much into it".
    few = filled & (rel.count < RELIABILITY_MIN_COUNT)
    if few.any():
        top.plot(
            rel.confidence[few],
            rel.accuracy[few],
            "o",
            color="tab:blue",
            markerfacecolor="white",
            markersize=6,
            zorder=3,
            label=f"hollow: a bin of fewer than {RELIABILITY_MIN_COUNT} images (noisy)",
        )
    top.vlines(
        rel.confidence[filled],
        rel.confidence[filled],
        rel.accuracy[filled],
        color="tab:red",
        linewidth=1.5,
        label="gap (what the ECE averages)",
    )
    top.text(
        0.97,
        0.05,
        "above the diagonal: under-confident\nbelow: over-confident",
        transform=top.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        color="0.3",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=9)
    top.grid(True, alpha=0.3)
    top.set_title(f"Reliability diagram: ECE {rel.ece:.4f} ({bins} bins of top-1 confidence)")

    _bin_counts(bottom, rel)
    return fig


def _bin_counts(ax, rel) -> None:
    """The reliability diagram's lower panel: images per confidence bin."""
    ax.stairs(rel.count, rel.edges, fill=True, color="0.55")
    ax.set_yscale("log")  # most predictions fall in the last bin: a linear scale would hide the others
    ax.set_ylim(0.5, max(10, rel.count.max()) * 2)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("images per bin")
    ax.grid(True, alpha=0.3)

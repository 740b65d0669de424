"""The exploratory figures of the training images: class counts, pixel values, mean digits, 2-D embeddings."""

from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure

from digits.evaluate.metrics import LABELS, N_CLASSES
from digits.evaluate.plots import DIGIT_COLORS, as_images, new_figure


def class_distribution_figure(labels: np.ndarray) -> Figure:
    """One bar per digit with its count written above it."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=N_CLASSES)[:N_CLASSES]
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    bars = ax.bar(LABELS, counts, color=DIGIT_COLORS)
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], padding=2, fontsize=9)
    ax.set_xticks(LABELS)
    ax.set_xlabel("digit")
    ax.set_ylabel("images")
    ax.set_ylim(0, max(1, counts.max()) * 1.12)  # room for the labels above the bars
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"Class distribution ({counts.sum():,} images)")
    return fig


def pixel_histogram_figure(images: np.ndarray) -> Figure:
    """Histogram of pixel intensities 0-255 (one bin per value) on a log-scaled y axis."""
    pixels = np.clip(np.asarray(images).ravel(), 0, 255).astype(np.int64)
    counts = np.bincount(pixels, minlength=256)
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    ax.stairs(counts, np.arange(257) - 0.5, fill=True, color="tab:blue")
    ax.set_yscale("log")  # about 80% of MNIST pixels are 0: on a linear scale every other bar is invisible
    ax.set_xlim(-3, 258)  # a little margin, so the bars at 0 and 255 do not hide in the axis lines
    ax.set_xticks([0, 32, 64, 96, 128, 160, 192, 224, 255])
    ax.set_xlabel("pixel intensity (0 = background, 255 = ink)")
    ax.set_ylabel("pixels (log scale)")
    ax.grid(True, axis="y", alpha=0.3)
    zero = counts[0] / max(1, counts.sum())
    ax.set_title(f"Pixel intensities of {len(np.asarray(images)):,} images ({zero:.0%} of pixels are 0)")
    return fig


def mean_images_figure(images: np.ndarray, labels: np.ndarray) -> Figure:
    """The mean image of each digit in a 2x5 grid, titled with the digit and its number of images."""
    images, labels = as_images(images), np.asarray(labels)
    fig = new_figure(9, 4.4)
    axes = fig.subplots(2, 5).ravel()
    for digit, ax in zip(LABELS, axes):
        ax.set_xticks([])
        ax.set_yticks([])
        members = labels == digit
        n = int(members.sum())
        if n:
            ax.imshow(images[members].mean(axis=0), cmap="gray", vmin=0, vmax=255)
        else:
            ax.set_facecolor("0.9")
            ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{digit}  (n={n:,})", fontsize=10)
    fig.suptitle("Mean image of each digit")
    return fig


def embedding_figure(
    images: np.ndarray, labels: np.ndarray, method: str = "pca", sample: int = 2000, seed: int = 0
) -> Figure:
    """2-D PCA or t-SNE of a seeded random sample of ``sample`` images (0 = all), coloured by digit.

    Each digit is labelled at the median of its points, and the legend maps colours to digits.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    images, labels = as_images(images), np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(images) if sample <= 0 else min(sample, len(images))
    index = np.sort(rng.choice(len(images), size=n, replace=False))
    x = images[index].reshape(n, -1).astype(np.float32) / 255
    y = labels[index]
    points, axis_names, title = _embed(x, method, seed)

    fig = new_figure(8.5, 7)
    ax = fig.add_subplot()
    for digit in LABELS:
        members = y == digit
        if not members.any():
            continue
        ax.scatter(
            points[members, 0],
            points[members, 1],
            s=6,
            alpha=0.6,
            color=DIGIT_COLORS[digit],
            label=str(digit),
            linewidths=0,
        )
    for digit in LABELS:
        members = y == digit
        if not members.any():
            continue
        cx, cy = np.median(points[members], axis=0)
        text = ax.text(
            cx, cy, str(digit), fontsize=16, fontweight="bold", ha="center", va="center", color=DIGIT_COLORS[digit]
        )
        # A white outline keeps the label readable on top of its own (and other) points.
        text.set_path_effects([patheffects.withStroke(linewidth=3.5, foreground="white")])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{title}, seeded sample (seed {seed}); labels at each digit's median")
    ax.legend(title="digit", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, frameon=False)
    return fig


def _embed(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, tuple[str, str], str]:
    """The 2-D points of the rows of ``x``, the axes' names and the figure's title."""
    from sklearn.decomposition import PCA  # the embeddings cost a large import; only this figure needs it

    n = len(x)
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(x)
        explained = pca.explained_variance_ratio_
        axis_names = (f"PC 1 ({explained[0]:.0%} of variance)", f"PC 2 ({explained[1]:.0%} of variance)")
        title = f"PCA of {n:,} images"
    else:
        from sklearn.manifold import TSNE

        # t-SNE on 50 principal components (the usual practice): faster, and the noise dimensions do not help.
        reduced = PCA(n_components=min(50, n, x.shape[1]), random_state=seed).fit_transform(x)
        perplexity = min(30.0, max(2.0, (n - 1) / 3))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
        axis_names = ("t-SNE 1", "t-SNE 2")
        title = f"t-SNE of {n:,} images (perplexity {perplexity:g})"

    return points, axis_names, title

"""The numbers evaluation: handwritten numbers composed from MNIST *test* digits, read as the served model reads them
(its line reader when it carries one, else cutting with ``digits.serve.numbers``).

A number of 3 to 8 digits is laid out left to right from test digits cropped to their ink, each scaled by up to
15% and shifted off the baseline by up to 8% of its height, with a spacing kind: ``gap`` (blank of 15-50% of a
digit's width between digits) or ``touching`` (neighbours pushed together by up to 20% of a digit's width, so
that most of them touch or cross). The strip of MNIST ink is rendered as a user would send it,
``render.canvas`` (a thin-pen drawing) or ``render.photo`` (dark ink on grey paper, JPEG), and read through the
served model's own path. Seeded: the same ``seed`` and ``size`` give the same numbers.

``digits evaluate --number`` logs (run ``evaluate-numbers``): ``number_exact_match``, ``number_digit_accuracy``
(1 - edit distance / length, at least 0, averaged), ``number_length_accuracy``, each also per length
(``..._len5``) and per spacing kind (``..._gap``, ``..._touching``); the table ``numbers/readings.csv`` and the
figure ``numbers/worst_misreads.png``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from digits.core.errors import DigitsError
from digits.learn import render
from digits.learn.reader_train import edit_distance  # one copy for both readers
from digits.serve.numbers import read_number

log = logging.getLogger(__name__)

LENGTHS = tuple(range(3, 9))
SPACINGS = ("gap", "touching")
RENDERERS = ("canvas", "photo")
NUMBERS_DIR = "numbers"
_HEIGHT = 40  # the strip's height in MNIST pixels (a digit's ink is about 20)
_MARGIN = 6
RENDER_SCALE = 5  # a 20-pixel MNIST digit becomes about 100 pixels high, a number 300-900 pixels wide


@dataclass(frozen=True)
class NumberSample:
    """One composed number: the picture a user would send, its text and how it was made."""

    picture: np.ndarray  # uint8 grey, dark ink on light
    text: str
    spacing: str
    renderer: str
    indices: tuple[int, ...] = ()  # the test digits it is made of


def _digit_ink(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A test digit cropped to its ink and scaled by 0.85-1.15."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    s = rng.uniform(0.85, 1.15)
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))


def compose(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, length: int, spacing: str
) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """A strip of MNIST ink (uint8, light on black) holding ``length`` random digits of ``images``, its text and the
    digits' indices."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    picks = rng.integers(0, len(images), length)
    inks = [_digit_ink(images[i], rng) for i in picks]
    xs, x = [], _MARGIN
    for i, ink in enumerate(inks):
        xs.append(x)
        if i + 1 < length:
            width = ink.shape[1]
            if spacing == "gap":
                x += width + max(2, round(rng.uniform(0.15, 0.5) * 14))
            else:
                x += width - round(rng.uniform(0.0, 0.2) * min(width, inks[i + 1].shape[1]))
    strip = np.zeros((_HEIGHT, xs[-1] + inks[-1].shape[1] + _MARGIN), np.uint8)
    for x, ink in zip(xs, inks):
        h, w = ink.shape
        top = int(np.clip(round((_HEIGHT - h) / 2 + rng.uniform(-0.08, 0.08) * h), 0, _HEIGHT - h))
        np.maximum(strip[top : top + h, x : x + w], ink, out=strip[top : top + h, x : x + w])
    return strip, "".join(str(int(labels[i])) for i in picks), tuple(int(i) for i in picks)


def number_set(
    images: np.ndarray,
    labels: np.ndarray,
    size: int,
    seed: int = 0,
    lengths: Sequence[int] = LENGTHS,
    spacings: Sequence[str] = SPACINGS,
    renderers: Sequence[str] = RENDERERS,
) -> list[NumberSample]:
    """``size`` numbers for every (length, spacing, renderer): seeded, from ``images`` (pass the test set)."""
    rng = np.random.default_rng(seed)
    out = []
    for length in lengths:
        for spacing in spacings:
            for renderer in renderers:
                for _ in range(size):
                    strip, text, picks = compose(images, labels, rng, length, spacing)
                    draw = render.canvas if renderer == "canvas" else render.photo
                    out.append(NumberSample(draw(strip, rng, scale=RENDER_SCALE), text, spacing, renderer, picks))
    return out


def cutting(proba: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], tuple[str, float]]:
    """A picture to (text, confidence) by cutting (``serve.numbers``) with the digit classifier ``proba``."""

    def read(picture: np.ndarray) -> tuple[str, float]:
        reading = read_number(picture, proba)
        return reading.text, reading.confidence

    return read


def read_all(
    samples: Sequence[NumberSample], read: Callable[[np.ndarray], tuple[str, float]]
) -> list[tuple[str, float]]:
    """(text, confidence) read for each sample by ``read`` (the served model's number mode, or ``cutting``); a
    picture the reader refuses reads as '' with confidence 0."""
    out = []
    for sample in samples:
        try:
            out.append(read(sample.picture))
        except DigitsError:
            out.append(("", 0.0))
    return out


def number_metrics(samples: Sequence[NumberSample], readings: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Exact match, digit accuracy and length accuracy, overall, per length and per spacing kind."""
    truth = [s.text for s in samples]
    read = [r[0] for r in readings]
    exact = np.array([t == r for t, r in zip(truth, read)], dtype=float)
    digit = np.array([max(0.0, 1 - edit_distance(t, r) / len(t)) for t, r in zip(truth, read)])
    same_length = np.array([len(t) == len(r) for t, r in zip(truth, read)], dtype=float)
    groups: dict[str, np.ndarray] = {"": np.ones(len(truth), bool)}
    for length in sorted({len(t) for t in truth}):
        groups[f"_len{length}"] = np.array([len(t) == length for t in truth])
    for kind in sorted({s.spacing for s in samples}):
        groups[f"_{kind}"] = np.array([s.spacing == kind for s in samples])
    for renderer in sorted({s.renderer for s in samples}):
        groups[f"_{renderer}"] = np.array([s.renderer == renderer for s in samples])
    out = {}
    for suffix, where in groups.items():
        if where.any():
            out[f"number_exact_match{suffix}"] = float(exact[where].mean())
            out[f"number_digit_accuracy{suffix}"] = float(digit[where].mean())
            out[f"number_length_accuracy{suffix}"] = float(same_length[where].mean())
    return out


def worst_misreads_figure(samples: Sequence[NumberSample], readings: Sequence[tuple[str, float]], n: int = 12):
    """The most confident wrong readings: each picture with its true and read text."""
    import matplotlib.pyplot as plt

    wrong = sorted(
        (i for i, (s, r) in enumerate(zip(samples, readings)) if s.text != r[0]), key=lambda i: -readings[i][1]
    )[:n]
    fig, axes = plt.subplots(max(1, len(wrong)), 1, figsize=(8, 1.2 * max(1, len(wrong))), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(samples[i].picture, cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"true {samples[i].text}, read {readings[i][0] or '(nothing)'} ({readings[i][1]:.2f}; {samples[i].spacing}, {samples[i].renderer})",
            fontsize=8,
        )
    if not wrong:
        axes[0, 0].set_title("no misreads")
    fig.tight_layout()
    return fig


def log_number_evaluation(samples: Sequence[NumberSample], readings: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Log the metrics, ``numbers/readings.csv`` and ``numbers/worst_misreads.png`` into the active MLflow run."""
    import matplotlib.pyplot as plt
    import mlflow
    import pandas as pd

    values = number_metrics(samples, readings)
    mlflow.log_metrics(values)
    table = pd.DataFrame(
        {
            "text": [s.text for s in samples],
            "read": [r[0] for r in readings],
            "confidence": [r[1] for r in readings],
            "spacing": [s.spacing for s in samples],
            "renderer": [s.renderer for s in samples],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "readings.csv", index=False)
        fig = worst_misreads_figure(samples, readings)
        fig.savefig(Path(tmp) / "worst_misreads.png", dpi=100)
        plt.close(fig)
        mlflow.log_artifacts(tmp, NUMBERS_DIR)
    return values

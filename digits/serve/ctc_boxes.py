"""Each read digit's box on the strip, from the frames that emitted it (``ctc_decode`` spans) and the strip's ink.

Frame t covers the strip around x = (t + 0.5) * STRIDE (PaddleOCR maps CTC frames to word boxes the same way).
Neighbouring digits are split at the column of least ink between their emission spans (touching digits meet at a
thin neck), then each slice's box is tightened to its ink; a blob of ink that lies mostly in one slice and only
spills into the next (a 7's bar, a 9's tail) is given whole to the slice that holds most of it. Boxes are
(x0, y0, x1, y1) in strip pixels, right and bottom exclusive; the caller maps them back to the picture.
Needs numpy and scipy (connected components; the served bundle already needs scipy), no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["STRIDE", "digit_boxes", "split_columns"]

STRIDE = 4  # strip pixels per frame: reader.STRIDE (reader imports torch; this module must not)
INK = 0.2  # a pixel is ink above this share of the strip's brightest


def _centre_x(t: float, stride: int) -> float:
    return (t + 0.5) * stride


def split_columns(profile: np.ndarray, spans: Sequence[tuple[int, int]], stride: int = STRIDE) -> list[int]:
    """The columns where neighbouring digits are cut: between the end of one's emission and the start of the next,
    the middle of the columns of least ink (the middle of an empty gap, the neck of two touching digits)."""
    cuts = []
    width = len(profile)
    for (_, end), (start, _) in zip(spans[:-1], spans[1:]):
        lo = int(np.clip(round(_centre_x(end, stride)), 0, width - 1))
        hi = int(np.clip(round(_centre_x(start, stride)), lo, width - 1))
        window = profile[lo : hi + 1]
        least = np.flatnonzero(window <= window.min() + 1e-9)
        cuts.append(lo + int(least[len(least) // 2]))
    return cuts


def _owners(mask: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Which slice each pixel belongs to (-1: not ink): the slice of its column, except that a connected piece of ink
    with over two thirds of its pixels in one slice belongs to that slice whole (a 7's bar, a 9's tail)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    n_slices = len(bounds) - 1
    column_slice = np.clip(np.searchsorted(bounds[1:], np.arange(mask.shape[1]), side="right"), 0, n_slices - 1)
    slices = np.broadcast_to(column_slice, mask.shape)
    counts = np.bincount(labels[mask] * n_slices + slices[mask], minlength=(count + 1) * n_slices)
    counts = counts.reshape(count + 1, n_slices)
    owner = np.where(counts.max(axis=1) * 3 > 2 * counts.sum(axis=1), counts.argmax(axis=1), -1)
    owner[0] = -1  # the background
    owners = np.where(owner[labels] >= 0, owner[labels], slices)
    return np.where(mask, owners, -1)


def digit_boxes(
    ink: np.ndarray, spans: Sequence[tuple[int, int]], stride: int = STRIDE
) -> list[tuple[int, int, int, int]]:
    """The box of each digit of a reading on its strip: ``ink`` (H, W) the strip (bright ink), ``spans`` each digit's
    emitting frames (first, last). A digit whose slice holds no ink gets its emission span's columns over the
    line's rows."""
    ink = np.asarray(ink, dtype=np.float32)
    if not len(spans):
        return []
    mask = ink > INK * max(float(ink.max()), 1e-6)
    bounds = [0, *split_columns(ink.sum(axis=0), spans, stride), ink.shape[1]]
    owners = _owners(mask, bounds)
    rows = np.flatnonzero(mask.any(axis=1))
    top, bottom = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, ink.shape[0])
    boxes = []
    for i, (first, last) in enumerate(spans):
        mine = owners == i
        ys, xs = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if xs.size:
            boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
        else:  # no ink of its own: the columns it was emitted on, over the line's rows
            x0 = int(np.clip(first * stride, 0, ink.shape[1] - 1))
            boxes.append((x0, top, max(x0 + 1, min(ink.shape[1], (last + 1) * stride)), bottom))
    return boxes

"""Each read digit's box on the strip, from the frames that emitted it (``ctc_decode`` spans) and the strip's ink.

Frame t covers the strip around x = (t + 0.5) * STRIDE (PaddleOCR maps CTC frames to word boxes the same way).
Neighbouring digits are split at the column of least ink between their emission spans (touching digits meet at a
thin neck), then each slice's box is tightened to its ink; a connected piece of ink goes whole to the one digit
emitted over its columns (or, meeting none or several, to the slice holding over two thirds of it: a 7's bar). Boxes are
(x0, y0, x1, y1) in strip pixels, right and bottom exclusive; the caller maps them back to the picture.
Needs numpy and scipy (connected components; the served bundle already needs scipy), no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["STRIDE", "digit_boxes", "seams", "split_columns"]

STRIDE = 4  # strip pixels per frame: reader.STRIDE (reader imports torch; this module must not)
INK = 0.2  # a pixel is ink above this share of the strip's brightest


def _centre_x(t: float, stride: int, offset: float = 0.0) -> float:
    return (t + 0.5) * stride + offset


def split_columns(
    profile: np.ndarray, spans: Sequence[tuple[int, int]], stride: int = STRIDE, offset: float = 0.0
) -> list[int]:
    """The columns where neighbouring digits are cut: between the end of one's emission and the start of the next
    (each frame's centre moved by ``offset`` pixels: where the reader emits, relative to the digit), the middle of the
    columns of least ink (the middle of an empty gap, the neck of two touching digits)."""
    cuts = []
    width = len(profile)
    for (_, end), (start, _) in zip(spans[:-1], spans[1:]):
        lo = int(np.clip(round(_centre_x(end, stride, offset)), 0, width - 1))
        hi = int(np.clip(round(_centre_x(start, stride, offset)), lo, width - 1))
        window = profile[lo : hi + 1]
        least = np.flatnonzero(window <= window.min() + 1e-9)
        cuts.append(lo + int(least[len(least) // 2]))
    return cuts


def seams(ink: np.ndarray, spans: Sequence[tuple[int, int]], stride: int = STRIDE, offset: float = 0.0) -> np.ndarray:
    """Per row, the column where each pair of neighbours is cut: (L - 1, H), a path from top to bottom through the
    least ink between the end of one's emission and the start of the next, moving at most a column per row (a
    slanted or curved cut separates digits that overlap in x but barely touch), straight and near the
    ``split_columns`` cut where that costs nothing."""
    height, width = ink.shape
    cuts = split_columns(ink.sum(axis=0), spans, stride, offset)
    los = [int(np.clip(round(_centre_x(end, stride, offset)), 0, width - 1)) for _, end in spans[:-1]]
    his = [
        int(np.clip(round(_centre_x(start, stride, offset)), lo, width - 1)) for (start, _), lo in zip(spans[1:], los)
    ]
    if not cuts:
        return np.zeros((0, height), np.int64)
    span = max(hi - lo for lo, hi in zip(los, his)) + 1
    cols = np.array(los)[:, None] + np.arange(span)[None, :]  # (B, span) columns of each window
    inside = cols <= np.array(his)[:, None]
    weight = ink / max(float(ink.max()), 1e-6)
    # (B, H, span) ink in each window, the columns past a window's end closed; a tiny pull towards the column cut
    cost = np.where(inside[:, None, :], weight[:, np.minimum(cols, width - 1)].transpose(1, 0, 2), np.inf)
    cost += 1e-3 * np.abs(cols - np.array(cuts)[:, None])[:, None, :] / span
    step = cost + 0.01
    acc, back = cost[:, 0].copy(), np.zeros(cost.shape, np.int64)
    for r in range(1, height):
        moves = np.full((3, *acc.shape), np.inf)
        # a sideways step also pays for the pixel it steps past: no slipping through a diagonal stroke
        moves[0], moves[1, :, 1:], moves[2, :, :-1] = acc, acc[:, :-1] + step[:, r, :-1], acc[:, 1:] + step[:, r, 1:]
        back[:, r] = moves.argmin(axis=0)
        acc = np.take_along_axis(moves, back[:, r][None], axis=0)[0] + cost[:, r]
    x = acc.argmin(axis=1)
    out = np.empty((len(cuts), height), np.int64)
    for r in range(height - 1, -1, -1):
        out[:, r] = x
        x = x - (back[np.arange(len(cuts)), r, x] == 1) + (back[np.arange(len(cuts)), r, x] == 2)
    return out + np.array(los)[:, None]


def _owners(mask: np.ndarray, cut_rows: np.ndarray, emitted: list[tuple[int, int]]) -> np.ndarray:
    """Which digit each pixel belongs to (-1: not ink). A connected piece of ink whose columns meet exactly one
    digit's emission columns (``emitted``, pixel ranges) is that digit's whole: a reader may emit a digit off its
    centre (one trained here emitted about 0.3 of a width left of it), so a cut can fall inside a digit that stands
    apart. A piece meeting none (a tail, a speck) goes to the slice holding most of it. A piece meeting several
    (touching digits) is split by the cuts ``cut_rows`` (``seams``), unless over two thirds of it lies in one (a 7's bar)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    n_slices = len(cut_rows) + 1
    slices = (np.arange(mask.shape[1])[None, None, :] >= cut_rows[:, :, None]).sum(axis=0)  # (H, W) slice index
    counts = np.bincount(labels[mask] * n_slices + slices[mask], minlength=(count + 1) * n_slices)
    counts = counts.reshape(count + 1, n_slices)
    owner = np.full(count + 1, -1)
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        x0, x1 = found[1].start, found[1].stop
        hit = [i for i, (e0, e1) in enumerate(emitted) if e0 < x1 and e1 > x0]
        if len(hit) == 1:
            owner[k] = hit[0]
        elif not hit or counts[k].max() * 3 > 2 * counts[k].sum():
            owner[k] = counts[k].argmax()
    owners = np.where(owner[labels] >= 0, owner[labels], slices)
    return np.where(mask, owners, -1)


def digit_boxes(
    ink: np.ndarray, spans: Sequence[tuple[int, int]], stride: int = STRIDE, offset: float = 0.0
) -> list[tuple[int, int, int, int]]:
    """The box of each digit of a reading on its strip: ``ink`` (H, W) the strip (bright ink), ``spans`` each digit's
    emitting frames (first, last), ``offset`` the pixels from where a reader emits to its digit's centre (fitted on
    validation strips: a trained reader emitted about one frame left of centre). A digit whose slice holds no ink
    gets its emission span's columns over the line's rows."""
    ink = np.asarray(ink, dtype=np.float32)
    if not len(spans):
        return []
    mask = ink > INK * max(float(ink.max()), 1e-6)
    emitted = [(first * stride + offset, (last + 1) * stride + offset) for first, last in spans]
    owners = _owners(mask, seams(ink, spans, stride, offset), emitted)
    rows = np.flatnonzero(mask.any(axis=1))
    top, bottom = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, ink.shape[0])
    boxes = []
    for i, (first, last) in enumerate(spans):
        mine = owners == i
        ys, xs = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if xs.size:
            boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
        else:  # no ink of its own: the columns it was emitted on, over the line's rows
            x0 = int(np.clip(round(first * stride + offset), 0, ink.shape[1] - 1))
            boxes.append((x0, top, max(x0 + 1, min(ink.shape[1], round((last + 1) * stride + offset))), bottom))
    return boxes

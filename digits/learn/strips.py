"""Synthetic number strips for the line reader, made on the fly from MNIST digits of one split.

``make_strips(images, labels, n, rng)`` draws ``n`` uniformly random digit strings (lengths 1 to ``max_length``,
neighbours repeated more often than chance, since CTC must emit a blank between two equal digits), takes a fresh
glyph of the right digit for every position (copied, never written in place), warps all glyphs of the batch at once
(per-digit scale, slant, small rotation, stroke width), lays each string out with the spacing drawn per gap (from
clear gaps to overlaps of ``overlap`` of the narrower digit's width) and a jittered baseline, and renders it as
MNIST ink, a thin-pen canvas drawing or a photo (``digits.learn.render``), brought to the reader's strip by the served
path (``preprocess.ink_map`` then ``reader.to_strip``). Every strip records each digit's true horizontal span in
strip pixels. Seeded: the same arguments and generator state give the same strips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from digits.learn import render
from digits.serve.preprocess import InputError, ink_map
from digits.serve.reader import PAD, to_strip

__all__ = ["RENDERERS", "Strips", "make_strips"]

RENDERERS = ("ink", "canvas", "photo")
REPEAT = 0.25  # chance that a digit repeats its left neighbour (uniform strings: 0.1)
_FRAME = 40  # glyphs are warped in a 40x40 frame: a 28x28 digit scaled up and slanted stays inside
_LINE = 48  # layout height in MNIST pixels: room for a 1.2x digit and the baseline's jitter
_MARGIN = 4
_RENDER_SCALE = (3, 4)  # canvas and photo scale, drawn per strip (the numbers evaluation uses 5: costlier to make)


@dataclass(frozen=True)
class Strips:
    """A batch of strips: ``images[i]`` uint8 (HEIGHT, W_i) light ink on dark, its ``texts[i]``, ``spans[i]`` (L, 2)
    float x0, x1 of every digit's ink in strip pixels, ``gaps[i]`` (L-1,) each gap in digit widths (negative: overlap),
    ``renderers[i]`` one of ``RENDERERS``."""

    images: list[np.ndarray]
    texts: list[str]
    spans: list[np.ndarray]
    gaps: list[np.ndarray]
    renderers: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Strips:
        """The strips at ``indices``, in that order."""
        parts = (self.images, self.texts, self.spans, self.gaps, self.renderers)
        return Strips(*([part[int(i)] for i in indices] for part in parts))


def draw_strings(n: int, rng: np.random.Generator, lengths: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """``n`` digit strings, each of a length drawn from ``lengths``: uniform digits, a neighbour repeated with ``REPEAT``."""
    sizes = rng.choice(np.asarray(lengths), n)
    total = int(sizes.sum())
    digits = rng.integers(0, 10, total)
    first = np.zeros(total, bool)
    first[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = True
    repeat = (rng.random(total) < REPEAT) & ~first
    source = np.maximum.accumulate(np.where(repeat, 0, np.arange(total)))  # a run of repeats copies its first digit
    return np.split(digits[source], np.cumsum(sizes)[:-1])


def pick_glyphs(labels: np.ndarray, digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random index of ``labels`` per entry of ``digits`` with that label (a fresh glyph for every position)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=10)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if (counts[np.unique(digits)] == 0).any():
        raise ValueError("the source digits lack a digit that a string needs")
    return order[starts[digits] + (rng.random(len(digits)) * counts[digits]).astype(int)]


def warp_glyphs(glyphs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """All glyphs at once in a ``_FRAME`` frame: scale 0.8-1.2 (width 0.85-1.15 of that), slant, +-8 degrees, then a
    stroke width change (thinner, as it is, or 1-2 pixels bolder). Returns float32 in [0, 1]; the input is untouched."""
    n = len(glyphs)
    pad = (_FRAME - glyphs.shape[1]) // 2
    x = torch.from_numpy(np.pad(glyphs, ((0, 0), (pad, pad), (pad, pad))).astype(np.float32) / 255).unsqueeze(1)
    scale = rng.uniform(0.8, 1.2, n)
    sx = scale * rng.uniform(0.85, 1.15, n)
    angle = np.deg2rad(rng.uniform(-8, 8, n))
    slant = rng.uniform(-0.3, 0.3, n)
    cos, sin = np.cos(angle), np.sin(angle)
    # affine_grid maps output to input coordinates: the inverse of scaling by (sx, scale) after a rotation and a shear
    a, b = cos / sx, (sin + slant * cos) / sx
    c, d = -sin / scale, (cos - slant * sin) / scale
    # affine_grid's grid, computed here: torch's generator and max_pool2d are slow on many 1-channel frames on a CPU
    ticks = (np.arange(_FRAME, dtype=np.float32) * 2 + 1) / _FRAME - 1
    bx, by = ticks[None, None, :], ticks[None, :, None]
    coef = [v.astype(np.float32)[:, None, None] for v in (a, b, c, d)]
    grid = np.stack([coef[0] * bx + coef[1] * by, coef[2] * bx + coef[3] * by], -1)
    x = F.grid_sample(x, torch.from_numpy(grid), mode="bilinear", padding_mode="zeros", align_corners=False)
    return _stroke(x[:, 0].numpy(), rng.choice([-1, 0, 0, 1, 2], n))


def _grow(x: np.ndarray, sign: int) -> np.ndarray:
    """A 3x3 grey-level dilation (``sign`` 1) or erosion (-1) of every frame of ``x`` (N, H, W)."""
    p = np.pad(sign * x, ((0, 0), (1, 1), (1, 1)), constant_values=0 if sign > 0 else -1)
    h, w = x.shape[1:]
    out = p[:, 1 : h + 1, 1 : w + 1].copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, p[:, dy : dy + h, dx : dx + w], out=out)
    return sign * out


def _stroke(x: np.ndarray, stroke: np.ndarray) -> np.ndarray:
    """Each frame's stroke: -1 thinner (half an erosion: MNIST's thin strokes survive it), 0 as is, 1-2 pixels bolder."""
    x = np.clip(x, 0, 1)
    for k in (1, 2):
        chosen = stroke >= k
        if chosen.any():
            x[chosen] = _grow(x[chosen], 1)
    thin = stroke == -1
    if thin.any():
        x[thin] = 0.5 * x[thin] + 0.5 * _grow(x[thin], -1)
    return x


def _crop(glyph: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(glyph.max(axis=1) > 0.1), np.flatnonzero(glyph.max(axis=0) > 0.1)
    return glyph[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def layout(
    glyphs: Sequence[np.ndarray], rng: np.random.Generator, overlap: float, gap_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Glyphs left to right on one line: (ink float32 (``_LINE``, W), spans (L, 2), gaps (L-1,) in digit widths).

    Each gap is drawn on its own: half the time a clear gap of 0.05-0.6 of the mean glyph width, else from touching
    to ``overlap`` of the narrower neighbour's width; ``gap_range`` fixes the range (in the narrower's width) instead.
    """
    crops = [_crop(g) for g in glyphs]
    widths = np.array([c.shape[1] for c in crops], float)
    pairs = np.minimum(widths[:-1], widths[1:])
    if gap_range is None:
        clear = rng.random(len(pairs)) < 0.5
        gaps = np.where(
            clear, rng.uniform(0.05, 0.6, len(pairs)) * widths.mean() / pairs, -rng.uniform(0, overlap, len(pairs))
        )
    else:
        gaps = rng.uniform(*gap_range, len(pairs))
    starts = _MARGIN + np.concatenate([[0], np.cumsum(widths[:-1] + np.round(gaps * pairs))])
    starts = starts.astype(int) - min(0, int(starts.min()) - _MARGIN)
    line = np.zeros((_LINE, int((starts + widths).max()) + _MARGIN), np.float32)
    drift = rng.uniform(-0.08, 0.08) * _LINE  # the whole line's slope over its length, plus each digit's jitter
    for i, (x, crop) in enumerate(zip(starts, crops)):
        h, w = crop.shape
        centre = _LINE / 2 + drift * (i / max(1, len(crops) - 1) - 0.5) + rng.uniform(-0.06, 0.06) * h
        top = int(np.clip(round(centre - h / 2), 0, _LINE - h))
        np.maximum(line[top : top + h, x : x + w], crop, out=line[top : top + h, x : x + w])
    spans = np.stack([starts, starts + widths], 1).astype(np.float32)
    return line, spans, gaps.astype(np.float32)


def _render(line: np.ndarray, renderer: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The ink map the served path finds in a rendering of ``line``, and the layout pixels per map pixel."""
    ink = np.rint(255 * line).astype(np.uint8)
    if renderer == "ink":
        return line, 1.0
    scale = int(rng.integers(_RENDER_SCALE[0], _RENDER_SCALE[1] + 1))
    picture = render.canvas(ink, rng, scale=scale) if renderer == "canvas" else render.photo(ink, rng, scale=scale)
    try:
        found, ratio = ink_map(picture)
    except InputError:  # a faint line whose rendering the served path reads as blank: train on its ink instead
        return line, 1.0
    return found, ratio / scale


def make_strips(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    lengths: Sequence[int] = tuple(range(1, 13)),
    overlap: float = 0.35,
    render_share: float = 0.3,
    renderers: Sequence[str] | None = None,
    gap_range: tuple[float, float] | None = None,
) -> Strips:
    """``n`` strips from the digits ``images`` (uint8 (N, 28, 28), not written) labelled ``labels``.

    ``renderers``: the renderer of every strip drawn from these; default MNIST ink with 1 - ``render_share``,
    canvas and photo sharing the rest.
    """
    strings = draw_strings(n, rng, lengths)
    flat = np.concatenate(strings)
    glyphs = warp_glyphs(images[pick_glyphs(labels, flat, rng)], rng)  # fancy indexing copies
    if renderers is None:
        kinds = rng.choice(3, n, p=[1 - render_share, render_share / 2, render_share / 2])
    else:
        kinds = np.array([RENDERERS.index(r) for r in renderers])[rng.integers(0, len(renderers), n)]
    out = Strips([], [], [], [], [])
    offset = 0
    for string, kind in zip(strings, kinds):
        line, spans, gaps = layout(glyphs[offset : offset + len(string)], rng, overlap, gap_range)
        offset += len(string)
        found, per_pixel = _render(line, RENDERERS[kind], rng)
        strip, x0, factor = to_strip(found)
        out.images.append(strip)
        out.texts.append("".join(map(str, string)))
        # A rendering's faint edges fall under the ink floor of ``ink_map``: its spans are exact to a pixel or two.
        mapped = np.clip((spans / per_pixel - x0) * factor + PAD, 0, strip.shape[1])
        out.spans.append(mapped.astype(np.float32))
        out.gaps.append(gaps)
        out.renderers.append(RENDERERS[kind])
    return out

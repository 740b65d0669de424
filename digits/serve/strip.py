"""A picture of a number as the line reader sees it: a strip ``HEIGHT`` pixels high, and the map back to the picture.

The ink (``preprocess.ink_map``) is cropped to its box and scaled so the line is ``LINE`` pixels high, with ``PAD``
blank columns on each side; the reader emits one frame per ``STRIDE`` pixels of width. ``Placement`` remembers the
crop and the scale, so a box found on the strip is a box in the picture's own pixels. Numpy and Pillow only: the
ONNX-backed model uses this without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "HEIGHT",
    "LINE",
    "MAX_WIDTH",
    "PAD",
    "STRIDE",
    "Placement",
    "batch_array",
    "frames_for",
    "place",
    "strip_frames",
    "to_strip",
]

HEIGHT = 32  # strip height in pixels
LINE = 28  # the ink's box is scaled to this height (MNIST's 28-pixel frame), 2 pixels of margin above and below
PAD = 4  # blank columns on each side of the ink
STRIDE = 4  # width pixels per output frame: about 7 frames per digit, enough for a blank between repeats
MAX_WIDTH = 1024  # a wider strip is squeezed to this width (12 wide digits with wide gaps fit)
_TOP = (HEIGHT - LINE) // 2
_INK = 0.05  # a map pixel above this is ink when the crop is found


@dataclass(frozen=True)
class Placement:
    """Where a strip came from: ``strip_x = (map_x - x0) * fx + PAD``, ``strip_y = (map_y - y0) * fy + top``, and
    ``scale`` picture pixels per map pixel (``ink_map`` reduces large pictures)."""

    x0: float = 0.0
    y0: float = 0.0
    fx: float = 1.0
    fy: float = 1.0
    scale: float = 1.0

    def to_picture(self, box: Sequence[float]) -> tuple[int, int, int, int]:
        """A box (x0, y0, x1, y1) on the strip, in the picture's pixels (rounded outwards, so the ink stays inside)."""
        x0, y0, x1, y1 = box
        px = [((x - PAD) / self.fx + self.x0) * self.scale for x in (x0, x1)]
        py = [((y - _TOP) / self.fy + self.y0) * self.scale for y in (y0, y1)]
        return int(np.floor(px[0])), int(np.floor(py[0])), int(np.ceil(px[1])), int(np.ceil(py[1]))


def place(ink: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, Placement]:
    """An ink map (float in [0, 1] or uint8, ink bright) to the reader's strip, uint8 (HEIGHT, W), and its placement."""
    ink = np.asarray(ink, dtype=np.float32)
    if ink.size and ink.max() > 1:
        ink = ink / 255
    rows = np.flatnonzero(ink.max(axis=1) > _INK) if ink.size else np.zeros(0, np.int64)
    cols = np.flatnonzero(ink.max(axis=0) > _INK) if ink.size else np.zeros(0, np.int64)
    if rows.size == 0:
        return np.zeros((HEIGHT, 2 * PAD + STRIDE), np.uint8), Placement(scale=scale)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    factor = LINE / crop.shape[0]
    width = max(STRIDE, min(MAX_WIDTH - 2 * PAD, round(crop.shape[1] * factor)))
    resized = np.asarray(Image.fromarray(crop, mode="F").resize((width, LINE), Image.Resampling.BILINEAR))
    resized = np.clip(resized / max(float(resized.max()), 1e-6), 0, 1)  # a thin pen reduced stays full ink
    strip = np.zeros((HEIGHT, width + 2 * PAD), np.uint8)
    strip[_TOP : _TOP + LINE, PAD : PAD + width] = np.rint(255 * resized)
    return strip, Placement(float(cols[0]), float(rows[0]), width / crop.shape[1], factor, scale)


def to_strip(ink: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``place`` as (strip, x offset, x factor): ``strip_x = (map_x - offset) * factor + PAD``."""
    strip, where = place(ink)
    return strip, where.x0, where.fx


def frames_for(width: int | np.ndarray) -> int | np.ndarray:
    """Output frames of a strip ``width`` pixels wide (two halvings of the width)."""
    return (width // 2) // 2


def batch_array(strips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Strips of one height padded with background to the widest: float32 (N, 1, HEIGHT, W) in [0, 1], and the widths."""
    widths = np.array([s.shape[1] for s in strips])
    # Rounded up to a multiple of 32: a handful of shapes, whose kernels the CPU backend plans once, not every batch.
    batch = np.zeros((len(strips), 1, HEIGHT, -(-int(widths.max()) // 32) * 32), np.float32)
    for i, s in enumerate(strips):
        batch[i, 0, :, : s.shape[1]] = s
    batch /= 255
    return batch, widths


def strip_frames(
    frames: Callable[[np.ndarray], np.ndarray], strips: Sequence[np.ndarray], batch: int = 64
) -> list[np.ndarray]:
    """Each strip's per-frame log-probabilities (T_i, 11), its padding frames dropped, from a frame function
    (``batch_array``'s batches -> (N, W / 4, 11): the torch network or its ONNX graph), in batches of similar widths."""
    order = np.argsort([s.shape[1] for s in strips], kind="stable")
    out: list[np.ndarray] = [np.zeros((0, 11), np.float32)] * len(strips)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        x, widths = batch_array([strips[i] for i in idx])
        for row, i, width in zip(np.asarray(frames(x)), idx, widths):
            out[i] = row[: int(frames_for(width))]
    return out

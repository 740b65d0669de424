"""Synthetic real-world pictures of MNIST ink: a thin-pen canvas drawing and a photo of ink on uneven grey paper.

Both take an ink map in MNIST's convention (light ink on black, uint8 0-255, any height and width: one 28x28
digit or a strip of several) and return what a user would send: a grey uint8 picture, dark ink on a light
background, ``scale`` times larger. They are what the robustness evaluation (``digits.evaluate.robustness``), the line reader's strips (``digits.learn.strips``) and the
numbers evaluation feed through ``preprocess.to_mnist``, the served model's own path, so they must stay
deterministic for a given generator. Needs numpy, Pillow and scipy.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["CANVAS_SCALE", "PHOTO_SCALE", "canvas", "photo", "thin", "upscale"]

CANVAS_SCALE = 10  # a 28x28 digit becomes the app's 280x280 canvas
PHOTO_SCALE = 8  # a phone crop of one digit: ~224 px
_PEN_RANGE = (
    2.0,
    4.0,
)  # pen radius in canvas pixels: a mouse pen is 4-8 px wide on a 280-px canvas, MNIST's stroke ~26


def upscale(ink: np.ndarray, scale: int) -> np.ndarray:
    """Float32 ink in [0, 1], ``scale`` times larger (bicubic, clipped)."""
    h, w = ink.shape
    big = Image.fromarray(ink.astype(np.float32) / 255, mode="F").resize(
        (w * scale, h * scale), Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(big, dtype=np.float32), 0, 1)


def canvas(ink: np.ndarray, rng: np.random.Generator, scale: int = CANVAS_SCALE) -> np.ndarray:
    """A drawing of ``ink`` with a thin round pen: the stroke's centre line, redrawn 4-8 px wide, black on white.

    The centre line is the stroke's skeleton (``thin``), so the drawing keeps the digit's shape and its
    connections and loses its width, the way a mouse or a finger draws it.
    """
    mask = upscale(ink, scale) > 0.5
    if not mask.any():
        return np.full(mask.shape, 255, np.uint8)
    ridge = thin(mask)
    radius = rng.uniform(*_PEN_RANGE)
    # The pen's disc: every pixel within ``radius`` of the centre line, anti-aliased over one pixel at the edge.
    to_line = ndimage.distance_transform_edt(~ridge) if ridge.any() else ndimage.distance_transform_edt(~mask)
    stroke = np.clip(radius + 0.5 - to_line, 0, 1)
    return np.rint(255 * (1 - stroke)).astype(np.uint8)


def thin(mask: np.ndarray) -> np.ndarray:
    """The one-pixel skeleton of a boolean mask, with the mask's connections kept (Zhang and Suen's thinning, 1984,
    as scikit-image implements it).

    The ridge of the distance transform used before broke a stroke wherever its width changed: a 5-digit strip drew
    8.8 pieces instead of its mask's 5.3 at 10x, and a broken drawing is not what a pen makes."""
    from skimage.morphology import skeletonize  # a large import, for the canvas renderings only

    return skeletonize(np.asarray(mask, dtype=bool))


def photo(ink: np.ndarray, rng: np.random.Generator, scale: int = PHOTO_SCALE, jpeg_quality: int = 85) -> np.ndarray:
    """A phone photo of ``ink`` written in dark ink on grey paper: a lighting gradient and a shadow, paper grain,
    a slightly out-of-focus lens, sensor noise, then JPEG compression.
    """
    strength = upscale(ink, scale)
    h, w = strength.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)).astype(np.float32)
    paper = rng.uniform(150, 200) + rng.uniform(30, 60) * ramp  # grey paper, lit from one side
    shadow_centre = rng.uniform(0, 1, 2) * (w, h)
    shadow = np.exp(-(((xx - shadow_centre[0]) ** 2 + (yy - shadow_centre[1]) ** 2) / (2 * (0.35 * max(h, w)) ** 2)))
    paper = paper - rng.uniform(10, 30) * shadow  # a soft shadow of the phone or the hand
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), 1.5)
    paper = paper + 6 * grain / max(float(grain.std()), 1e-6)
    ink_level = rng.uniform(30, 70)  # the ink is dark, never black: a pen, not a printer
    picture = paper * (1 - strength) + ink_level * strength
    picture = ndimage.gaussian_filter(picture, rng.uniform(0.5, 1.2))  # focus
    picture = picture + rng.normal(0, 3, (h, w))  # sensor noise
    grey = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=jpeg_quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))

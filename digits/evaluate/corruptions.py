"""MNIST-C-style corruptions of MNIST digits, at fixed seeds and severities: what people send instead of MNIST.

Two kinds. ``array`` corruptions change the 28x28 pixel values themselves (a tilted, shifted, noisy or faint
digit sent as pixel values goes to the network as it is, the endpoint's pixel path). ``image`` corruptions
make a picture (a PNG of the inverted digit, a JPEG at quality 20, a thin-pen canvas drawing, a photo on grey
paper) and bring it back through ``preprocess.to_mnist``, the served model's path for pictures.

``corrupt(name, images, seed)`` is deterministic: the same images, name and seed give the same bytes.
Needs numpy, Pillow, scipy and torch (the geometric ones are one batched ``grid_sample``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from digits.learn import render
from digits.serve.preprocess import to_mnist

__all__ = ["CORRUPTIONS", "Corruption", "corrupt", "names"]


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity: ``family`` groups the severities (``rotate``), ``mild`` marks the milder one."""

    name: str
    family: str
    kind: str  # "array" or "image"
    mild: bool
    describe: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _affine(
    images: np.ndarray, rng: np.random.Generator, matrix: Callable[[int, np.random.Generator], np.ndarray]
) -> np.ndarray:
    """Batched affine warp about the frame's centre; ``matrix(n, rng)`` gives (n, 2, 3) in ``affine_grid`` terms."""
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    theta = torch.from_numpy(matrix(len(images), rng).astype(np.float32))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return np.clip(np.rint(out[:, 0].numpy()), 0, 255).astype(np.uint8)


def _matrices(a, b, tx, c, d, ty) -> np.ndarray:
    """(n, 2, 3) affine matrices [[a, b, tx], [c, d, ty]] from six per-image arrays (or scalars) of one length."""
    n = max(np.size(v) for v in (a, b, tx, c, d, ty))
    rows = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (a, b, tx, c, d, ty)]
    return np.stack([np.stack(rows[:3], 1), np.stack(rows[3:], 1)], 1)


def _signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def rotate(degrees: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        def matrix(n: int, rng: np.random.Generator) -> np.ndarray:
            a = np.radians(degrees) * _signs(n, rng)
            return _matrices(np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0)

        return _affine(images, rng, matrix)

    return apply


def shear(amount: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        def matrix(n: int, rng: np.random.Generator) -> np.ndarray:
            return _matrices(np.ones(n), amount * _signs(n, rng), 0, 0, 1, 0)

        return _affine(images, rng, matrix)

    return apply


def scale(factor: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        def matrix(n: int, rng: np.random.Generator) -> np.ndarray:
            # affine_grid maps output to input coordinates: a digit 0.6x as large samples 1/0.6 as far.
            return _matrices(np.full(n, 1 / factor), 0, 0, 0, 1 / factor, 0)

        return _affine(images, rng, matrix)

    return apply


def shift(pixels: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        def matrix(n: int, rng: np.random.Generator) -> np.ndarray:
            angle = rng.uniform(0, 2 * np.pi, n)  # off-centre by ``pixels`` in a random direction
            return _matrices(1, 0, pixels * np.cos(angle) * 2 / 28, 0, 1, pixels * np.sin(angle) * 2 / 28)

        return _affine(images, rng, matrix)

    return apply


def stroke(radius: int, thicken: bool) -> Callable:
    """Grey-level dilation (thicker) or erosion (thinner) by a disc of ``radius`` pixels at twice the resolution."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = (xx**2 + yy**2) <= radius**2

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        big = images.astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)
        op = ndimage.grey_dilation if thicken else ndimage.grey_erosion
        out = op(big, footprint=disc[None])
        return np.rint(out.reshape(len(images), 28, 2, 28, 2).mean(axis=(2, 4))).astype(np.uint8)

    return apply


def gaussian_noise(sigma: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(np.rint(images + rng.normal(0, sigma, images.shape)), 0, 255).astype(np.uint8)

    return apply


def salt_pepper(fraction: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = images.copy()
        hit = rng.random(images.shape) < fraction
        out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
        return out

    return apply


def blur(sigma: float) -> Callable:
    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.rint(ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma))).astype(np.uint8)

    return apply


def contrast(factor: float) -> Callable:
    """A faint digit on a grey background: the ink's range shrunk to ``factor`` around mid-grey's lower part."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.rint(images * factor + 255 * (1 - factor) * 0.3).astype(np.uint8)

    return apply


def _through_preprocess(make_picture: Callable[[np.ndarray, np.random.Generator], np.ndarray | bytes]) -> Callable:
    """An image corruption: each digit made into a picture, then read back by the served model's ``to_mnist``."""

    def apply(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([to_mnist(make_picture(image, rng)) for image in images]) if len(images) else images.copy()

    return apply


def _inverted_png(image: np.ndarray, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - image).save(buffer, format="PNG")  # dark ink on white, as a scan or a drawing
    return buffer.getvalue()


def _jpeg(quality: int) -> Callable:
    def make(image: np.ndarray, rng: np.random.Generator) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    return make


def _catalogue() -> dict[str, Corruption]:
    pictures = _through_preprocess  # the image kinds go through the served preprocessing, as a client's picture does
    spec = [  # family, kind, name, description, function; a family's first row is its milder severity
        ("rotate", "array", "rotate_15", "rotated by 15 degrees, either way", rotate(15)),
        ("rotate", "array", "rotate_30", "rotated by 30 degrees", rotate(30)),
        ("shear", "array", "shear_20", "sheared by 0.2", shear(0.2)),
        ("shear", "array", "shear_40", "sheared by 0.4", shear(0.4)),
        ("scale", "array", "scale_60", "scaled to 0.6x", scale(0.6)),
        ("scale", "array", "scale_140", "scaled to 1.4x (cut at the frame)", scale(1.4)),
        ("shift", "array", "shift_3", "moved 3 px off-centre", shift(3)),
        ("shift", "array", "shift_6", "moved 6 px off-centre", shift(6)),
        ("thin", "array", "thin_1", "strokes eroded by 0.5 px", stroke(1, False)),
        ("thin", "array", "thin_2", "strokes eroded by 1 px", stroke(2, False)),
        ("thick", "array", "thick_1", "strokes dilated by 0.5 px", stroke(1, True)),
        ("thick", "array", "thick_2", "strokes dilated by 1 px", stroke(2, True)),
        ("noise", "array", "noise_25", "Gaussian noise, sigma 25 grey levels", gaussian_noise(25)),
        ("noise", "array", "noise_50", "Gaussian noise, sigma 50", gaussian_noise(50)),
        ("salt_pepper", "array", "salt_pepper_2", "2% of pixels black or white", salt_pepper(0.02)),
        ("salt_pepper", "array", "salt_pepper_5", "5% of pixels", salt_pepper(0.05)),
        ("blur", "array", "blur_07", "Gaussian blur, sigma 0.7 px", blur(0.7)),
        ("blur", "array", "blur_12", "Gaussian blur, sigma 1.2 px", blur(1.2)),
        ("contrast", "array", "contrast_40", "contrast cut to 40% on grey", contrast(0.4)),
        ("contrast", "array", "contrast_20", "contrast cut to 20% on grey", contrast(0.2)),
        ("invert", "image", "invert", "a PNG of dark ink on white", pictures(_inverted_png)),
        ("jpeg", "image", "jpeg_20", "a 28x28 JPEG at quality 20", pictures(_jpeg(20))),
        ("canvas", "image", "canvas", "a 280-px canvas drawing with a 4-8 px pen", pictures(render.canvas)),
        ("photo", "image", "photo", "a photo of ink on unevenly lit grey paper, JPEG", pictures(render.photo)),
    ]
    seen: set[str] = set()
    catalogue = {}
    for family, kind, name, describe, fn in spec:
        catalogue[name] = Corruption(name, family, kind, family not in seen, describe, fn)
        seen.add(family)
    return catalogue


CORRUPTIONS: dict[str, Corruption] = _catalogue()


def names() -> list[str]:
    """Every corruption's name, in the catalogue's order (mild before harsh)."""
    return list(CORRUPTIONS)


def corrupt(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """``images`` (uint8 (N, 28, 28), MNIST's convention) corrupted by ``name``: uint8 (N, 28, 28), deterministic per seed."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
    # One stream per corruption, so adding a corruption does not change the others' images.
    rng = np.random.default_rng([seed, sum((i + 1) * ord(c) for i, c in enumerate(name))])
    return CORRUPTIONS[name].apply(np.ascontiguousarray(images, dtype=np.uint8), rng)

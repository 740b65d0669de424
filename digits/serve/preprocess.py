"""Any picture of one digit, or MNIST-style pixel values, to an MNIST-like 28x28 uint8 image.

MNIST's own recipe (LeCun et al.): grey levels, the digit's bounding box scaled to fit 20x20 keeping its aspect
ratio (anti-aliased), pasted into 28x28 so that its centre of mass is the centre. Before that, for pictures
that do not come from MNIST: polarity detection (dark ink on paper or light ink on a dark canvas), uneven
lighting removed, and the stroke width brought into MNIST's range, since a network trained on MNIST has never
seen a hairline or a marker stroke.

``to_mnist`` is the one function the served model, ``digits predict`` and the drawing app all use for a
picture; ``to_mnist_batch`` is what the endpoint feeds a request's items through. Errors are ``InputError``
with a one-line message meant for the client. Decoding of untrusted bytes is in ``digits.serve.decode``, the
validation of pixel values in ``digits.serve.pixels``. Needs numpy, Pillow and scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from digits.serve.contract import MAX_BATCH_PIXELS, MAX_PIXELS, batch_too_large, too_many_pixels
from digits.serve.decode import WORK_SIDE, InputError, check_size, decode_image
from digits.serve.pixels import SIZE, check_array_items, check_mnist_arrays, numeric_array

__all__ = [
    "InputError",
    "MAX_PIXELS",
    "check_mnist_arrays",
    "decode_image",
    "ink_map",
    "ink_to_mnist",
    "max_pool",
    "stroke_width",
    "to_mnist",
    "to_mnist_batch",
]

BOX = 20  # MNIST's digits are scaled to fit this box inside the frame
# MAX_BATCH_PIXELS (digits.serve.contract): all the pictures of one request together, decoded (a picture is worked
# on at up to WORK_SIDE, so 1024x1024 is the costliest).

_MIN_CONTRAST = 24.0  # grey levels between paper and ink below which a picture counts as blank
_INK_FLOOR = 0.2  # of the ink's contrast: paper texture, JPEG noise and faint shadows below it are dropped
# MNIST's stroke width relative to the long side of the digit's box: median 0.13, 5-95% from 0.10 to 0.21
# (2 * area / boundary-pixels of the >50% mask, over the test set). Strokes far outside this range are grown or
# thinned toward the median.
_STROKE_REL = 0.13
# Only strokes well outside that range are changed (below 0.06: a mouse or finger pen; above 0.25: a marker).
# Measured on 4,000 test digits with the robust 10-epoch CNN: thickening photographed strokes of 0.06-0.10
# (JPEG and focus blur make them measure thin) cost 0.7 points on photos, and thinning MNIST's own bold digits
# above 0.20 cost 0.1 on the clean set.
_STROKE_REL_MIN = 0.06
_STROKE_REL_MAX = 0.25
_LIGHTING_SIDE = 64  # the lighting is fitted on a copy this large: lighting is smooth, the fit is cheap
_MORPH_SIDE = 80  # stroke width is normalised at this resolution (4x the 20-pixel box): cheap, still precise


def to_mnist(image: Image.Image | np.ndarray | bytes | str) -> np.ndarray:
    """Turn a picture of one digit into an MNIST-like (28, 28) uint8 image: light ink on black, 0-255.

    ``image``: a PIL image, an (H, W), (H, W, 3) or (H, W, 4) array of 0-255 values, PNG/JPEG bytes or their
    base64 text. Any size, either polarity, the digit anywhere in the frame, any stroke width.
    """
    return _mnist_frame(ink_map(image)[0])


def ink_map(image: Image.Image | np.ndarray | bytes | str) -> tuple[np.ndarray, float]:
    """The ink of a picture as ``to_mnist`` finds it, before the MNIST frame: (float32 map in [0, 1], ink bright,
    background 0; the picture's pixels per map pixel, >= 1 when the picture was reduced to ``WORK_SIDE``).

    Takes what ``to_mnist`` takes; ``digits.serve.numbers`` cuts a line of digits out of this map.
    """
    if isinstance(image, (str, bytes, bytearray)):
        image = decode_image(image)
    elif isinstance(image, np.ndarray):
        image = _image_from_array(image)
    elif not isinstance(image, Image.Image):
        raise InputError(
            f"expected an image (PIL image, array, PNG/JPEG bytes or base64 text), got {type(image).__name__}"
        )
    check_size(*image.size)
    ink = _ink(_grey(image))
    return ink, max(image.size) / max(ink.shape)


def ink_to_mnist(ink: np.ndarray) -> np.ndarray:
    """An ink map of one digit (``ink_map``'s, or a cut of it) to MNIST's 28x28 frame, the last step of ``to_mnist``."""
    return _mnist_frame(np.ascontiguousarray(ink, dtype=np.float32))


def to_mnist_batch(items: Sequence[Any], max_batch: int) -> np.ndarray:
    """Turn a request's items into uint8 (N, 28, 28): each one base64 PNG/JPEG text (or bytes), or 28x28/784 pixel values.

    Pixel values go through ``check_mnist_arrays`` (they must already be MNIST-like); pictures through
    ``to_mnist``. More than ``max_batch`` items (the served model passes ``model.MAX_BATCH``) are refused. The
    message of an ``InputError`` names the first bad item by its position.
    """
    n = len(items)
    if n == 0 or (n == 1 and _is_empty_sequence(items[0])):
        raise InputError("empty batch: send at least one image")
    if n > max_batch:
        raise InputError(batch_too_large(n, max_batch))
    out = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    pictures: list[int] = []
    arrays: list[int] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes, bytearray)):
            pictures.append(i)
        elif isinstance(item, (list, tuple, np.ndarray)):
            arrays.append(i)
        else:
            raise InputError(f"image {i}: expected base64 PNG/JPEG text or 28x28 pixel values, got {_kind(item)}")
    if arrays:
        out[arrays] = check_array_items(items, arrays)
    budget = MAX_BATCH_PIXELS
    for i in pictures:
        try:
            image = decode_image(items[i])
            budget -= image.size[0] * image.size[1]
            if budget < 0:
                raise InputError(too_many_pixels(MAX_BATCH_PIXELS))
            out[i] = to_mnist(image)
        except InputError as exc:
            raise InputError(f"image {i}: {exc}") from None
    return out


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    check_size(array.shape[1], array.shape[0])
    if array.dtype != np.uint8:
        array = numeric_array(array, "image array")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise InputError("an image array must hold finite values from 0 to 255")
        array = np.rint(array).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _grey(image: Image.Image) -> np.ndarray:
    """Float32 grey levels 0-255, at most WORK_SIDE on the long side, transparency resolved."""
    image = ImageOps.exif_transpose(image)  # a phone photo's pixels are stored sideways; EXIF says how to turn them
    if max(image.size) > WORK_SIDE:
        image = image.copy()
        image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if image.mode not in ("L", "RGB", "RGBA", "LA"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if not has_alpha:
        return grey
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255
    if alpha.min() >= 1:
        return grey
    # Transparent pixels carry arbitrary colour (a canvas stores them as black), so put them on a background:
    # mostly transparent means strokes on nothing, which go on the contrasting grey; mostly opaque means a
    # picture with transparent margins, which take the picture's own background grey.
    opaque = alpha > 0.5
    if opaque.mean() < 0.5:
        background = 255.0 if (not opaque.any() or np.median(grey[opaque]) < 128) else 0.0
    else:
        background = float(np.median(grey[opaque]))
    return grey * alpha + background * (1 - alpha)


# --- ink ---------------------------------------------------------------------------------------------------------


def _ink(grey: np.ndarray) -> np.ndarray:
    """Ink map in [0, 1]: ink bright, background exactly 0, whatever the polarity and lighting of the picture."""
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    background = float(np.median(border))  # the digit may touch the border, but rarely most of it
    low, high = np.percentile(grey, [0.2, 99.8])
    if background - low > high - background:  # the ink is darker than the background: dark ink on paper
        grey = 255 - grey
        background = 255 - background
    ink = grey - _background(grey, background)
    peak = float(np.percentile(ink, 99.9))
    if peak < _MIN_CONTRAST:
        peak = float(ink.max())
    if peak < _MIN_CONTRAST:
        raise InputError(
            f"no digit found: the image is blank or has too little contrast (under {_MIN_CONTRAST:.0f} grey levels)"
        )
    # Grey levels are kept, not saturated: MNIST's own anti-aliased edges carry information (saturating them
    # cost 4 points of accuracy on MNIST digits fed through here).
    ink = np.clip((ink / peak - _INK_FLOOR) / (1 - _INK_FLOOR), 0, 1)
    return _despeckle(ink)


def _despeckle(ink: np.ndarray) -> np.ndarray:
    """Drop ink pixels with fewer than two ink neighbours: noise specks would stretch the digit's bounding box,
    while even a one-pixel line keeps two neighbours along its length.

    Nine shifted adds of a uint8 mask: on a 1024x768 ink map 3.6 ms, where ``ndimage.uniform_filter`` took
    8.3 ms and ``ndimage.convolve`` 14 ms (measured), so this stays hand-written."""
    mask = np.pad(ink > 0, 1).astype(np.uint8)
    h, w = ink.shape
    count = sum(mask[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return np.where(count >= 3, ink, 0).astype(np.float32)


def _background(grey: np.ndarray, level: float) -> np.ndarray | float:
    """The background's grey level: ``level`` where it is even, a smooth surface where lighting varies (photos).

    The surface is a quadratic in x and y fitted to the paper alone by least squares on a 64-pixel copy: first to
    its darker half, then four times to the pixels no brighter than the fit by 2.5 robust standard deviations (or
    12 grey levels), the ink being the rest. A lighting gradient, a vignette or a soft shadow is smooth at this
    scale; the fit never takes a thick stroke or a filled loop for lighting, as the grey-level opening used before
    did wherever a stroke was wider than its window (photographed digits: 98.50% -> 99.48% read right, 4,000 test
    digits, robust 10-epoch CNN)."""
    h, w = grey.shape
    scale = _LIGHTING_SIDE / max(h, w)
    if scale >= 1 or min(h, w) * scale < 8:
        return level
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(grey, mode="F").resize((sw, sh), Image.Resampling.BOX), dtype=np.float64).ravel()
    v, u = np.mgrid[0:sh, 0:sw]
    terms = _quadratic(u.ravel() / sw - 0.5, v.ravel() / sh - 0.5)
    paper = small <= np.median(
        small
    )  # the ink is bright and rarely covers half the picture: start from the darker half
    for _ in range(4):
        coef = np.linalg.lstsq(terms[paper], small[paper], rcond=None)[0]
        residual = small - terms @ coef  # the ink is bright here, so it lies above the surface
        centre = float(np.median(residual[paper]))
        spread = 1.4826 * float(np.median(np.abs(residual[paper] - centre)))
        # At least half the faintest ink's contrast: flat synthetic paper has no spread at all.
        paper = residual < centre + max(2.5 * spread, _MIN_CONTRAST / 2)
    # The surface at full size: the same quadratic at each pixel's centre in the small copy's units, by
    # broadcasting a row against a column (no (h * w, 6) matrix for a big picture).
    x = ((np.arange(w) + 0.5) / w - 0.5 / sw - 0.5)[None, :]
    y = ((np.arange(h) + 0.5) / h - 0.5 / sh - 0.5)[:, None]
    lighting = (coef[0] + coef[1] * x + coef[2] * y + coef[3] * x * x + coef[4] * x * y + coef[5] * y * y).astype(
        np.float32
    )
    if float(lighting.max() - lighting.min()) < _MIN_CONTRAST:
        return level  # even lighting (a canvas, a scan): one level is exact, the surface would only add its error
    return lighting


def _quadratic(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The terms of a quadratic surface at (u, v): 1, u, v, u^2, uv, v^2 as columns."""
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)


# --- MNIST's frame -------------------------------------------------------------------------------------------


def _mnist_frame(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, normalise the stroke width, fit into 20x20 keeping the aspect ratio, centre the mass in 28x28."""
    ink = _crop(ink)
    if max(ink.shape) < 3:
        raise InputError(f"no digit found: the ink covers only {ink.shape[1]}x{ink.shape[0]} pixels")
    ink = _normalise_stroke(_pool_to(ink, _MORPH_SIDE))
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # LANCZOS anti-aliases a reduction the way MNIST's normalisation produced grey levels; it rings a little
    # below 0 and above the peak, hence the clip and the re-normalisation (MNIST digits peak at 254-255).
    box = np.asarray(Image.fromarray(ink, mode="F").resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    box = np.clip(box, 0, None)
    box /= max(float(box.max()), 1e-6)
    return _centre(box)


def _crop(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise InputError("no digit found: the image is blank")
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _pool_to(ink: np.ndarray, side: int) -> np.ndarray:
    """Max-pool by an integer factor so the long side is at most ``side``: a hairline survives, unlike averaging."""
    return max_pool(ink, math.ceil(max(ink.shape) / side))


def max_pool(ink: np.ndarray, factor: int) -> np.ndarray:
    """``ink`` max-pooled by a whole ``factor`` (zero-padded to a multiple of it); ``ink`` itself for 1 or less."""
    if factor <= 1:
        return ink
    h, w = ink.shape
    padded = np.zeros((math.ceil(h / factor) * factor, math.ceil(w / factor) * factor), dtype=np.float32)
    padded[:h, :w] = ink
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).max(axis=(1, 3))


def stroke_width(ink: np.ndarray) -> float:
    """Estimated stroke width in pixels: 2 * area / boundary pixels of the ink above half intensity."""
    mask = ink > 0.5
    area = int(mask.sum())
    if area == 0:
        return 0.0
    p = np.pad(mask, 1)
    interior = int((p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]).sum())
    return 2 * area / max(1, area - interior)


def _normalise_stroke(ink: np.ndarray) -> np.ndarray:
    side = max(ink.shape)
    width, target = stroke_width(ink), _STROKE_REL * side
    if width < _STROKE_REL_MIN * side:
        radius = max(1, round((target - width) / 2))
        ink = _rank(
            np.pad(ink, radius), radius, ndimage.maximum_filter
        )  # padded: room to grow at the edges of the crop
    elif width > _STROKE_REL_MAX * side:
        # Thin a marker stroke, but never by so much that the thinnest parts vanish.
        radius = min(round((width - target) / 2), math.floor(width / 4))
        if radius >= 1:
            ink = _rank(ink, radius, ndimage.minimum_filter)
    else:
        return ink
    return _crop(ink) if ink.any() else ink


def _rank(image: np.ndarray, radius: int, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Grey-level erosion (``ndimage.minimum_filter``) or dilation (``maximum_filter``) with a (2r+1)-square.

    scipy's separable filters give the same values as the two hand-written 1-D passes this replaced, 5-7x
    faster (64x48 at radius 7: 51 us against 343 us); Pillow's ``MinFilter`` is exact too but sorts each
    window (5 ms). Edges repeat the border pixel (``mode="nearest"``).
    """
    return np.ascontiguousarray(op(image, size=2 * radius + 1, mode="nearest"), dtype=np.float32)


def _centre(box: np.ndarray) -> np.ndarray:
    """Paste ``box`` (at most 20x20) into 28x28 so its centre of mass falls on the frame's centre, uint8 0-255."""
    h, w = box.shape
    cy, cx = ndimage.center_of_mass(box)
    centre = (SIZE - 1) / 2  # 13.5: between the two middle pixels, in pixel-index coordinates
    # Shift by whole pixels (MNIST did too) and keep the whole box inside the frame.
    top = min(max(round(centre - cy), 0), SIZE - h)
    left = min(max(round(centre - cx), 0), SIZE - w)
    frame = np.zeros((SIZE, SIZE), dtype=np.float32)
    frame[top : top + h, left : left + w] = box
    return np.rint(frame * 255).astype(np.uint8)


def _is_empty_sequence(item: Any) -> bool:
    return isinstance(item, (list, tuple, np.ndarray)) and len(item) == 0


def _kind(item: Any) -> str:
    if item is None or (isinstance(item, float) and math.isnan(item)):
        return "nothing (null)"
    if isinstance(item, bool):
        return "a boolean"
    if isinstance(item, (int, float, np.number)):
        return "a number"
    if isinstance(item, dict):
        return "an object"
    return type(item).__name__

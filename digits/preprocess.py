"""Any picture of one digit, or MNIST-style pixel values, to an MNIST-like 28x28 uint8 image.

MNIST's own recipe (LeCun et al.): grey levels, the digit's bounding box scaled to fit 20x20 keeping its aspect
ratio (anti-aliased), pasted into 28x28 so that its centre of mass is the centre. Before that, for pictures
that do not come from MNIST: polarity detection (dark ink on paper or light ink on a dark canvas), uneven
lighting removed, and the stroke width brought into MNIST's range, since a network trained on MNIST has never
seen a hairline or a marker stroke.

``to_mnist`` is the one function the served model, ``digits predict`` and the drawing app all use for a
picture; ``to_mnist_batch`` is what the endpoint feeds a request's items through. Errors are ``InputError``
with a one-line message meant for the client. Needs numpy and Pillow only.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import math
import struct
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from digits.errors import DigitsError

SIZE = 28  # MNIST's frame
BOX = 20  # MNIST's digits are scaled to fit this box inside the frame
MAX_PIXELS = 4096 * 4096  # per picture (16.8 megapixels, a phone photo fits); checked on the header, before decoding
MAX_ENCODED_CHARS = 24 * 1024 * 1024  # base64 text per picture (~18 MB of PNG/JPEG)
MAX_BATCH = 1000  # images per request
MAX_BATCH_PIXELS = 64 * 1024 * 1024  # all the pictures of one request together, so a batch cannot exhaust memory
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a request body, refused before parsing (parsed JSON takes ~10x its text)
FORMATS = ("PNG", "JPEG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pictures are first reduced (by averaging) to at most this long side, which bounds the work. At the pixel
# limit that is a factor of 4: a pen stroke in a phone photo is wider than that and survives.
_WORK_SIDE = 1024
_MIN_CONTRAST = 24.0  # grey levels between paper and ink below which a picture counts as blank
_INK_FLOOR = 0.2  # of the ink's contrast: paper texture, JPEG noise and faint shadows below it are dropped
# MNIST's stroke width relative to the long side of the digit's box: median 0.13, 5-95% from 0.10 to 0.20
# (2 * area / boundary-pixels of the >50% mask, over the test set). Strokes outside this range are grown or
# thinned toward the median.
_STROKE_REL = 0.13
_STROKE_REL_MIN = 0.10
_STROKE_REL_MAX = 0.20
_MORPH_SIDE = 80  # stroke width is normalised at this resolution (4x the 20-pixel box): cheap, still precise


class InputError(DigitsError, ValueError):
    """The input is not something the model can read; the message is one line that says what is wrong."""


def decode_image(data: str | bytes) -> Image.Image:
    """Decode a PNG or JPEG from bytes or base64 text (a ``data:image/...;base64,`` prefix is allowed).

    The pixel limit (``MAX_PIXELS``) is checked on the header before the pixels are decoded.
    """
    if isinstance(data, str):
        data = _b64decode(data)
    if not isinstance(data, (bytes, bytearray)):
        raise InputError(f"expected PNG/JPEG bytes or base64 text, got {type(data).__name__}")
    if not data:
        raise InputError("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise InputError(f"the image has more than {MAX_PIXELS:,} pixels, the limit") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for bytes that are not an image; all mean the same
        if data[:8] == _PNG_SIGNATURE and len(data) >= 24:  # Pillow refuses a 0x0 PNG; say so rather than "not a PNG"
            _check_size(*struct.unpack(">II", bytes(data[16:24])))
        kind = "PNG" if data[:8] == _PNG_SIGNATURE else "JPEG" if data[:3] == b"\xff\xd8\xff" else None
        if kind:
            raise InputError(f"the {kind} data is truncated or corrupt") from None
        raise InputError(f"the data is not a {' or '.join(FORMATS)} image ({len(data):,} bytes starting {bytes(data[:8])!r})") from None
    _check_size(*image.size)
    scale = _WORK_SIDE / max(image.size)
    if image.format == "JPEG" and scale < 1:
        # Let libjpeg decode a big photo at 1/2, 1/4 or 1/8 scale, never below _WORK_SIDE: faster and less
        # memory, the same result after the reduction to _WORK_SIDE.
        image.draft(image.mode, (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, zlib errors...
        raise InputError(f"the {image.format} data is truncated or corrupt ({_reason(exc)})") from None
    return image


def to_mnist(image: Image.Image | np.ndarray | bytes | str) -> np.ndarray:
    """Turn a picture of one digit into an MNIST-like (28, 28) uint8 image: light ink on black, 0-255.

    ``image``: a PIL image, an (H, W), (H, W, 3) or (H, W, 4) array of 0-255 values, PNG/JPEG bytes or their
    base64 text. Any size, either polarity, the digit anywhere in the frame, any stroke width.
    """
    if isinstance(image, (str, bytes, bytearray)):
        image = decode_image(image)
    elif isinstance(image, np.ndarray):
        image = _image_from_array(image)
    elif not isinstance(image, Image.Image):
        raise InputError(f"expected an image (PIL image, array, PNG/JPEG bytes or base64 text), got {type(image).__name__}")
    _check_size(*image.size)
    ink = _ink(_grey(image))
    return _mnist_frame(ink)


def check_mnist_arrays(values: Any) -> np.ndarray:
    """Validate MNIST-style pixel values and return them as uint8 (N, 28, 28).

    ``values``: shape (N, 28, 28) or (N, 784), numbers from 0 to 255 (MNIST's scale; fractions are rounded),
    light ink on a dark background (MNIST's polarity). Values that look like the 0-1 scale, inverted images,
    strings, booleans, NaN and infinity are rejected, not guessed at.
    """
    if len(values) == 0:
        raise InputError("empty batch: send at least one image")
    array = _pixel_array(values)
    problem = _pixel_problem(array)
    if problem:
        raise InputError(f"image {problem[0]}: {problem[1]}")
    return np.rint(array).astype(np.uint8)


def to_mnist_batch(items: Sequence[Any], max_batch: int = MAX_BATCH) -> np.ndarray:
    """Turn a request's items into uint8 (N, 28, 28): each one base64 PNG/JPEG text (or bytes), or 28x28/784 pixel values.

    Pixel values go through ``check_mnist_arrays`` (they must already be MNIST-like); pictures through
    ``to_mnist``. The message of an ``InputError`` names the first bad item by its position.
    """
    n = len(items)
    if n == 0 or (n == 1 and _is_empty_sequence(items[0])):
        raise InputError("empty batch: send at least one image")
    if n > max_batch:
        raise InputError(f"batch of {n:,} images is over the limit of {max_batch:,} per request: split it")
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
        out[arrays] = _check_array_items(items, arrays)
    budget = MAX_BATCH_PIXELS
    for i in pictures:
        try:
            image = decode_image(items[i])
            budget -= image.size[0] * image.size[1]
            if budget < 0:
                raise InputError(f"the pictures of this request have more than {MAX_BATCH_PIXELS:,} pixels together, the limit: send fewer per request")
            out[i] = to_mnist(image)
        except InputError as exc:
            raise InputError(f"image {i}: {exc}") from None
    return out


# --- decoding --------------------------------------------------------------------------------------------------


def _b64decode(text: str) -> bytes:
    text = text.strip()
    if text.startswith("data:"):  # a canvas's toDataURL(): data:image/png;base64,....
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InputError("a data: URL must be base64-encoded (data:image/png;base64,...)")
    if len(text) > MAX_ENCODED_CHARS:
        raise InputError(f"the base64 text has {len(text):,} characters, over the limit of {MAX_ENCODED_CHARS:,}")
    # `base64` wraps its output at 76 columns; whitespace is never data, so drop it before strict decoding.
    text = "".join(text.split())
    if not text:
        raise InputError("the image is empty (no base64 text)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"the text is not valid base64 ({_reason(exc)})") from None


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"the image is {width}x{height} pixels: empty")
    if width * height > MAX_PIXELS:
        raise InputError(f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {MAX_PIXELS:,} (4096x4096)")


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    _check_size(array.shape[1], array.shape[0])
    if array.dtype != np.uint8:
        array = _numeric_array(array, "image array")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise InputError("an image array must hold finite values from 0 to 255")
        array = np.rint(array).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _grey(image: Image.Image) -> np.ndarray:
    """Float32 grey levels 0-255, at most _WORK_SIDE on the long side, transparency resolved."""
    image = ImageOps.exif_transpose(image)  # a phone photo's pixels are stored sideways; EXIF says how to turn them
    if max(image.size) > _WORK_SIDE:
        image = image.copy()
        image.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.Resampling.BOX)
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
        raise InputError(f"no digit found: the image is blank or has too little contrast (under {_MIN_CONTRAST:.0f} grey levels)")
    # Grey levels are kept, not saturated: MNIST's own anti-aliased edges carry information (saturating them
    # cost 4 points of accuracy on MNIST digits fed through here).
    ink = np.clip((ink / peak - _INK_FLOOR) / (1 - _INK_FLOOR), 0, 1)
    return _despeckle(ink)


def _despeckle(ink: np.ndarray) -> np.ndarray:
    """Drop ink pixels with fewer than two ink neighbours: noise specks would stretch the digit's bounding box,
    while even a one-pixel line keeps two neighbours along its length."""
    mask = np.pad(ink > 0, 1).astype(np.uint8)
    h, w = ink.shape
    count = sum(mask[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return np.where(count >= 3, ink, 0).astype(np.float32)


def _background(grey: np.ndarray, level: float) -> np.ndarray | float:
    """The background's grey level: ``level`` where it is even, a smooth map where lighting varies (photos)."""
    h, w = grey.shape
    scale = 64 / max(h, w)
    if scale >= 1 or min(h, w) * scale < 8:
        return level
    small = Image.fromarray(grey, mode="F").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    # A grey-level opening wider than any stroke (15 of 64 pixels) erases the ink and keeps the lighting.
    opened = Image.fromarray(_rank(_rank(np.asarray(small), 7, np.min), 7, np.max), mode="F")
    # Averaging down to 16 pixels and interpolating back up smooths the opening's blocky plateaus.
    coarse = opened.resize((max(1, round(w * scale / 4)), max(1, round(h * scale / 4))), Image.Resampling.BOX)
    lighting = np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    if float(lighting.max() - lighting.min()) < _MIN_CONTRAST:
        return level  # even lighting (a canvas, a scan): one level is exact, the map would only add its blur
    return lighting


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
    factor = math.ceil(max(ink.shape) / side)
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
        ink = _rank(np.pad(ink, radius), radius, np.max)  # padded: room to grow at the edges of the crop
    elif width > _STROKE_REL_MAX * side:
        # Thin a marker stroke, but never by so much that the thinnest parts vanish.
        radius = min(round((width - target) / 2), math.floor(width / 4))
        if radius >= 1:
            ink = _rank(ink, radius, np.min)
    else:
        return ink
    return _crop(ink) if ink.any() else ink


def _rank(image: np.ndarray, radius: int, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Grey-level erosion (``np.min``) or dilation (``np.max``) with a (2r+1)-square, as two 1-D passes."""
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(image, pad, mode="edge"), 2 * radius + 1, axis=axis)
        image = op(windows, axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def _centre(box: np.ndarray) -> np.ndarray:
    """Paste ``box`` (at most 20x20) into 28x28 so its centre of mass falls on the frame's centre, uint8 0-255."""
    h, w = box.shape
    total = float(box.sum())
    cy = float((box.sum(axis=1) * np.arange(h)).sum() / total)
    cx = float((box.sum(axis=0) * np.arange(w)).sum() / total)
    centre = (SIZE - 1) / 2  # 13.5: between the two middle pixels, in pixel-index coordinates
    # Shift by whole pixels (MNIST did too) and keep the whole box inside the frame.
    top = min(max(round(centre - cy), 0), SIZE - h)
    left = min(max(round(centre - cx), 0), SIZE - w)
    frame = np.zeros((SIZE, SIZE), dtype=np.float32)
    frame[top : top + h, left : left + w] = box
    return np.rint(frame * 255).astype(np.uint8)


# --- pixel values ----------------------------------------------------------------------------------------------


def _check_array_items(items: Sequence[Any], indices: list[int]) -> np.ndarray:
    """Validate the pixel-value items at ``indices``: one vectorised pass when they share a shape (the usual case)."""
    try:
        array = _pixel_array([items[i] for i in indices])
    except InputError:
        array = None
    if array is None:  # one by one: names the first bad item, and allows 28x28 and 784 values in one request
        parts = []
        for i in indices:
            try:
                parts.append(_pixel_array([items[i]]))
            except InputError as exc:
                raise InputError(f"image {i}: {exc}") from None
        array = np.concatenate(parts)
    problem = _pixel_problem(array)
    if problem:
        raise InputError(f"image {indices[problem[0]]}: {problem[1]}")
    return np.rint(array).astype(np.uint8)


def _pixel_array(values: Any) -> np.ndarray:
    """Float32 (N, 28, 28) from (N, 28, 28) or (N, 784) numbers; shape and type errors raised, values not checked."""
    array = _numeric_array(values, "pixel values")
    if array.ndim == 2 and array.shape[1] == SIZE * SIZE:
        array = array.reshape(-1, SIZE, SIZE)
    if array.ndim != 3 or array.shape[1:] != (SIZE, SIZE):
        got = array.shape[1:] if array.ndim >= 2 else array.shape
        raise InputError(f"expected 28x28 or 784 pixel values per image, got shape {got}")
    return array


def _numeric_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        array = values
    else:
        try:
            array = np.asarray(values)  # let NumPy infer the type: asking for float would turn "1" and True into 1.0
        except (ValueError, TypeError):
            raise InputError(f"{what} must be a rectangular array of numbers from 0 to 255 (rows of different lengths, nulls, or values that are not numbers)") from None
        if array.dtype.kind == "O":
            array = _object_array(array, what)
        if array.dtype.kind == "b":
            raise InputError(f"{what} must be numbers from 0 to 255, got booleans")
        if array.dtype.kind in "USa":
            raise InputError(f"{what} must be numbers from 0 to 255, got strings")
        if array.dtype.kind not in "iuf":
            raise InputError(f"{what} must be numbers from 0 to 255, got {array.dtype}")
        if not isinstance(values, np.ndarray) and array.ndim and _has_bool(values, array.ndim):
            raise InputError(f"{what} must be numbers from 0 to 255, got booleans among them")
    return array.astype(np.float32, copy=False)


def _object_array(array: np.ndarray, what: str) -> np.ndarray:
    # NumPy makes an object array of nested sequences of unequal length, or of arrays inside a list.
    try:
        stacked = np.stack([np.asarray(a) for a in array]) if array.ndim == 1 else None
    except (ValueError, TypeError):
        stacked = None
    if stacked is None or stacked.dtype.kind == "O":
        raise InputError(f"{what} must be a rectangular array of numbers from 0 to 255 (rows of different lengths, nulls, or values that are not numbers)")
    return stacked


def _has_bool(values: Any, ndim: int) -> bool:
    # NumPy turns [1, True] into [1, 1] silently, and JSON's true/false arrive as Python bools: look for them,
    # in C loops (chain, map, set), as this runs over every pixel of every request.
    if isinstance(values, (list, tuple)) and all(isinstance(v, np.ndarray) for v in values):
        return any(v.dtype.kind == "b" for v in values)  # arrays carry their type: no need to visit each pixel
    flat = values
    for _ in range(ndim - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in set(map(type, flat))


def _pixel_problem(array: np.ndarray) -> tuple[int, str] | None:
    """The first image of ``array`` (float (N, 28, 28)) whose values are not MNIST-like, and what is wrong with it."""
    flat = array.reshape(len(array), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        return int(np.argmin(finite)), "pixel values must be finite numbers, got NaN or infinity"
    low, high = flat.min(axis=1), flat.max(axis=1)
    bad = (low < 0) | (high > 255)
    if bad.any():
        i = int(np.argmax(bad))
        return i, f"pixel values must be from 0 to 255, got {low[i]:g} to {high[i]:g}"
    if (high <= 1).any():
        return int(np.argmax(high <= 1)), (
            "all pixel values are at most 1: this endpoint expects MNIST's 0-255 scale, not 0-1 (multiply by 255), "
            "and a blank image has no digit"
        )
    edge = np.concatenate([array[:, 0], array[:, -1], array[:, 1:-1, 0], array[:, 1:-1, -1]], axis=1).mean(axis=1)
    if (edge > 127.5).any():
        i = int(np.argmax(edge > 127.5))
        return i, (
            f"the border is light (mean {edge[i]:.0f}): pixel values must be light ink on a dark background like "
            "MNIST (send 255 - x), or send the picture as a PNG/JPEG in the image column"
        )
    return None


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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Decoding of untrusted bytes: base64 text or PNG/JPEG bytes from a client to a PIL image, limits checked first.

The pixel limit is checked on the image header before any pixel is decoded, the base64 length before decoding.
Errors are ``InputError`` with a one-line message meant for the client. Needs Pillow only.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct

from PIL import Image

from digits.core.errors import DigitsError, first_line
from digits.serve.contract import MAX_ENCODED_CHARS, MAX_PIXELS

FORMATS = ("PNG", "JPEG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pictures are later reduced (by averaging) to at most this long side; a big JPEG is decoded at a reduced
# scale that stays above it.
WORK_SIDE = 1024


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
            check_size(*struct.unpack(">II", bytes(data[16:24])))
        kind = "PNG" if data[:8] == _PNG_SIGNATURE else "JPEG" if data[:3] == b"\xff\xd8\xff" else None
        if kind:
            raise InputError(f"the {kind} data is truncated or corrupt") from None
        raise InputError(
            f"the data is not a {' or '.join(FORMATS)} image ({len(data):,} bytes starting {bytes(data[:8])!r})"
        ) from None
    check_size(*image.size)
    scale = WORK_SIDE / max(image.size)
    if image.format == "JPEG" and scale < 1:
        # Let libjpeg decode a big photo at 1/2, 1/4 or 1/8 scale, never below WORK_SIDE: faster and less
        # memory, the same result after the reduction to WORK_SIDE.
        image.draft(image.mode, (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, zlib errors...
        raise InputError(f"the {image.format} data is truncated or corrupt ({first_line(exc)})") from None
    return _eight_bit(image)


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale PNG (Pillow's mode I;16 or I) scaled to 0-255: ``convert("L")`` would clip it at 255.

    Pillow opens 16-bit colour PNGs as 8-bit RGB(A) already, and JPEGs are 8-bit.
    """
    if not image.mode.startswith("I"):
        return image
    import numpy as np  # only for this rare mode; the module otherwise needs Pillow alone

    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8), mode="L")


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
        raise InputError(f"the text is not valid base64 ({first_line(exc)})") from None


def check_size(width: int, height: int) -> None:
    """Refuse a picture of no pixels or of more than ``MAX_PIXELS``, with a one-line ``InputError``."""
    if width <= 0 or height <= 0:
        raise InputError(f"the image is {width}x{height} pixels: empty")
    if width * height > MAX_PIXELS:
        raise InputError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {MAX_PIXELS:,} (4096x4096)"
        )

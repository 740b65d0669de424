"""What the page shows for a picture: the top three, the 28x28 the model saw and one sentence; no Gradio here."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digits.app.clients import AppError, Predictor
from digits.core.errors import DigitsError
from digits.serve.preprocess import InputError, to_mnist

TOP_K = 3


PREVIEW_SIDE = 168  # the 28x28 image blown up 6x with square pixels, so the user sees what the network sees


EMPTY_MESSAGE = "The canvas is empty: draw one digit (0-9), large, then press **Read the drawing**."


NO_UPLOAD_MESSAGE = "Choose a PNG or JPEG picture of one digit to upload."


def top_k(probabilities: np.ndarray | list[float], k: int = TOP_K) -> dict[str, float]:
    """The ``k`` most probable digits as ``{"7": 0.98, ...}``, best first (what ``gr.Label`` shows)."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.shape != (10,) or not np.isfinite(p).all():
        raise AppError(f"expected ten finite probabilities, got {p.size} values")
    order = np.argsort(-p, kind="stable")[:k]
    return {str(int(d)): float(p[d]) for d in order}


def summary(top: dict[str, float]) -> str:
    """One Markdown line for the answer: the digit and its confidence, and the runner-up when it is close."""
    (best, p1), (second, p2) = list(top.items())[:2]
    line = f"The model reads **{best}** ({p1:.1%} sure)."
    if p1 < 0.6:  # a doubtful answer says so, with the alternative
        line += f" It might also be a {second} ({p2:.1%}): try drawing it larger and clearer."
    return line


def encode_png(image: Image.Image) -> str:
    """``image`` as base64 PNG text: the form the endpoint takes in its ``image`` column."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview(mnist: np.ndarray, side: int = PREVIEW_SIDE) -> Image.Image:
    """The 28x28 uint8 image scaled up with square pixels (nearest neighbour), as the network sees it."""
    return Image.fromarray(np.asarray(mnist, dtype=np.uint8), mode="L").resize((side, side), Image.Resampling.NEAREST)


def is_blank(image: Image.Image | None) -> bool:
    """True for no image or one of a single grey level (an untouched or cleared canvas)."""
    if image is None:
        return True
    low, high = image.convert("L").getextrema()
    return low == high


Answer = tuple[dict[str, float] | None, Image.Image | None, str]


def read_picture(picture: str, predictor: Predictor) -> Answer:
    """Top three, 28x28 preview and message for one base64 PNG/JPEG picture (the same text the model gets)."""
    try:
        mnist = to_mnist(picture)  # the preview, and an early, clear message for a picture with no digit in it
    except InputError as exc:
        return None, None, _sentence(str(exc))
    try:
        probabilities = predictor.predict(picture)
    except DigitsError as exc:
        return None, preview(mnist), _sentence(str(exc))
    top = top_k(probabilities)
    return top, preview(mnist), summary(top)


def read_drawing(editor_value: dict[str, Any] | None, predictor: Predictor) -> Answer:
    """What the page shows for the sketchpad's value (Gradio's ``{"background", "layers", "composite"}``)."""
    composite = (editor_value or {}).get("composite")
    if is_blank(composite):
        return None, None, EMPTY_MESSAGE
    return read_picture(encode_png(composite), predictor)


def read_upload(path: str | None, predictor: Predictor) -> Answer:
    """What the page shows for an uploaded file: its own bytes are sent, as ``digits predict`` sends a file."""
    if not path:
        return None, None, NO_UPLOAD_MESSAGE
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, None, f"cannot read the upload: {exc.strerror or exc}"
    return read_picture(base64.b64encode(data).decode("ascii"), predictor)


def _sentence(text: str) -> str:
    """An error's one line as a sentence for the page: capital first letter, final full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."

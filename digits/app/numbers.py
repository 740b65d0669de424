"""The drawing app's number mode: draw a number (1 to 12 digits) on a wide canvas, see it read and each digit boxed.

The drawing goes to the model as the same base64 PNG the digit mode sends, with the request column ``mode`` set to
``number`` (``digits.serve.numbers`` behind the served model); the page shows the text, its confidence and the drawing
with a box and the digit over each digit read. Gradio is imported only by ``number_section``.
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image, ImageDraw

from digits.app.reading import encode_png, is_blank
from digits.core.errors import DigitsError

NUMBER_EMPTY_MESSAGE = (
    "The canvas is empty: write a number (1 to 12 digits) on one line, then press **Read the number**."
)
NUMBER_CANVAS = (1120, 280)
_BOX_COLOUR = (220, 30, 30)


def boxed(picture: Image.Image, digits: list[dict[str, Any]]) -> Image.Image:
    """The drawing in colour with a red box and its digit (and confidence) above each digit read."""
    out = picture.convert("RGB")
    draw = ImageDraw.Draw(out)
    for d in digits:
        x0, y0, x1, y1 = d["box"]
        draw.rectangle([x0, y0, x1, y1], outline=_BOX_COLOUR, width=3)
        draw.text((x0 + 2, max(0, y0 - 14)), f"{d['digit']} {100 * d['confidence']:.0f}%", fill=_BOX_COLOUR)
    return out


def read_number_drawing(editor_value: dict[str, Any] | None, predictor: Any) -> tuple[str, Image.Image | None]:
    """Message and boxed drawing for the number canvas's value (Gradio's ``{"background", "layers", "composite"}``)."""

    composite = (editor_value or {}).get("composite")
    if is_blank(composite):
        return NUMBER_EMPTY_MESSAGE, None
    try:
        answer = predictor.predict_number(encode_png(composite))
    except DigitsError as exc:
        text = str(exc)
        return (text[:1].upper() + text[1:]).rstrip(".") + ".", None
    digits = json.loads(answer["digits"]) if isinstance(answer["digits"], str) else answer["digits"]
    doubtful = [str(i + 1) for i, d in enumerate(digits) if d["confidence"] < 0.5]
    note = f" Doubtful: digit {', '.join(doubtful)}." if doubtful else ""
    return f"**{answer['text']}** (confidence {100 * float(answer['confidence']):.0f}%).{note}", boxed(
        composite, digits
    )


def number_section(predictor: Any) -> None:
    """The number mode's part of the page, inside the caller's ``gr.Blocks``: wide canvas, button, text, boxes."""
    import gradio as gr

    with gr.Accordion("Number mode: write a whole number", open=True):
        sketch = gr.Sketchpad(
            label="Write a number (one line, left to right)",
            type="pil",
            image_mode="L",
            format="png",
            canvas_size=NUMBER_CANVAS,
            fixed_canvas=True,
            height=NUMBER_CANVAS[1] + 40,
            brush=gr.Brush(default_size=12, colors=["#000000"], color_mode="fixed"),
            layers=False,
            transforms=(),
            elem_id="number-sketch",
        )
        read = gr.Button("Read the number", variant="primary", elem_id="read-number")
        message = gr.Markdown(elem_id="number-message")
        seen = gr.Image(label="What was read", type="pil", interactive=False, buttons=[], elem_id="number-boxes")
        read.click(lambda value: read_number_drawing(value, predictor), inputs=sketch, outputs=[message, seen])

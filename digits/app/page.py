"""The drawing app (``digits app``): draw or upload a digit, see what the champion model reads.

A Gradio page with a sketchpad and an image upload. Whatever the source, the picture is sent as base64 PNG/JPEG
in the ``image`` column, exactly what ``mlflow models serve`` receives, either to the registered pyfunc loaded
in-process (``--model_uri``) or to a running endpoint (``--endpoint``): both run the same pyfunc, so both
give the same answer. The 28x28 preview is ``preprocess.to_mnist`` of that same picture, the one function the
served model applies to it.

Gradio is an optional dependency (``pip install 'digits[app]'``): it is imported only by ``build_app`` and
``serve``, so this module imports without it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from digits.app.clients import DEFAULT_MODEL_URI, AppError, Predictor, make_predictor
from digits.app.feedback import add_feedback
from digits.app.numbers import number_section  # the number mode: a wide canvas, boxes over the drawing
from digits.app.reading import PREVIEW_SIDE, TOP_K, read_drawing, read_upload
from digits.core.errors import first_line

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TITLE = "Digit reader"
# Gradio 6 starts the sketchpad, and leaves it after "Clear canvas", with no tool selected ("select the draw tool
# to start"): select the brush for the user whenever that prompt shows.
SELECT_BRUSH_JS = """() => {
  setInterval(() => {
    const prompt = document.querySelector('#sketch .empty');
    const brush = document.querySelector('#sketch button[aria-label="Brush"]');
    if (prompt && brush && !brush.classList.contains('highlight')) brush.click();
  }, 250);
}"""
INSTRUCTIONS = "Draw one digit (0-9) in the box and press **Read the drawing**, or upload a PNG/JPEG picture of one."


# --- the pure parts: one picture in, what the page shows out ------------------------------------------------------


# --- the page ------------------------------------------------------------------------------------------------------


def build_app(predictor: Predictor, feedback: Any = None) -> gr.Blocks:
    """The Gradio page: canvas and upload on the left; message, top three and 28x28 preview on the right.

    ``feedback``: a ``feedback.Store`` for the Right/Wrong buttons under the answer (None: no buttons).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home: before gradio reads it
    import gradio as gr

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INSTRUCTIONS}")
        status = gr.Markdown(elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                sketch = gr.Sketchpad(
                    label="Draw a digit",
                    type="pil",
                    image_mode="L",  # flattened on white: dark ink on white paper
                    format="png",
                    canvas_size=(448, 448),
                    fixed_canvas=True,
                    height=440,
                    brush=gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed"),
                    layers=False,
                    transforms=(),
                    elem_id="sketch",
                )
                read = gr.Button("Read the drawing", variant="primary", elem_id="read")
                upload = gr.Image(
                    label="...or upload a picture (PNG/JPEG)",
                    type="filepath",  # the file's own bytes, not a re-encoded copy
                    image_mode=None,
                    sources=["upload"],
                    height=140,
                    elem_id="upload",
                )
            with gr.Column(scale=2, min_width=280):
                message = gr.Markdown(elem_id="message")
                top = gr.Label(label="Top 3", num_top_classes=TOP_K, elem_id="top")
                seen = gr.Image(
                    label="What the model saw (28x28)",
                    type="pil",
                    interactive=False,
                    height=PREVIEW_SIDE + 40,
                    buttons=[],
                    elem_id="seen",
                )
                if feedback is not None:  # the buttons under the answer; they take over the read handlers
                    add_feedback(feedback, predictor, sketch, upload, read, [top, seen, message])

        outputs = [top, seen, message]
        if feedback is None:
            read.click(lambda value: read_drawing(value, predictor), inputs=sketch, outputs=outputs)
            upload.upload(lambda path: read_upload(path, predictor), inputs=upload, outputs=outputs)

        number_section(predictor)
        demo.load(predictor.status, outputs=status)
        demo.load(None, js=SELECT_BRUSH_JS)
    return demo


def serve(
    model_uri: str = DEFAULT_MODEL_URI,
    endpoint: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    feedback: Any = None,
) -> None:
    """Start the app and block until it is stopped (Ctrl-C); ``feedback``: the store of the feedback buttons, or None."""
    predictor = make_predictor(model_uri, endpoint)
    error = getattr(predictor, "error", None)
    if error:
        print(f"digits app: {error}", flush=True)  # the page says it too; the console user sees it first
    demo = build_app(predictor, feedback)
    import gradio as gr

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio polls itself at start-up; one INFO line per request

    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            inbrowser=False,
            footer_links=[],
            theme=gr.themes.Default(
                font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
            ),
        )
    except OSError as exc:
        # Gradio says "Cannot find empty port in range" and how to set its own variables; say it in this CLI's terms.
        reason = "the port is in use, choose another with --port" if "empty port" in str(exc) else first_line(str(exc))
        raise AppError(f"cannot listen on {host}:{port}: {reason}") from None

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

import base64
import io
import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from digits.core.errors import DigitsError, first_line
from digits.core.names import CHAMPION_URI
from digits.serve.preprocess import InputError, to_mnist

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_MODEL_URI = CHAMPION_URI
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TOP_K = 3
PREVIEW_SIDE = 168  # the 28x28 image blown up 6x with square pixels, so the user sees what the network sees
EMPTY_MESSAGE = "The canvas is empty: draw one digit (0-9), large, then press **Read the drawing**."
NO_UPLOAD_MESSAGE = "Choose a PNG or JPEG picture of one digit to upload."
HOW_TO_TRAIN = "train and register one with `make run` (or `digits main`)"
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


class AppError(DigitsError):
    """The app cannot start or cannot get an answer (no model, endpoint unreachable); one line for the user."""


class Predictor(Protocol):
    """Where predictions come from: the registered model in-process, or a serving endpoint."""

    source: str

    def predict(self, picture: str) -> np.ndarray:
        """The ten probabilities for one base64 PNG/JPEG picture; ``AppError``/``InputError`` with a message otherwise."""
        ...

    def status(self) -> str:
        """One Markdown line for the page: where answers come from, or why there are none."""
        ...


class RegistryModel:
    """The pyfunc at ``model_uri`` (default: the champion), loaded once; retried on use while it cannot be loaded."""

    def __init__(self, model_uri: str = DEFAULT_MODEL_URI) -> None:
        self.model_uri = model_uri
        self.source = f"model `{model_uri}`"
        self._model: Any = None
        self._error: str | None = None
        self._lock = threading.Lock()  # Gradio calls predict and status from worker threads
        self._load()

    def _load(self) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        with self._lock:
            if self._model is not None:
                return
            try:
                self._model = mlflow.pyfunc.load_model(self.model_uri)
                self._error = None
            except MlflowException as exc:
                self._error = load_error_message(self.model_uri, exc.error_code, str(exc.message))
            except OSError as exc:  # artifacts deleted or unreadable under a registered version
                self._error = f"cannot load `{self.model_uri}`: {exc}"

    @property
    def error(self) -> str | None:
        """Why the model could not be loaded (``None`` once it is loaded)."""
        return self._error

    def predict(self, picture: str) -> np.ndarray:
        """The ten probabilities of the loaded pyfunc for one base64 PNG/JPEG picture."""
        import pandas as pd
        from mlflow.exceptions import MlflowException

        if self._model is None:
            self._load()  # a champion registered after the app started is picked up without a restart
            if self._model is None:
                raise AppError(self._error or f"cannot load `{self.model_uri}`")
        try:
            result = self._model.predict(pd.DataFrame({"image": [picture]}))
        except MlflowException as exc:
            raise InputError(first_line(str(exc.message))) from None
        try:
            return np.asarray(result["probabilities"].iloc[0], dtype=np.float64)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise AppError(f"`{self.model_uri}` did not answer ten probabilities: is it a digits-cnn model?") from None

    def predict_number(self, picture: str) -> dict[str, Any]:
        """The served model's answer in mode ``number`` (text, confidence, digits) for one base64 picture."""
        import pandas as pd
        from mlflow.exceptions import MlflowException

        if self._model is None:
            self._load()
            if self._model is None:
                raise AppError(self._error or f"cannot load `{self.model_uri}`")
        try:
            return self._model.predict(pd.DataFrame({"image": [picture]}), params={"mode": "number"}).iloc[0].to_dict()
        except MlflowException as exc:
            raise InputError(first_line(str(exc.message))) from None

    def status(self) -> str:
        """One Markdown line: the model answering, or the reason it cannot."""
        if self._model is None:
            self._load()
        if self._model is None:
            return f"**No model to ask yet:** {self._error}"
        return f"Reading with {self.source}."


class EndpointModel:
    """A running ``mlflow models serve`` endpoint, sent the same ``dataframe_split`` request a client would send."""

    def __init__(self, endpoint: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AppError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:5001, got {endpoint!r}")
        base = endpoint.strip().rstrip("/")
        self.base = base[: -len("/invocations")] if base.endswith("/invocations") else base
        self.url = f"{self.base}/invocations"
        self.timeout = timeout
        self.source = f"endpoint `{self.base}`"

    def predict(self, picture: str, mode: str = "digit") -> Any:
        """The ten probabilities the endpoint answers for one base64 PNG/JPEG picture (mode ``number``: its answer)."""
        request_params = {} if mode == "digit" else {"params": {"mode": mode}}
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[picture]]}, **request_params}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - a URL the user chose
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            message = _error_body(exc)
            if 400 <= exc.code < 500:
                raise InputError(message) from None
            raise AppError(f"the endpoint {self.base} failed (HTTP {exc.code}): {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AppError(
                f"cannot reach the endpoint {self.base} ({reason}): is `mlflow models serve` running there?"
            ) from None
        try:
            return (
                payload["predictions"][0]
                if mode != "digit"
                else np.asarray(payload["predictions"][0]["probabilities"], dtype=np.float64)
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise AppError(f"the endpoint {self.base} answered something that is not a digits-cnn prediction") from None

    def predict_number(self, picture: str) -> dict[str, Any]:
        """The endpoint's answer in mode ``number`` (text, confidence, digits) for one base64 picture."""
        return self.predict(picture, mode="number")

    def status(self) -> str:
        """One Markdown line: the endpoint answering, or that it does not answer its ping."""
        try:
            with urllib.request.urlopen(f"{self.base}/ping", timeout=5):  # noqa: S310
                return f"Reading with {self.source}."
        except (urllib.error.URLError, OSError):
            return f"**The endpoint does not answer.** Start it with `mlflow models serve -m {DEFAULT_MODEL_URI} --env-manager local -p PORT`, or check `--endpoint` ({self.base})."


# --- the pure parts: one picture in, what the page shows out ------------------------------------------------------


def load_error_message(model_uri: str, error_code: str, message: str) -> str:
    """One line for the page when ``model_uri`` cannot be loaded: a missing model or alias says how to make one."""
    reason = first_line(message)
    if model_uri.startswith("models:/"):
        name, _, alias = model_uri[len("models:/") :].partition("@")
        if error_code == "RESOURCE_DOES_NOT_EXIST":
            return f"`{model_uri}` is not in the registry yet: {HOW_TO_TRAIN}, then read again (no restart needed)."
        if error_code == "INVALID_PARAMETER_VALUE" and alias and "alias" in reason.lower():
            return (
                f"no version of `{name}` has the alias `{alias}` yet: {HOW_TO_TRAIN}, or give one the alias with "
                f"`digits register --model_name {name} --alias {alias} --version N`, then read again (no restart needed)."
            )
    return f"cannot load `{model_uri}`: {reason}"


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


# --- the page ------------------------------------------------------------------------------------------------------


def make_predictor(model_uri: str = DEFAULT_MODEL_URI, endpoint: str | None = None) -> Predictor:
    """The endpoint when one is given, else the registered model at ``model_uri`` (loaded now)."""
    return EndpointModel(endpoint) if endpoint else RegistryModel(model_uri)


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
                    from digits.app.feedback import add_feedback

                    add_feedback(feedback, predictor, sketch, upload, read, [top, seen, message])

        outputs = [top, seen, message]
        if feedback is None:
            read.click(lambda value: read_drawing(value, predictor), inputs=sketch, outputs=outputs)
            upload.upload(lambda path: read_upload(path, predictor), inputs=upload, outputs=outputs)
        from digits.app.numbers import number_section  # the number mode: a wide canvas, boxes over the drawing

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


def _sentence(text: str) -> str:
    """An error's one line as a sentence for the page: capital first letter, final full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return first_line(str(body.get("message") or body))
    except (ValueError, OSError):
        return f"HTTP {exc.code} {exc.reason}"

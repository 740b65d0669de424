"""The app's feedback buttons: after an answer the user confirms it (**Right**) or gives the digit it was.

Each answer is remembered in the page's state (the picture as sent to the model, the 28x28 it saw, the model that
answered, its digit and confidence) and stored by ``feedback.Store.record`` only when the user presses a button,
with the label given. Nothing about the user is stored. The endpoint and the served model are unchanged.
Gradio is imported only inside ``add_feedback``.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digits.app import reading
from digits.app.clients import EndpointModel
from digits.core.errors import DigitsError, first_line
from digits.feedback.store import Store

log = logging.getLogger(__name__)

ASK = "Was that right? Press **Right**, or choose the digit it was and press **Wrong: it was this digit**."
NOTHING = "Read a drawing or upload a picture first: there is no answer to give feedback on."
CHOOSE = "Choose the digit it was (0-9), then press **Wrong: it was this digit**."


def model_label(predictor: Any) -> str:
    """Which model answered: ``NAME/VERSION`` for a registry model (an alias resolved once, at the first answer,
    and checked against the loaded model's run), the model URI when it cannot be resolved, ``endpoint URL`` for an
    endpoint (it does not say its version)."""
    if isinstance(predictor, EndpointModel):
        return f"endpoint {predictor.base}"
    uri = getattr(predictor, "model_uri", None) or getattr(predictor, "source", "?")
    if getattr(predictor, "_feedback_label", None):
        return predictor._feedback_label
    if getattr(predictor, "_model", None) is None or not str(uri).startswith("models:/"):
        return str(uri)
    name, _, alias = uri[len("models:/") :].partition("@")
    if not alias:
        return name  # models:/NAME/VERSION names its version
    try:
        import mlflow

        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        loaded = getattr(getattr(predictor._model, "metadata", None), "run_id", None)  # the run of the model in memory
        label = (
            f"{name}/{version.version}"
            if loaded in (None, version.run_id)
            else f"{uri} (run {loaded}: the alias moved since it was loaded)"
        )
    except Exception as exc:  # the registry unreachable: the URI still says what was asked for
        log.warning("feedback: cannot resolve %s to a version (%s)", uri, first_line(exc))
        label = str(uri)
        return label  # not remembered: the registry may answer next time
    predictor._feedback_label = label
    return label


def answer(picture: str | None, shown: reading.Answer, predictor: Any) -> tuple[Any, Any, str, dict | None, str]:
    """The page's answer plus what to remember of it for the buttons (None when there was no prediction)."""
    top, seen, message = shown
    if not top or picture is None or seen is None:
        return top, seen, message, None, ""
    best = next(iter(top))
    mnist = np.asarray(seen.resize((28, 28), Image.Resampling.NEAREST), dtype=np.uint8)  # exact: square pixels
    pending = {
        "picture": base64.b64decode(picture),
        "mnist": mnist,
        "prediction": int(best),
        "confidence": float(top[best]),
        "model": model_label(predictor),
    }
    return top, seen, message, pending, ASK


def read_drawing(value: dict | None, predictor: Any):
    composite = (value or {}).get("composite")
    picture = None if reading.is_blank(composite) else reading.encode_png(composite)
    shown = reading.read_drawing(value, predictor) if picture is None else reading.read_picture(picture, predictor)
    return answer(picture, shown, predictor)


def read_upload(path: str | None, predictor: Any):
    try:
        picture = base64.b64encode(Path(path).read_bytes()).decode("ascii") if path else None
    except OSError:
        picture = None
    shown = reading.read_upload(path, predictor) if picture is None else reading.read_picture(picture, predictor)
    return answer(picture, shown, predictor)


def save(store: Store, pending: dict | None, label: Any) -> tuple[dict | None, str]:
    """Store the remembered answer with ``label`` (the model's own digit for **Right**); the message for the page."""
    if pending is None:
        return None, NOTHING
    if label is None or str(label) not in {str(d) for d in range(10)}:
        return pending, CHOOSE
    digit = int(label)
    try:
        store.record(
            mnist=pending["mnist"],
            label=digit,
            model=pending["model"],
            prediction=pending["prediction"],
            confidence=pending["confidence"],
            picture=pending["picture"],
        )
    except DigitsError as exc:
        return pending, f"Not saved: {exc}"
    if digit == pending["prediction"]:
        return None, f"Thanks: saved as a {digit}, as the model read it."
    return None, f"Thanks: saved as a {digit} (the model read {pending['prediction']})."


def add_feedback(store: Store, predictor: Any, sketch: Any, upload: Any, read: Any, outputs: list) -> None:
    """The buttons, under the answer (call inside the page's layout); they take over the read handlers."""
    import gradio as gr

    pending = gr.State(None)
    with gr.Row():
        right = gr.Button("Right", elem_id="fb_right", size="sm")
        wrong = gr.Button("Wrong: it was this digit", elem_id="fb_wrong", size="sm")
    digit = gr.Radio([str(d) for d in range(10)], label="The digit it was", elem_id="fb_label")
    said = gr.Markdown(elem_id="fb_message")
    both = [*outputs, pending, said]
    read.click(lambda value: read_drawing(value, predictor), inputs=sketch, outputs=both)
    upload.upload(lambda path: read_upload(path, predictor), inputs=upload, outputs=both)
    right.click(
        lambda p: save(store, p, None if p is None else p["prediction"]), inputs=pending, outputs=[pending, said]
    )
    wrong.click(lambda p, d: _save_wrong(store, p, d), inputs=[pending, digit], outputs=[pending, said, digit])


def _save_wrong(store: Store, pending: dict | None, digit: Any) -> tuple[dict | None, str, Any]:
    """**Wrong**: store the digit chosen; once saved, the choice is cleared for the next answer."""
    state, said = save(store, pending, digit)
    return state, said, digit if state is not None else None

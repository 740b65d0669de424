"""What both served models share: the ``image`` column read and validated, the answer table, the server set-up.

The param ``mode`` says what the request's pictures hold: ``digit`` (the default) or ``number`` (a handwritten
number, read by ``digits.serve.numbers``: answer columns ``text``, ``confidence`` and ``digits``, a JSON list of
``{"digit", "confidence", "box"}``). A param, so one mode per request (``"params": {"mode": "number"}``).

The param ``min_confidence`` (a number in [0, 1], default 0: answer everything) is the reject option: an answer whose
confidence is below it is turned into an explicit "unsure": digit ``UNSURE`` (-1) in digit mode, text ``""`` in
number mode, and a boolean column ``unsure`` (only when the param is given above 0, so the default answer keeps its
columns). ``confidence`` and ``probabilities`` stay, so a client can still show the best guess to the person who checks.

Torch-free, so the ONNX-backed model (``digits.serve.onnx_model``) serves without PyTorch installed.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from digits.core.config import MAX_BATCH
from digits.serve.guard import INPUT_COLUMN, MIN_CONFIDENCE_PARAM, min_confidence_problem
from digits.serve.guard import install as install_guard
from digits.serve.numbers import read_numbers
from digits.serve.preprocess import InputError, to_mnist_batch

MODE_PARAM = "mode"
MODES = ("digit", "number")
UNSURE = -1  # the digit of an answer below min_confidence


def answer(
    model_input: Any, proba: Callable[[np.ndarray], np.ndarray], params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """The served answer to a request in either mode, from a batch classifier (uint8 (N, 28, 28) -> (N, 10))."""
    try:
        mode = request_mode(params)
        threshold = request_min_confidence(params)
        if mode == "number":
            items = image_column(model_input)
            if len(items) > MAX_BATCH:
                raise InputError(
                    f"batch of {len(items):,} images is over the limit of {MAX_BATCH:,} per request: split it"
                )
            return with_unsure(numbers_frame(read_numbers(items, proba)), threshold)
    except InputError as exc:
        raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
    return with_unsure(predictions_frame(proba(request_images(model_input))), threshold)


def request_mode(params: dict[str, Any] | None) -> str:
    """The request's mode: the param ``mode``, ``digit`` when it is not given."""
    mode = (params or {}).get(MODE_PARAM) or "digit"
    if mode not in MODES:
        raise InputError(f"the param {MODE_PARAM!r} must be one of {', '.join(MODES)}, got {str(mode)[:50]!r}")
    return mode


def request_min_confidence(params: dict[str, Any] | None) -> float:
    """The request's ``min_confidence``: a number in [0, 1]; 0 (answer everything) when it is not given."""
    value = (params or {}).get(MIN_CONFIDENCE_PARAM)
    if isinstance(value, (np.floating, np.integer)):  # MLflow's params may come as numpy scalars
        value = value.item()
    problem = min_confidence_problem(value)
    if problem:
        raise InputError(problem)
    return float(value or 0.0)


def with_unsure(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``frame`` with the answers below ``threshold`` made explicit "unsure" (digit -1 or text ""), column ``unsure``."""
    if threshold <= 0:
        return frame
    unsure = frame["confidence"].to_numpy() < threshold
    if "digit" in frame:
        frame["digit"] = np.where(unsure, UNSURE, frame["digit"].to_numpy()).astype(np.int64)
    if "text" in frame:
        frame["text"] = np.where(unsure, "", frame["text"].to_numpy().astype(object))
    frame["unsure"] = unsure
    return frame


def numbers_frame(readings: Sequence[Any]) -> pd.DataFrame:
    """The endpoint's output for numbers: columns text, confidence, digits (JSON: digit, confidence, box per digit)."""
    return pd.DataFrame(
        {
            "text": [r.text for r in readings],
            "confidence": [r.confidence for r in readings],
            "digits": [r.digits_json() for r in readings],
        }
    )


def request_images(model_input: Any) -> np.ndarray:
    """The request's images as uint8 (N, 28, 28), at most ``MAX_BATCH``; a client's mistake is a 400 with one line."""
    try:
        return to_mnist_batch(image_column(model_input), max_batch=MAX_BATCH)
    except InputError as exc:
        # BAD_REQUEST makes the scoring server answer 400 with this message; any other exception is a
        # 400 whose message says nothing useful.
        raise MlflowException(str(exc), error_code=BAD_REQUEST) from None


def image_column(model_input: Any) -> Sequence[Any]:
    """The items of the ``image`` column (a DataFrame from MLflow; a direct caller may pass an array or a list)."""
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise InputError(
                f"the input needs a column named {INPUT_COLUMN!r}, got columns {list(map(str, model_input.columns))}"
            )
        return model_input[INPUT_COLUMN].tolist()
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        return list(model_input[INPUT_COLUMN])
    if isinstance(model_input, (np.ndarray, list, tuple)):
        return list(model_input)
    raise InputError(
        f"expected a table with an {INPUT_COLUMN!r} column or an array of images, got {type(model_input).__name__}"
    )


def predictions_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """The endpoint's output for (N, 10) probabilities: columns digit, confidence, probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return pd.DataFrame(
        {
            "digit": probabilities.argmax(axis=1).astype(np.int64),
            "confidence": probabilities.max(axis=1),
            "probabilities": probabilities.tolist(),
        }
    )


def prepare_server() -> None:
    """In the scoring server's process (``mlflow models serve``), install the guard and freeze the loaded heap."""
    if os.environ.get("__pyfunc_model_path__"):  # set by `mlflow models serve` for the server process alone
        install_guard()
        # Move everything loaded so far (MLflow, pandas, the model) out of the collector's reach: a 1,000-image
        # request allocates ~30,000 lists, so every third one set off a full collection over that whole heap
        # (+170 ms, measured). Those objects live as long as the server anyway.
        gc.freeze()

"""What both served models share: the ``image`` column read and validated, the answer table, the server set-up.

The param ``mode`` says what the request's pictures hold: ``digit`` (the default) or ``number`` (a handwritten
number, read by the model's line reader, ``digits.serve.line_reader``, or by cutting, ``digits.serve.numbers``, for
a model without one: answer columns ``text``, ``confidence`` and ``digits``, a JSON list of
``{"digit", "confidence", "box"}``). A param, so one mode per request (``"params": {"mode": "number"}``). In mode
number, ``length`` (1-12; 0 any) and ``pattern`` (a regular expression over digits; "" none) hold the reading.

The param ``min_confidence`` (a number in [0, 1], default 0: answer everything) is the reject option: an answer whose
confidence is below it is turned into an explicit "unsure": digit ``UNSURE`` (-1) in digit mode, text ``""`` in
number mode, and a boolean column ``unsure`` (only when the param is given above 0, so the default answer keeps its
columns). ``confidence`` and ``probabilities`` stay, so a client can still show the best guess to the person who checks.

Torch-free, so the ONNX-backed model (``digits.serve.onnx_model``) serves without PyTorch installed.
"""

from __future__ import annotations

import functools
import gc
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from digits.serve.contract import (
    INPUT_COLUMN,
    LENGTH_PARAM,
    MAX_BATCH,
    MIN_CONFIDENCE_PARAM,
    MODE_PARAM,
    MODES,
    PATTERN_PARAM,
    UNSURE,
    constraint_problem,
    min_confidence_problem,
)
from digits.serve.guard import install as install_guard
from digits.serve.line_reader import LineReader, read_lines
from digits.serve.numbers import read_numbers
from digits.serve.preprocess import InputError, to_mnist_batch


def answer(
    model_input: Any,
    proba: Callable[[np.ndarray], np.ndarray],
    params: dict[str, Any] | None = None,
    reader: LineReader | None = None,
) -> pd.DataFrame:
    """The served answer to any number of rows in either mode, from a batch classifier (uint8 (N, 28, 28) -> (N, 10)).

    Numbers are read by ``reader`` (the trained line reader) when the model has one; a model logged without one
    reads them by cutting (``numbers``), which takes no ``length`` / ``pattern``.

    The rows are worked through ``MAX_BATCH`` at a time, so memory stays bounded in-process (``predict`` on a
    DataFrame of 10,000 rows, ``mlflow models predict``, a Spark UDF); one HTTP request holds at most ``MAX_BATCH``
    rows, which the guard refuses at the edge. A client's mistake is a 400 with one line naming the bad row.
    """
    try:
        mode = request_mode(params)
        threshold = request_min_confidence(params)
        constraint = request_constraint(params, mode, reader is not None)
        items = image_column(model_input)
        numbers = (
            functools.partial(read_lines, reader=reader, **constraint)
            if reader is not None
            else functools.partial(read_numbers, proba=proba)
        )
        frames = [
            _answer_chunk(items[start : start + MAX_BATCH], start, mode, proba, numbers)
            for start in range(0, max(len(items), 1), MAX_BATCH)
        ]
    except InputError as exc:
        # BAD_REQUEST makes the scoring server answer 400 with this message; any other exception is a
        # 400 whose message says nothing useful.
        raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
    return with_unsure(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True), threshold)


def _answer_chunk(
    items: Sequence[Any],
    start: int,
    mode: str,
    proba: Callable[[np.ndarray], np.ndarray],
    numbers: Callable[[Sequence[Any]], Sequence[Any]],
) -> pd.DataFrame:
    """The answer for ``items``, rows ``start`` on of the input; an ``InputError`` names the row in the whole input."""
    try:
        if mode == "number":
            return numbers_frame(numbers(items))
        return predictions_frame(proba(to_mnist_batch(items, max_batch=MAX_BATCH)))
    except InputError as exc:
        message = str(exc)
        if start and (found := re.match(r"image (\d+): ", message)):
            message = f"image {int(found[1]) + start}: {message[found.end() :]}"
        raise InputError(message) from None


def request_constraint(params: dict[str, Any] | None, mode: str, has_reader: bool) -> dict[str, Any]:
    """The request's ``length`` and ``pattern`` (None when not given, 0 or empty), checked; only in mode number, and
    only for a model with the line reader (cutting cannot be held to them)."""
    params = params or {}
    length, pattern = params.get(LENGTH_PARAM), params.get(PATTERN_PARAM)
    if isinstance(length, np.integer):  # MLflow's params may come as numpy scalars
        length = length.item()
    problem = constraint_problem(length, pattern)
    if problem:
        raise InputError(problem)
    length, pattern = (length or None), (pattern or None)
    if (length or pattern) and mode != "number":
        raise InputError(f"the params {LENGTH_PARAM!r} and {PATTERN_PARAM!r} apply to the mode 'number' only")
    if (length or pattern) and not has_reader:
        raise InputError(
            f"this model reads numbers by cutting, which takes no {LENGTH_PARAM!r} or {PATTERN_PARAM!r}: "
            "serve a model registered with the line reader"
        )
    return {"length": length, "pattern": pattern}


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

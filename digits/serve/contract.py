"""The serving contract: what a request to the served model holds, its limits and their messages, and a client helper.

One place for what the scoring server's guard (``digits.serve.guard``), the served models (``digits.serve.answers``,
``serving``, ``onnx_model``), the app's clients, ``digits predict``, the benchmarks and the tests must agree on:

- the one input column ``image`` (each row base64 PNG/JPEG text, or 28x28 / 784 pixel values 0-255);
- the request params (``mode``: ``digit`` or ``number``; ``min_confidence``: 0 to 1; ``length``: 0 to 12 and
  ``pattern``: a regular expression, for numbers), listed in ``PARAMS``;
- the limits of one HTTP request (rows, bytes, pixels) and the one-line messages a client gets when over them.

The per-request limits belong to the HTTP edge (the guard); in-process, ``predict`` takes any number of rows and
works through them ``MAX_BATCH`` at a time. Imports nothing but the standard library and ``digits.core``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from digits.core.config import MAX_BATCH

__all__ = [
    "BODY_SECONDS",
    "INPUT_COLUMN",
    "LAYOUTS",
    "LENGTH_PARAM",
    "MAX_LENGTH",
    "MAX_PATTERN",
    "PATTERN_PARAM",
    "MAX_BATCH",
    "MAX_BATCH_PIXELS",
    "MAX_ENCODED_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_PIXELS",
    "MAX_REQUEST_BYTES",
    "MIN_CONFIDENCE_PARAM",
    "MEDIA_TYPE",
    "MODES",
    "MODE_PARAM",
    "PARAMS",
    "REQUEST_KEYS",
    "UNSURE",
    "accepted_content",
    "batch_too_large",
    "body_too_large",
    "constraint_problem",
    "min_confidence_problem",
    "request_body",
    "request_keys",
    "too_many_pixels",
]

# --- names -----------------------------------------------------------------------------------------------------
INPUT_COLUMN = "image"  # the served signature's one column
MODE_PARAM = "mode"  # what the pictures hold: a digit each (the default) or a whole number
MODES = ("digit", "number")
MIN_CONFIDENCE_PARAM = "min_confidence"  # the reject option: answers below it are "unsure" (digits.serve.answers)
UNSURE = -1  # the digit of an answer below min_confidence
# Constraints on a number's reading (mode number, a model with the line reader): exactly ``length`` digits (1-12;
# 0 = any), and/or a regular expression over digits (``pattern``; "" = none), e.g. "\\d{5}" or "\\d+(00)?".
LENGTH_PARAM = "length"
PATTERN_PARAM = "pattern"
MAX_LENGTH = 12  # the most digits a number may have
MAX_PATTERN = 100  # characters of a pattern
# Every param a request may carry (the guard refuses others before parsing). A new param is added here, in the
# served signature's params schema (mlops/registry.py) and where answers.py reads it.
PARAMS: tuple[str, ...] = (MODE_PARAM, MIN_CONFIDENCE_PARAM, LENGTH_PARAM, PATTERN_PARAM)
MEDIA_TYPE = "application/json"  # the one content type the endpoint reads
REQUEST_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")  # MLflow's JSON request layouts
LAYOUTS = ("dataframe_split", "inputs")  # the layouts request_body writes

# --- limits of one HTTP request ----------------------------------------------------------------------------------
# MAX_BATCH (digits.core.config, 1,000): images per request; also the chunk in-process predict works through.
# A request body, refused while it is read: 1,000 images as pixel values are ~3 MB of JSON, 1,000 canvas drawings
# ~10 MB; the parsed JSON takes a few times its text.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_ERROR_CHARS = 2000  # of an error message: whatever the body, an error answer stays a few KB
BODY_SECONDS = 30.0  # at most, for the whole body to arrive; a stalled upload gets a 408 after this
MAX_PIXELS = 4096 * 4096  # per picture (16.8 megapixels, a phone photo fits); checked on the header, before decoding
MAX_ENCODED_CHARS = 24 * 1024 * 1024  # base64 text per picture (~18 MB of PNG/JPEG)
# All the pictures of one request (or one in-process chunk of MAX_BATCH rows) together, decoded: one full-size phone
# photo or 16 pictures of 1024x1024. Caps a request's CPU and memory: 16 pictures of 1024x1024 took 1.0 s to
# preprocess on 2 busy cores, 1,000 images sent as pixel values 0.09-0.14 s.
MAX_BATCH_PIXELS = 4096 * 4096


# --- their messages ----------------------------------------------------------------------------------------------
def batch_too_large(rows: int, limit: int = MAX_BATCH) -> str:
    """The message for a request of more images than ``limit``."""
    return f"batch of {rows:,} images is over the limit of {limit:,} per request: split it"


def too_many_pixels(limit: int = MAX_BATCH_PIXELS) -> str:
    """The message for pictures of one request with more than ``limit`` pixels together."""
    return f"the pictures of this request have more than {limit:,} pixels together, the limit: send fewer per request"


def body_too_large(size: int) -> str:
    """The message for a request body of ``size`` bytes, over ``MAX_REQUEST_BYTES``."""
    return (
        f"the request body has {size:,} bytes, over the limit of {MAX_REQUEST_BYTES:,}: send fewer images per request"
    )


def accepted_content() -> str:
    """What the endpoint takes, for a 415's message."""
    return (
        f"the content types this model takes: {MEDIA_TYPE} only, with one of the keys {request_keys()}, "
        f"holding an {INPUT_COLUMN!r} column"
    )


def request_keys() -> str:
    """MLflow's request layouts as a phrase: ``dataframe_split, dataframe_records, instances or inputs``."""
    return f"{', '.join(REQUEST_KEYS[:-1])} or {REQUEST_KEYS[-1]}"


def min_confidence_problem(value: Any) -> str | None:
    """What is wrong with a ``min_confidence`` param (one line), or None: absent, or a number from 0 to 1."""
    if value is None:
        return None
    # bool is an int to Python, and a string is no number here: both are a client's mistake.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and 0.0 <= float(value) <= 1.0:  # NaN fails the comparison
        return None
    return f"the param {MIN_CONFIDENCE_PARAM!r} must be a number from 0 to 1, got {str(value)[:50]!r}"


def constraint_problem(length: Any, pattern: Any) -> str | None:
    """What is wrong with the ``length`` / ``pattern`` params by type and range (one line), or None.

    The pattern's grammar is checked where it is compiled (``ctc_pattern``), with the same one-line 400.
    """
    if length is not None and (
        isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH
    ):
        return f"the param {LENGTH_PARAM!r} must be a whole number from 1 to {MAX_LENGTH} (0: any), got {str(length)[:50]!r}"
    if pattern is not None and (not isinstance(pattern, str) or len(pattern) > MAX_PATTERN):
        what = f"{len(pattern)} characters" if isinstance(pattern, str) else type(pattern).__name__
        return f"the param {PATTERN_PARAM!r} must be a regular expression over digits of at most {MAX_PATTERN} characters, got {what}"
    return None


# --- the client side ---------------------------------------------------------------------------------------------
def request_body(
    items: Iterable[Any], params: Mapping[str, Any] | None = None, layout: str = "dataframe_split"
) -> dict[str, Any]:
    """The JSON body (a dict, for ``json.dumps``) of one request for ``items``: pictures or pixel arrays.

    ``items``: base64 PNG/JPEG texts, or 28x28 / 784 pixel values (nested lists or numpy arrays, sent as lists).
    ``layout``: ``dataframe_split`` (one ``image`` column, one row per item) or ``inputs`` (the items as a list).
    ``params``: e.g. ``{"mode": "number"}``; ``None`` or empty sends none (the model's defaults).
    """
    rows = [item.tolist() if hasattr(item, "tolist") else item for item in items]
    if layout == "dataframe_split":
        body: dict[str, Any] = {"dataframe_split": {"columns": [INPUT_COLUMN], "data": [[row] for row in rows]}}
    elif layout == "inputs":
        body = {"inputs": rows}
    else:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    unknown = sorted(set(params or {}) - set(PARAMS))
    if unknown:
        raise ValueError(f"the served model takes the params {', '.join(PARAMS)}, not {', '.join(unknown)}")
    if params:
        body["params"] = dict(params)
    return body

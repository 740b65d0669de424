"""The scoring server's guard: every request a hostile or careless client sends costs bounded work and gets a small JSON answer.

``mlflow models serve`` (MLflow 3.17 and 3.18) reads the whole body before looking at it, parses what any content
type says it is (CSV and parquet included, without limits), answers some client mistakes with a 500, a plain-text
body or a stack trace, and echoes the request in some error messages. ``install()`` wraps three of its
functions, which the server looks up when it builds its app and at each request:

- the route (``_async_catch_mlflow_exception``, which MLflow applies to its ``/invocations`` handler): refuses
  before reading the body a missing or unsupported Content-Type (media types compared case-insensitively), a
  Content-Encoding, and a Content-Length over ``MAX_REQUEST_BYTES``; reads a chunked body only up to that limit;
  answers a body that does not arrive in time (a stalled upload) with a JSON 408; logs a client that hangs up
  mid-upload in one line; and cuts any error answer to ``MAX_ERROR_CHARS`` with no stack trace.
- ``invocations``: parses a JSON body once (orjson where installed), refuses one that is not valid JSON, not an
  object, carries ``params`` not in ``contract.PARAMS``, or holds more than ``MAX_BATCH`` rows, all before any
  array or DataFrame is built; sends ``{"inputs": [...]}`` down the one-column ``dataframe_split`` path; and
  turns MLflow's exceptions into short ones.
- ``predictions_to_json``: the same answer written with ``json.dumps`` (the C encoder) in one piece.

These are MLflow internals with no stability promise, so each is wrapped only where it is found with the shape
the guard expects (``digits.serve.seams``: name, call signature, use by the server's ``init``), whatever the
version; a protection whose seam is missing is off, and ``install`` names every such protection in one WARNING
line at start-up (``digits doctor`` fails on it too). CI runs the serving tier on the newest and the oldest
MLflow that pyproject.toml accepts.

What would let MLflow do this upstream: a request-size limit enforced while reading, case-insensitive media
types, a list of accepted content types per model, JSON 4xx answers without stack traces or echoed input,
parsing the body once (handing the parsed dict to ``infer_and_parse_data``), no deep copy of ``inputs`` for a
model whose signature has one column, and ``json.dumps`` instead of ``json.dump`` in ``predictions_to_json``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR

from digits.serve import seams
from digits.serve.contract import (
    BODY_SECONDS,
    INPUT_COLUMN,
    LENGTH_PARAM,
    MAX_BATCH,
    MAX_ERROR_CHARS,
    MAX_REQUEST_BYTES,
    MEDIA_TYPE,
    MIN_CONFIDENCE_PARAM,
    PARAMS,
    PATTERN_PARAM,
    REQUEST_KEYS,
    accepted_content,
    batch_too_large,
    body_too_large,
    constraint_problem,
    min_confidence_problem,
    request_keys,
)

try:  # parses a 1,000-image request 2.5x faster than json; optional, as the answer does not depend on it
    import orjson as _orjson
except ImportError:
    _orjson = None


_log = logging.getLogger(__name__)


def install() -> dict[str, str | None]:
    """Guard the scoring server of this process, seam by seam (see the module docstring). Idempotent.

    Returns each protection with ``None`` where it is on, else why it is off; logs the ones that are off in one
    WARNING line.
    """
    server = seams.scoring_server()
    status = seams.protections(server)
    makers = {seams.ROUTE: _guarded_route, seams.INVOCATIONS: _guarded_invocations, seams.ANSWERS: _fast_answers}
    for seam in seams.SEAMS:
        if server is not None and seams.missing(server, seam) is None:
            seams.wrap(server, seam, makers[seam.name])
    warning = seams.off_line(status, mlflow.__version__)
    if warning:  # the server loads its model once: one line at start-up
        _log.warning(warning)
    return status


def refusal(status: int, message: str, code: str | None = None) -> dict[str, str]:
    """The JSON body of a refusal: MLflow's own shape (``error_code``, ``message``), the message cut short."""
    code = code or {408: "REQUEST_TIMEOUT", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}.get(
        status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    )
    return {"error_code": str(code)[:100], "message": _cut(message)}


def _cut(message: str) -> str:
    return (
        message
        if len(message) <= MAX_ERROR_CHARS
        else message[: MAX_ERROR_CHARS - 25] + f"... ({len(message):,} chars)"
    )


# --- the route: headers, the body as it arrives, the answer's size --------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_headers(headers: Any) -> None:
    """Refuse (``_Refused``) what can be refused from the headers alone, before a byte of the body is read."""
    check_media(headers.get("content-type"))
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Refused(415, f"Content-Encoding {encoding[:50]!r} is not supported: send the body uncompressed")
    length = headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_REQUEST_BYTES:
        raise _Refused(413, body_too_large(int(length)))


def check_media(content_type: str | None) -> None:
    """Refuse (``_Refused``, 415) a missing Content-Type or any but application/json (in any case)."""
    if not content_type:
        raise _Refused(415, f"no Content-Type header: {accepted_content()}")
    if content_type.split(";")[0].strip().lower() != MEDIA_TYPE:
        raise _Refused(415, f"unsupported Content-Type {content_type[:100]!r}: {accepted_content()}")


async def _read_body(request: Any) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise _Refused(
                413,
                body_too_large(size)
                if size < 2 * MAX_REQUEST_BYTES
                else f"the request body is over the limit of {MAX_REQUEST_BYTES:,} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _guarded_route(server: Any) -> Any:
    """MLflow's route decorator, with the checks above around the handler it decorates."""
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response

    catch_mlflow_exception = server._async_catch_mlflow_exception
    # MLflow's own limit for a request (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s by default) answers with a
    # plain-text 504 labelled JSON: the guard answers first, in JSON, half of it at most for the body to arrive.
    timeout = float(server.MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    body_seconds = min(BODY_SECONDS, timeout / 2)

    def respond(status: int, message: str, code: str | None = None) -> Response:
        return Response(content=json.dumps(refusal(status, message, code)), status_code=status, media_type=MEDIA_TYPE)

    @functools.wraps(catch_mlflow_exception)
    def decorate(handler: Any) -> Any:
        caught = catch_mlflow_exception(handler)

        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            start = asyncio.get_running_loop().time()
            try:
                check_headers(request.headers)
                body = await asyncio.wait_for(_read_body(request), timeout=body_seconds)
            except _Refused as exc:
                return respond(exc.status, str(exc))
            except (asyncio.TimeoutError, TimeoutError):
                return respond(408, f"the request body did not arrive within {body_seconds:g} s")
            except ClientDisconnect:
                _log.warning(
                    "client %s hung up before its request body arrived", request.client.host if request.client else "?"
                )
                return Response(status_code=400)  # nobody is there to read it
            sent = False

            async def replay() -> dict[str, Any]:  # MLflow's handler reads the body again: give it what was read
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            left = timeout - (asyncio.get_running_loop().time() - start) - 0.5
            try:
                response = await asyncio.wait_for(
                    caught(Request(request.scope, receive=replay)), timeout=max(left, 0.1)
                )
            except (asyncio.TimeoutError, TimeoutError):
                return respond(
                    504,
                    f"the answer took over {timeout:g} s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT): send fewer or smaller images",
                )
            if response.status_code >= 400:
                response = respond(response.status_code, *_message(response.body))
            return response

        return route

    return decorate


def _message(body: bytes) -> tuple[str, str | None]:
    """The message and error code of an error answer, whatever else MLflow put in it (a stack trace, the request...)."""
    try:
        answer = json.loads(body)
        message, code = answer.get("message", ""), answer.get("error_code")
    except (ValueError, AttributeError):
        message, code = body[:MAX_ERROR_CHARS].decode("utf-8", "replace"), None
    return str(message) or "the request could not be answered", code


# --- invocations: the parsed body ------------------------------------------------------------------------------


def _guarded_invocations(server: Any) -> Any:
    original = server.invocations

    def answer(status: int, message: str) -> Any:
        return server.InvocationsResponse(
            response=json.dumps(refusal(status, message)), status=status, mimetype=MEDIA_TYPE
        )

    @functools.wraps(original)
    def invocations(data: Any, content_type: str | None, model: Any, input_schema: Any) -> Any:
        try:  # the route checked the headers already; a direct caller (and the tests) may not have
            check_media(content_type)
            if isinstance(data, (str, bytes, bytearray)) and len(data) > MAX_REQUEST_BYTES:
                raise _Refused(413, body_too_large(len(data)))
            parsed = parse_request(data)
            result = original(parsed, _normalised(content_type.partition(";")[2]), model, input_schema)
        except RecursionError:
            return answer(400, "the JSON is nested too deeply to be a request for this model")
        except _Refused as exc:
            return answer(exc.status, str(exc))
        except MlflowException as exc:
            raise _short(exc) from None
        if result.status >= 400 and result.mimetype != MEDIA_TYPE:  # MLflow's plain-text answers (a charset, ...)
            return answer(result.status, str(result.response))
        return result

    return invocations


def _normalised(parameters: str) -> str:
    """``application/json`` with its parameters' names (and the charset) in lower case: MLflow compares them as sent."""
    pairs = []
    for part in filter(str.strip, parameters.split(";")):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        pairs.append(f"{key}={value.strip().strip(chr(34)).lower() if key == 'charset' else value.strip()}")
    return "; ".join([MEDIA_TYPE, *pairs])


def _short(exc: MlflowException) -> MlflowException:
    """The exception as the client should see it: its own message, without the echoed request or a stack trace."""
    if exc.get_http_status_code() >= 500:
        _log.error("internal error while answering a request: %s", _cut(exc.message))
        return MlflowException(
            "internal error while answering the request (see the server's log)", error_code=INTERNAL_ERROR
        )
    # MLflow prefixes its messages with the input: "Failed to predict data '<DataFrame>'. \nError: Failed to enforce
    # schema of data '<DataFrame>' with schema '...'. Error: Model is missing inputs ['image']."; the last part is the point.
    message = exc.message.rsplit("Error: ", 1)[-1] if exc.message.startswith("Failed to ") else exc.message
    return MlflowException(_cut(message), error_code=BAD_REQUEST)


def _loads(data: str | bytes | bytearray) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except ValueError:  # NaN/Infinity literals, integers over 64 bits, depth over 1,024: Python's json decides
            pass
    return json.loads(data)


def parse_request(data: Any) -> dict[str, Any]:
    """The request as a dict MLflow's parser takes, refused (``_Refused``) before any array is built when it cannot be one.

    ``{"inputs": [item, ...]}`` becomes the equivalent one-column ``dataframe_split`` (the model has one input
    column, so both mean the same rows) and skips MLflow's value-by-value copy of ``inputs``.
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = _loads(data)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError included
            raise _Refused(400, f"the body is not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(data, dict):
        raise _Refused(
            400,
            f"the body must be a JSON dictionary (an object) with one of the keys {request_keys()}, got a JSON {_json_kind(data)}",
        )
    params = data.get("params")
    if params not in (None, {}) and not (isinstance(params, dict) and set(params) <= set(PARAMS)):
        raise _Refused(
            400,
            f"this model takes no params other than {', '.join(PARAMS)}, got {_json_kind(params) if not isinstance(params, dict) else sorted(map(str, params))[:10]}",
        )
    problem = (
        min_confidence_problem(params.get(MIN_CONFIDENCE_PARAM))
        or constraint_problem(params.get(LENGTH_PARAM), params.get(PATTERN_PARAM))
        if isinstance(params, dict)
        else None
    )
    if problem:  # before MLflow's own type check of the params, whose message is a Python set's repr
        raise _Refused(400, problem)
    rows = _rows(data)
    if rows is not None and len(rows) > MAX_BATCH:
        raise _Refused(400, batch_too_large(len(rows)))
    inputs = data.get("inputs")
    if (
        isinstance(inputs, list)
        and inputs
        and set(data) <= {"inputs", "params"}
        and not any(isinstance(i, dict) for i in inputs)
    ):
        data = {
            "dataframe_split": {"columns": [INPUT_COLUMN], "data": [[item] for item in inputs]},
            **({"params": params} if params else {}),
        }
    return data


def _rows(data: dict[str, Any]) -> list | None:
    """The list whose length is the number of images, in whichever of MLflow's request layouts ``data`` uses."""
    split = data.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return split["data"]
    for key in REQUEST_KEYS[1:]:
        if isinstance(data.get(key), list):
            return data[key]
        if isinstance(data.get(key), dict):  # {"inputs": {"image": [...]}}: columns of rows
            column = data[key].get(INPUT_COLUMN)
            return column if isinstance(column, list) else None
    return None


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number", dict: "object"}.get(
        type(value), "null"
    )


def _fast_answers(server: Any) -> Any:
    original, encoder, jsonable = server.predictions_to_json, server.NumpyEncoder, server._get_jsonable_obj

    @functools.wraps(original)
    def predictions_to_json(raw_predictions: Any, output: Any, metadata: dict | None = None) -> Any:
        if metadata:
            return original(raw_predictions, output, metadata)
        # json.dumps (one shot) uses the C encoder; json.dump writes chunk by chunk through the Python one.
        # Same text either way: same conversion, same encoder class, same separators.
        output.write(json.dumps({"predictions": jsonable(raw_predictions, pandas_orient="records")}, cls=encoder))

    return predictions_to_json

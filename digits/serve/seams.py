"""Where the request guard hooks into MLflow's scoring server, found by shape, and which protections each hook gives.

The guard (``digits.serve.guard``) is switched on seam by seam, by what the installed MLflow offers, never by its
version string: each seam is checked at load for the name, the call signature and the use by the server that the
guard relies on. A seam that is missing or changed switches off the protections that need it, and
``protections()`` says which (``install`` logs them in one WARNING line at start-up; ``digits doctor`` fails on them).

Why these seams, and not an ASGI middleware: the scoring server (``mlflow.pyfunc.scoring_server.app``) loads the
model first and only then builds its FastAPI app inside ``init()``, which uvicorn imports as a module attribute; code
in the model runs before the app exists and is never handed it, so there is no public point to add a middleware
from. The decorator MLflow applies to its ``/invocations`` route is looked up inside ``init()``, after the model
has loaded: wrapping it puts the guard around that route, which is what a middleware would do for it. uvicorn's
own limits apply whatever the guard can do: h11 refuses request headers over 16 KB, and ``UVICORN_LIMIT_CONCURRENCY``
(uvicorn reads ``UVICORN_*`` from the environment ``mlflow models serve`` passes on) caps concurrent connections.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# What each seam protects. The route: before and while the body is read; invocations: before any array is built.
ROUTE = "route"
INVOCATIONS = "invocations"
ANSWERS = "predictions_to_json"
PROTECTIONS: dict[str, tuple[str, ...]] = {
    ROUTE: (
        "body limit while reading (413)",
        "Content-Type and Content-Encoding checked before reading (415)",
        "stalled uploads (408)",
        "short JSON error answers without stack traces",
    ),
    INVOCATIONS: ("JSON, params and batch limit checked before any array is built (400)",),
    ANSWERS: ("fast JSON answers (speed only)",),
}


@dataclass(frozen=True)
class Seam:
    """One function of MLflow's scoring server the guard wraps, and how to tell that it is the one expected."""

    name: str  # the key in PROTECTIONS
    attribute: str  # the module attribute the guard replaces
    parameters: tuple[str, ...]  # its parameters, as the wrapper calls it
    also: tuple[str, ...] = ()  # other attributes the wrapper uses


SEAMS = (
    Seam(ROUTE, "_async_catch_mlflow_exception", ("func",), ("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT",)),
    Seam(INVOCATIONS, "invocations", ("data", "content_type", "model", "input_schema"), ("InvocationsResponse",)),
    Seam(
        ANSWERS, "predictions_to_json", ("raw_predictions", "output", "metadata"), ("NumpyEncoder", "_get_jsonable_obj")
    ),
)


def missing(server: Any, seam: Seam) -> str | None:
    """Why ``seam`` cannot be wrapped on this scoring server (``None``: it is there, with the expected shape)."""
    function = getattr(server, seam.attribute, None)
    if not callable(function):
        return f"{seam.attribute} is gone"
    function = inspect.unwrap(function)  # the guard's own wrapper, when installed already
    try:
        parameters = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return f"{seam.attribute} has no signature"
    if parameters != seam.parameters:
        return f"{seam.attribute}{tuple(parameters)} is not {seam.attribute}{seam.parameters}"
    absent = [name for name in seam.also if not hasattr(server, name)]
    if absent:
        return f"{', '.join(absent)} gone"
    if seam.name == INVOCATIONS and tuple(getattr(server.InvocationsResponse, "_fields", ())) != (
        "response",
        "status",
        "mimetype",
    ):
        return "InvocationsResponse is not (response, status, mimetype)"
    if seam.name == ROUTE and not callable(getattr(server.MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, "get", None)):
        return "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT has no get()"
    return _unused(server, seam)


def _unused(server: Any, seam: Seam) -> str | None:
    # The route decorator and invocations only matter if the server's app uses them: init() (or a function
    # defined in it, such as the route's handler) must look them up as module globals.
    if seam.name == ANSWERS:
        return None
    code = getattr(getattr(server, "init", None), "__code__", None)
    if code is None:
        return "the server has no init() to read"
    return None if seam.attribute in _global_names(code) else f"init() no longer uses {seam.attribute}"


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def scoring_server() -> Any | None:
    """MLflow's scoring-server module, or ``None`` where this MLflow has none."""
    try:
        from mlflow.pyfunc import scoring_server as server
    except ImportError:
        return None
    return server


def protections(server: Any | None = None) -> dict[str, str | None]:
    """Each protection of the guard, with ``None`` where it is on for this MLflow, else why it is off."""
    server = server if server is not None else scoring_server()
    out: dict[str, str | None] = {}
    for seam in SEAMS:
        reason = "MLflow has no scoring server" if server is None else missing(server, seam)
        out.update(dict.fromkeys(PROTECTIONS[seam.name], reason))
    return out


def off_line(status: dict[str, str | None], version: str) -> str | None:
    """The one WARNING line naming each protection that is off (``None`` when all are on)."""
    off = [f"{name} ({reason})" for name, reason in status.items() if reason]
    if not off:
        return None
    return f"digits: the request guard is partly off on MLflow {version}; OFF: {'; '.join(off)}"


def wrap(server: Any, seam: Seam, make: Callable[[Any], Any]) -> bool:
    """Replace ``seam`` on ``server`` with ``make(server)`` once (idempotent); False when it was wrapped already."""
    if getattr(getattr(server, seam.attribute), "_digits_guard", False):
        return False
    wrapped = make(server)
    wrapped._digits_guard = True
    setattr(server, seam.attribute, wrapped)
    return True

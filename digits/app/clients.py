"""The app's two ways to reach a model: the registered pyfunc loaded in-process (``RegistryModel``) or a running
``mlflow models serve`` endpoint (``EndpointModel``); both send the same request and give the same answers."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

import numpy as np

from digits.core.errors import DigitsError, first_line
from digits.core.names import CHAMPION_URI
from digits.serve.contract import INPUT_COLUMN, MODE_PARAM, request_body
from digits.serve.preprocess import InputError

log = logging.getLogger(__name__)


DEFAULT_MODEL_URI = CHAMPION_URI


HOW_TO_TRAIN = "train and register one with `make run` (or `digits main`)"


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
            result = self._model.predict(pd.DataFrame({INPUT_COLUMN: [picture]}))
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
            return (
                self._model.predict(pd.DataFrame({INPUT_COLUMN: [picture]}), params={MODE_PARAM: "number"})
                .iloc[0]
                .to_dict()
            )
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
        body = json.dumps(request_body([picture], None if mode == "digit" else {MODE_PARAM: mode})).encode()
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


def make_predictor(model_uri: str = DEFAULT_MODEL_URI, endpoint: str | None = None) -> Predictor:
    """The endpoint when one is given, else the registered model at ``model_uri`` (loaded now)."""
    return EndpointModel(endpoint) if endpoint else RegistryModel(model_uri)


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return first_line(str(body.get("message") or body))
    except (ValueError, OSError):
        return f"HTTP {exc.code} {exc.reason}"

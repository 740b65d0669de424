"""The served model: an MLflow pyfunc that reads pictures or pixel values and answers digit, confidence, probabilities.

Logged as models-from-code (``registry.log_cnn_model``): no pickle. The network is rebuilt from the bundled
``digits`` code and its config JSON, and the weights are a state_dict loaded with ``weights_only=True``.
Needs torch, numpy, pandas, Pillow, scipy and mlflow (orjson where installed); imports nothing from training,
tracking or tuning.

Input: one column ``image``; each row is base64 PNG/JPEG text (a picture, any size and polarity, which
``preprocess.to_mnist`` makes MNIST-like) or 28x28 / 784 pixel values 0-255, light ink on dark (used as is).
``{"inputs": [[...], ...]}`` fills that one column with an (N, 28, 28) or (N, 784) array.
Output: one row per image: ``digit`` (int), ``confidence`` (float), ``probabilities`` (ten floats).
"""

from __future__ import annotations

import base64
import functools
import gc
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from digits.errors import DigitsError, first_line
from digits.names import CHAMPION_URI
from digits.model import MAX_BATCH, load_checkpoint, predict_proba
from digits.preprocess import MAX_REQUEST_BYTES, InputError, to_mnist_batch

try:  # parses a 1,000-image request 2.5x faster than json; optional, as the answer does not depend on it
    import orjson as _orjson
except ImportError:
    _orjson = None

INPUT_COLUMN = "image"
CHECKPOINT_ARTIFACT = "checkpoint"
# The wrapper below replaces the scoring server's `invocations` and `predictions_to_json` and calls its private
# `_get_jsonable_obj`: internals with no stability promise. It is installed only on the MLflow version it was
# tested against; any other version serves with MLflow's own path (slower, and with its 500s and plain-text
# answers) and says so in one log line at start-up. tests/test_serving.py fails on another version, so bumping
# MLflow means re-testing the wrapper and this constant (and pyproject.toml's bound) together.
TESTED_MLFLOW = "3.17.2"

_log = logging.getLogger(__name__)


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """The CNN behind the endpoint: validates and preprocesses the ``image`` column, then predicts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the network from the ``checkpoint`` artifact (weights.pt + config.json); in the server, add the guard."""
        model, _ = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model = inference_model(model)
        if os.environ.get("__pyfunc_model_path__"):  # set by `mlflow models serve` for the server process alone
            guard_scoring_server()
            # Move everything loaded so far (MLflow, pandas, torch, the model) out of the collector's reach: a
            # 1,000-image request allocates ~30,000 lists, so every third one set off a full collection over
            # that whole heap (+170 ms, measured). Those objects live as long as the server anyway.
            gc.freeze()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Digit, confidence and the ten probabilities for each row of ``model_input``."""
        try:
            images = to_mnist_batch(_column(model_input), max_batch=MAX_BATCH)
        except InputError as exc:
            # BAD_REQUEST makes the scoring server answer 400 with this message; any other exception is a
            # 400 whose message says nothing useful.
            raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
        # A request holds at most MAX_BATCH images: one forward pass.
        return predictions_frame(predict_proba(self.model, images))


def guard_scoring_server() -> None:
    """Close the gaps where MLflow's scoring server answers a client's mistake with a 500 or a plain-text body,
    and take the slow steps out of its JSON path.

    As of MLflow 3.17 it answers 500 to a request without a Content-Type header (it calls ``None.split``) and
    to deeply nested JSON (``json.loads`` raises RecursionError), a wrong content type gets a plain-text 415,
    and a body of any size is parsed. It also parses a JSON body twice, deep-copies an ``inputs`` payload
    value by value (for 1,000 images of 784 pixels: about 0.03 s per parse and 0.15 s for the copy on 2
    cores, more than the network takes), and writes the answer with ``json.dump``, which skips the C encoder
    (0.025 s for 1,000 answers). The server looks these functions up at each request, so wrapping them fixes
    all of this: a body over ``MAX_REQUEST_BYTES`` gets a 413 before parsing; the body is parsed once (by
    orjson where installed); ``{"inputs": [item, ...]}`` goes on as the equivalent one-column
    ``dataframe_split`` (the model has one input column, so both mean the same rows); and the answer is the
    same JSON text written in one piece. Anything else passes through unchanged. Idempotent. Installed only on
    MLflow ``TESTED_MLFLOW``; on any other version (or layout) it logs one warning and changes nothing.

    What would let MLflow do this upstream: a request-size limit and case-insensitive media types in the
    scoring server itself, a 415/400 JSON answer for a missing Content-Type or unparsable JSON, parsing the
    body once (handing the parsed dict to ``infer_and_parse_data``), no deep copy of ``inputs`` for a model
    whose signature has one column, and ``json.dumps`` instead of ``json.dump`` in ``predictions_to_json``.
    """
    if mlflow.__version__ != TESTED_MLFLOW:
        _log.warning("digits: MLflow %s is not the tested %s: serving through MLflow's own request path, without "
                     "the request guard and the faster JSON path", mlflow.__version__, TESTED_MLFLOW)
        return
    try:
        from mlflow.pyfunc import scoring_server as server
    except ImportError:
        return
    original = getattr(server, "invocations", None)
    if original is None or getattr(original, "_digits_guard", False) or not hasattr(server, "InvocationsResponse"):
        return
    _speed_up_answers(server)

    def refuse(status: int, message: str) -> Any:
        code = {413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}.get(status, "BAD_REQUEST")
        body = json.dumps({"error_code": code, "message": message})
        return server.InvocationsResponse(response=body, status=status, mimetype="application/json")

    @functools.wraps(original)
    def invocations(data: Any, content_type: str | None, model: Any, input_schema: Any) -> Any:
        if not content_type:
            return refuse(415, "no Content-Type header: send the request as application/json")
        if isinstance(data, (str, bytes, bytearray)) and len(data) > MAX_REQUEST_BYTES:
            return refuse(413, f"the request body has {len(data):,} bytes, over the limit of {MAX_REQUEST_BYTES:,}: send fewer images per request")
        try:
            if content_type.split(";")[0].strip().lower() == "application/json":
                data = _parse_request(data)
            result = original(data, content_type, model, input_schema)
        except RecursionError:
            raise MlflowException("the JSON is nested too deeply to be a request for this model", error_code=BAD_REQUEST) from None
        if result.status == 415 and result.mimetype != "application/json":
            return refuse(415, str(result.response))
        return result

    invocations._digits_guard = True  # type: ignore[attr-defined]
    server.invocations = invocations


def _speed_up_answers(server: Any) -> None:
    original = getattr(server, "predictions_to_json", None)
    encoder, jsonable = getattr(server, "NumpyEncoder", None), getattr(server, "_get_jsonable_obj", None)
    if original is None or encoder is None or jsonable is None:
        return

    @functools.wraps(original)
    def predictions_to_json(raw_predictions: Any, output: Any, metadata: dict | None = None) -> Any:
        if metadata:
            return original(raw_predictions, output, metadata)
        # json.dumps (one shot) uses the C encoder; json.dump writes chunk by chunk through the Python one.
        # Same text either way: same conversion, same encoder class, same separators.
        output.write(json.dumps({"predictions": jsonable(raw_predictions, pandas_orient="records")}, cls=encoder))

    server.predictions_to_json = predictions_to_json


def _loads(data: str | bytes | bytearray) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except ValueError:  # NaN/Infinity literals, integers over 64 bits, depth over 1,024: Python's json decides
            pass
    return json.loads(data)


def _parse_request(data: Any) -> Any:
    # Parse the body once; what does not parse to an object goes on as it came, for MLflow's own 400 message.
    if isinstance(data, (str, bytes, bytearray)):
        try:
            parsed = _loads(data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            return data
        if not isinstance(parsed, dict):
            return data
        data = parsed
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if isinstance(inputs, list) and inputs and set(data) <= {"inputs", "params"} and not any(isinstance(i, dict) for i in inputs):
        data = {**data, "dataframe_split": {"columns": [INPUT_COLUMN], "data": [[item] for item in inputs]}}
        del data["inputs"]
    return data


def inference_model(model: nn.Module) -> nn.Module:
    """The network prepared for CPU inference: batch norms folded into their convolutions, channels-last layout.

    Same outputs (to float rounding); on 2 CPU cores it ran about twice as fast as the training layout.
    """
    return _fuse_conv_bn(model.eval()).to(memory_format=torch.channels_last)


def _fuse_conv_bn(module: nn.Module) -> nn.Module:
    # Eval-mode batch norm is an affine map per channel: fold it into the preceding convolution's weights.
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            layers, fused = list(child), []
            while layers:
                layer = layers.pop(0)
                if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                    layer = fuse_conv_bn_eval(layer, layers.pop(0))
                fused.append(_fuse_conv_bn(layer))
            setattr(module, name, nn.Sequential(*fused))
        else:
            _fuse_conv_bn(child)
    return module


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


def _column(model_input: Any) -> Sequence[Any]:
    # The signature makes MLflow hand over a DataFrame with the `image` column; a direct caller of
    # PythonModel.predict may pass an array or a list.
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise InputError(f"the input needs a column named {INPUT_COLUMN!r}, got columns {list(map(str, model_input.columns))}")
        return model_input[INPUT_COLUMN].tolist()
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        return list(model_input[INPUT_COLUMN])
    if isinstance(model_input, (np.ndarray, list, tuple)):
        return list(model_input)
    raise InputError(f"expected a table with an {INPUT_COLUMN!r} column or an array of images, got {type(model_input).__name__}")


class PredictError(DigitsError):
    """``digits predict`` could not read an image file or load the model; one line for the user."""


def predict_files(paths: Sequence[str | os.PathLike], model_uri: str = CHAMPION_URI) -> pd.DataFrame:
    """Predict image files (PNG/JPEG) with the model at ``model_uri``, through the served model's own preprocessing.

    Returns one row per file: path, digit, confidence, probabilities.
    """
    if not paths:
        raise PredictError("no image files given")
    encoded = []
    for path in paths:
        try:
            encoded.append(base64.b64encode(Path(path).read_bytes()).decode("ascii"))
        except OSError as exc:
            raise PredictError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise PredictError(f"cannot load the model {model_uri}: {first_line(exc)}") from None
    rows = []
    for path, text in zip(paths, encoded):  # one at a time, so the first unreadable picture is named by its path
        try:
            result = model.predict(pd.DataFrame({INPUT_COLUMN: [text]}))
        except MlflowException as exc:
            raise PredictError(f"{path}: {first_line(exc).removeprefix('image 0: ')}") from None
        rows.append({"path": str(path), **result.iloc[0].to_dict()})
    return pd.DataFrame(rows)

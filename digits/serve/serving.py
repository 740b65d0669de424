"""The served model: an MLflow pyfunc that reads pictures or pixel values and answers digit, confidence, probabilities.

Logged as models-from-code (``registry.log_cnn_model``): no pickle. The network is rebuilt from the bundled
``digits`` code and its config JSON, and the weights are a state_dict loaded with ``weights_only=True``.
Needs torch, numpy, pandas, Pillow, scipy and mlflow (orjson where installed); imports nothing from training,
tracking or tuning.

Input: one column ``image``; each row is base64 PNG/JPEG text (a picture, any size and polarity, which
``preprocess.to_mnist`` makes MNIST-like) or 28x28 / 784 pixel values 0-255, light ink on dark (used as is).
``{"inputs": [[...], ...]}`` fills that one column with an (N, 28, 28) or (N, 784) array.
Output: one row per image: ``digit`` (int), ``confidence`` (float), ``probabilities`` (ten floats).
With the param ``mode`` ``number``: one row per picture of a number, ``text``, ``confidence``, ``digits`` (JSON).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from digits.core.errors import DigitsError, first_line
from digits.core.names import CHAMPION_URI
from digits.serve.answers import answer, prepare_server
from digits.serve.contract import INPUT_COLUMN, LENGTH_PARAM, MIN_CONFIDENCE_PARAM, MODE_PARAM, PATTERN_PARAM
from digits.serve.model import load_checkpoint, predict_proba
from digits.serve.reader import line_reader

CHECKPOINT_ARTIFACT = "checkpoint"
READER_ARTIFACT = "reader"  # the line reader's folder (reader.save_reader + its calibration), when logged with one


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """The CNN behind the endpoint: validates and preprocesses the ``image`` column, then predicts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the network from the ``checkpoint`` artifact (weights.pt + config.json); in the server, add the guard."""
        model, _ = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model = inference_model(model)
        folder = context.artifacts.get(READER_ARTIFACT)
        self.reader = line_reader(folder) if folder else None  # without one, numbers are read by cutting
        prepare_server()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Digit, confidence and the ten probabilities for each row of ``model_input`` (or, in mode number, text, confidence, digits)."""
        # answer() works through any number of rows MAX_BATCH at a time: one forward pass each.
        return answer(model_input, lambda images: predict_proba(self.model, images), params, self.reader)


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


class PredictError(DigitsError):
    """``digits predict`` could not read an image file or load the model; one line for the user."""


def predict_files(
    paths: Sequence[str | os.PathLike],
    model_uri: str = CHAMPION_URI,
    number: bool = False,
    min_confidence: float = 0.0,
    length: int = 0,
    pattern: str = "",
) -> pd.DataFrame:
    """Predict image files (PNG/JPEG) with the model at ``model_uri``, through the served model's own preprocessing.

    Returns one row per file: path, digit, confidence, probabilities; with ``number`` (the served mode ``number``):
    path, text, confidence, digits. ``min_confidence`` > 0 (the served param): a column ``unsure``, and digit -1
    (text "") where the confidence is below it. ``length`` (1-12; 0 any) and ``pattern`` ("" none): the served
    params that hold a number's reading to them.
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
            params = {MODE_PARAM: "number" if number else "digit", MIN_CONFIDENCE_PARAM: float(min_confidence)}
            if number:
                params.update({LENGTH_PARAM: int(length), PATTERN_PARAM: str(pattern)})
            result = model.predict(pd.DataFrame({INPUT_COLUMN: [text]}), params=params)
        except MlflowException as exc:
            raise PredictError(f"{path}: {first_line(exc).removeprefix('image 0: ')}") from None
        rows.append({"path": str(path), **result.iloc[0].to_dict()})
    return pd.DataFrame(rows)

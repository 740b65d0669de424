"""The CNN served through ONNX Runtime: the same input, answers and 4xx errors as ``serving.DigitClassifier``, no torch.

Registered as ``digits-cnn-onnx`` beside every ``digits-cnn`` version (``registry.log_onnx_model``). The graph
(``digits.mlops.export``) takes uint8 pixels (N, 28, 28) 0-255 and gives the ten probabilities; pictures are made
MNIST-like by the same ``preprocess.to_mnist`` in Python first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from digits.serve.answers import answer, prepare_server
from digits.serve.contract import MAX_BATCH
from digits.serve.line_reader import LineReader

ONNX_FILE = "model.onnx"
ONNX_ARTIFACT = "onnx"
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
# The line reader's graph (digits.mlops.reader_export.export_reader) and its calibration, in one folder.
READER_ONNX_ARTIFACT = "reader_onnx"
READER_ONNX_FILE = "reader.onnx"
READER_INPUT, READER_OUTPUT = "strips", "log_probs"


def session(path: Any, threads: int = 0):
    """An ONNX Runtime session on the CPU for an exported file (``threads`` 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_probabilities(sess: Any, images: np.ndarray, batch_size: int = MAX_BATCH) -> np.ndarray:
    """Probabilities (N, 10) from an exported graph for uint8 images (N, 28, 28)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    out = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


def onnx_reader(directory: Any) -> LineReader:
    """The served line reader from a folder holding ``reader.onnx`` and its ``reader_calibration.json``."""
    sess = session(Path(directory) / READER_ONNX_FILE)

    def frames(strips: np.ndarray) -> np.ndarray:
        return sess.run([READER_OUTPUT], {READER_INPUT: np.ascontiguousarray(strips, dtype=np.float32)})[0]

    return LineReader.calibrated(frames, directory)


class OnnxDigitClassifier(mlflow.pyfunc.PythonModel):
    """The ONNX graph behind the endpoint: validates and preprocesses the ``image`` column, then predicts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Open the ``onnx`` artifact with ONNX Runtime; in the server, add the guard."""
        self.session = session(context.artifacts[ONNX_ARTIFACT])
        folder = context.artifacts.get(READER_ONNX_ARTIFACT)
        self.reader = onnx_reader(folder) if folder else None  # without one, numbers are read by cutting
        prepare_server()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Digit, confidence and the ten probabilities for each row of ``model_input`` (or, in mode number, text, confidence, digits)."""
        return answer(model_input, lambda images: onnx_probabilities(self.session, images), params, self.reader)

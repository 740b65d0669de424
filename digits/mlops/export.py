"""ONNX export of the CNN: raw 0-255 pixels in, the ten probabilities out, for ONNX Runtime without Python or torch.

The graph: input ``pixels``, uint8 (N, 28, 28), values 0-255, light ink on dark, the digit centred as MNIST's are
(what ``preprocess.to_mnist`` makes of a picture); output ``probabilities``, float32 (N, 10). The batch axis is
dynamic; the scaling to [0, 1], MNIST's normalisation, the calibration temperature (metadata ``temperature``) and
the softmax are inside the graph, so a client sends the pixels as they are and gets calibrated probabilities. Exported with torch's dynamo exporter at opset ``OPSET``; ``digits export`` checks that ONNX
Runtime's answers match PyTorch's before it writes anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digits.core.config import TrainConfig
from digits.core.errors import DigitsError, first_line, quiet_loggers
from digits.serve.model import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, predict_proba
from digits.serve.onnx_model import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, onnx_probabilities, session  # noqa: F401 (re-exported)

OPSET = 18
INT8_FILE = "model.int8.onnx"
INT8_MAX_DROP = 0.0005  # test accuracy an int8 graph may lose against the fp32 one (0.05 points), else it is not kept
PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| over every probability


class ExportError(DigitsError):
    """The model cannot be exported or its ONNX graph does not compute what the network does."""


class PixelsToProbabilities(nn.Module):
    """The network as exported: uint8 pixels (N, 28, 28) 0-255 in, probabilities (N, 10) out."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).unsqueeze(1) / 255.0  # the network normalises [0, 1] pixels itself
        return torch.softmax(self.network(x), dim=1)


def export_onnx(network: nn.Module, config: TrainConfig, path: str | Path) -> Path:
    """Write ``network`` as ONNX to ``path`` (the training config in its metadata); return the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = PixelsToProbabilities(network.cpu().eval()).eval()
    example = torch.zeros((2, 28, 28), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        quiet_loggers("onnxscript", "onnx_ir"),
    ):  # progress prints and INFO lines
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixels": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    metadata = {
        "digits_config": config.to_json(),
        "input": "pixels: uint8 (N, 28, 28), 0-255, light ink on dark, centred like MNIST (digits.serve.preprocess.to_mnist)",
        "output": "probabilities: float32 (N, 10), digits 0-9",
        # Calibration is inside the graph (the network divides its logits by it): recorded, not to be applied again.
        "temperature": str(float(getattr(network, "temperature", 1.0))),
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


@dataclass(frozen=True)
class Parity:
    """How ONNX Runtime's answers compare with PyTorch's on the same images."""

    images: int
    max_abs_diff: float
    same_digits: bool

    @property
    def ok(self) -> bool:
        return self.same_digits and self.max_abs_diff <= PARITY_ATOL


def parity(network: nn.Module, sess, images: np.ndarray, expected: np.ndarray | None = None) -> Parity:
    """Compare the exported graph with ``network`` (fp32, eval mode) on ``images`` (uint8 (N, 28, 28)).

    ``expected``: the network's probabilities on ``images`` when the caller has them already.
    """
    expected = predict_proba(network.cpu().eval(), images) if expected is None else expected
    got = onnx_probabilities(sess, images)
    return Parity(len(images), float(np.abs(got - expected).max()), bool((got.argmax(1) == expected.argmax(1)).all()))


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray) -> Path:
    """Statically quantise the exported graph to int8 (QDQ, per-channel weights), calibrated on ``calibration`` images.

    ``calibration``: uint8 (N, 28, 28) training images (a few hundred are enough; never test images).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({INPUT_NAME: calibration[i : i + 100]} for i in range(0, len(calibration), 100))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="digits-quantize-") as tmp, quiet_loggers("root", "onnxruntime"):
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX Runtime's symbolic shape inference does not follow the dynamo graph's reshape; ONNX's own does.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return Path(out_path)


def checkpoint_of(model_uri: str, workdir: str | Path) -> Path:
    """The folder holding ``weights.pt`` and ``config.json`` of a registered CNN, a run's checkpoint, or a local folder."""
    local = Path(model_uri)
    if (local / WEIGHTS_FILE).is_file():
        return local
    import mlflow

    try:
        root = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(workdir)))
    except Exception as exc:  # MlflowException for an unknown model, OSError for a bad path
        raise ExportError(f"cannot load the model {model_uri}: {first_line(exc)}") from None
    found = sorted(p.parent for p in root.rglob(WEIGHTS_FILE) if (p.parent / CONFIG_FILE).is_file())
    if not found:
        raise ExportError(f"{model_uri} holds no CNN checkpoint ({WEIGHTS_FILE} + {CONFIG_FILE}): is it the baseline?")
    return found[0]


@dataclass(frozen=True)
class Exported:
    """What ``export_model`` wrote and measured."""

    path: Path
    parity: Parity
    int8_path: Path | None = None
    accuracy: dict[str, float] | None = None  # test accuracy of torch, onnx (fp32) and int8, when data was given


def export_model(model_uri: str, out_dir: str | Path, mnist=None) -> Exported:
    """The ``digits export`` job: ``out_dir/model.onnx`` (+ ``config.json``) from ``model_uri``, checked against PyTorch.

    Without ``mnist`` the check runs on 512 random pixel images; with it, on the whole test set, and an int8
    graph calibrated on 500 training images is written too if it loses at most ``INT8_MAX_DROP`` of test
    accuracy. A failed check raises ``ExportError`` and writes nothing.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="digits-export-") as tmp:
        network, config = load_checkpoint(checkpoint_of(model_uri, tmp))
        path = export_onnx(network, config, Path(tmp) / ONNX_FILE)
        images = (
            np.random.default_rng(0).integers(0, 256, (512, 28, 28), dtype=np.uint8)
            if mnist is None
            else mnist.test_images
        )
        expected = predict_proba(network, images)
        check = parity(network, session(path), images, expected)
        if not check.ok:
            raise ExportError(
                f"the ONNX graph does not match PyTorch (max |dp| {check.max_abs_diff:.2e}, same digits: {check.same_digits})"
            )
        int8, accuracy = None, None
        if mnist is not None:
            int8, accuracy = _int8_if_kept(path, Path(tmp) / INT8_FILE, mnist, expected)
        out_dir.mkdir(parents=True, exist_ok=True)
        for written in filter(None, (path, int8)):
            (out_dir / written.name).write_bytes(written.read_bytes())
        (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    return Exported(out_dir / ONNX_FILE, check, out_dir / INT8_FILE if int8 else None, accuracy)


def _int8_if_kept(fp32: Path, target: Path, mnist, expected: np.ndarray) -> tuple[Path | None, dict[str, float]]:
    """Quantise ``fp32``; keep the int8 graph if it loses at most ``INT8_MAX_DROP``; the three test accuracies.

    ``expected``: PyTorch's test probabilities. The fp32 graph passed the parity check (the same digits), so
    its accuracy is PyTorch's.
    """
    quantize_int8(fp32, target, mnist.train_images[:500])
    labels = mnist.test_labels
    torch_accuracy = float((expected.argmax(1) == labels).mean())
    int8_accuracy = float((onnx_probabilities(session(target), mnist.test_images).argmax(1) == labels).mean())
    accuracy = {"torch": torch_accuracy, "onnx": torch_accuracy, "int8": int8_accuracy}
    return (target if accuracy["onnx"] - accuracy["int8"] <= INT8_MAX_DROP else None), accuracy

"""ONNX export of the line reader: strips of any width in, per-frame log-probabilities out, checked against PyTorch.

The graph: input ``strips``, float32 (N, 1, 32, W) in [0, 1] (``serve.strip.batch_array``; W a multiple of 32, up
to 1,024), output ``log_probs``, float32 (N, W / 4, 11); batch and width are dynamic. Decoding stays in numpy
(``serve.ctc_decode``), so the ONNX-backed model reads numbers without torch.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from digits.core.config import ReaderConfig
from digits.core.errors import DigitsError, quiet_loggers
from digits.serve.line_reader import write_calibration
from digits.serve.onnx_model import READER_INPUT, READER_ONNX_FILE, READER_OUTPUT, session
from digits.serve.reader import ReaderNet
from digits.serve.strip import HEIGHT, MAX_WIDTH

OPSET = 18
PARITY_ATOL = 1e-3  # max |log p_onnx - log p_torch| over every frame and class of the check strips


class ReaderExportError(DigitsError):
    """The reader's ONNX graph does not compute what the network does."""


def export_reader(
    net: ReaderNet, config: ReaderConfig, directory: str | Path, calibration: dict[str, float] | None = None
) -> Path:
    """Write ``reader.onnx`` and ``reader_calibration.json`` (``calibration``: temperature, emission_offset) into
    ``directory``, after checking the graph against ``net`` on strips of several widths (``ReaderExportError`` when it
    differs); return the folder."""
    calibration = dict(calibration or {"temperature": 1.0, "emission_offset": 0.0})
    import onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    width = 32 * torch.export.Dim("width32", min=1, max=MAX_WIDTH // 32)  # batch_array pads to multiples of 32
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("onnxscript", "onnx_ir"):
        program = torch.onnx.export(
            net,
            (torch.zeros((2, 1, HEIGHT, 64)),),
            input_names=[READER_INPUT],
            output_names=[READER_OUTPUT],
            dynamic_shapes={"x": {0: batch, 3: width}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in {
        "digits_reader_config": config.to_json(),
        "input": "strips: float32 (N, 1, 32, W) in [0, 1], ink bright, W a multiple of 32 (digits.serve.strip)",
        "output": "log_probs: float32 (N, W / 4, 11), class 0 the CTC blank, class d + 1 digit d",
        "calibration": json.dumps(calibration),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    path = directory / READER_ONNX_FILE
    onnx.save(proto, str(path))
    worst = parity(net, path)
    if worst > PARITY_ATOL:
        path.unlink()
        raise ReaderExportError(f"the reader's ONNX graph does not match PyTorch (max |d log p| {worst:.2e})")
    write_calibration(directory, calibration)
    return directory


def parity(net: ReaderNet, path: str | Path, seed: int = 0) -> float:
    """The largest difference between the graph's and the network's log-probabilities on random strips of widths
    32, 160 and 1,024."""
    sess, rng = session(path), np.random.default_rng(seed)
    worst = 0.0
    for width in (32, 160, MAX_WIDTH):
        x = (rng.random((3, 1, HEIGHT, width)) > 0.8).astype(np.float32)
        with torch.inference_mode():
            expected = net(torch.from_numpy(x)).numpy()
        got = sess.run([READER_OUTPUT], {READER_INPUT: x})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst

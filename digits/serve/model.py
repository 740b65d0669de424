"""The CNN, built from a ``TrainConfig``, and its checkpoint format (state_dict + config JSON, no pickles)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digits.core.config import MAX_BATCH, TrainConfig  # noqa: F401 (MAX_BATCH: used here and imported from here)

# MNIST's pixel mean and std on [0, 1]: the network normalises its own input so that training, the
# served model and the app all feed it the same thing, pixels in [0, 1] with MNIST polarity (``to_input``
# makes them from uint8 0-255, the one place that scales).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PIXEL_MAX = 255  # uint8 pixels: 0 = background, 255 = ink
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
# The fitted temperature (``digits.evaluate.calibration``) beside the weights, as JSON: absent = 1 (uncalibrated).
CALIBRATION_FILE = "calibration.json"


def _conv(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    # With batch norm the convolution's bias is redundant (the norm's shift replaces it).
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DigitCNN(nn.Module):
    """Conv blocks (one conv at 28x28, then pairs of convs at 14x14, 7x7, ...), global max-pool, linear.

    Input: float pixels in [0, 1], shape (N, 1, 28, 28), light ink on dark. Output: logits (N, 10).
    """

    def __init__(self, width: int = 16, blocks: int = 3, dropout: float = 0.1, batch_norm: bool = True):
        super().__init__()
        # The first block is a single convolution: at full resolution a second one would cost as much as
        # all later blocks together.
        layers = _conv(1, width, batch_norm)
        channels = width
        for _ in range(1, blocks):
            layers.append(nn.MaxPool2d(2))
            layers += _conv(channels, channels * 2, batch_norm) + _conv(channels * 2, channels * 2, batch_norm)
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 10))
        self.register_buffer("mean", torch.tensor(MNIST_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(MNIST_STD), persistent=False)
        # Temperature scaling (Guo et al. 2017): the logits are divided by it, so the served torch model, the
        # evaluation and the ONNX graph (which traces it in) all answer calibrated; 1 while training. Not in the
        # state_dict: it lives in calibration.json, so weights saved before calibration existed still load.
        self.register_buffer("temperature", torch.tensor(1.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std)) / self.temperature

    def set_temperature(self, temperature: float) -> None:
        """Divide the logits by ``temperature`` (> 0) from now on: the argmax never changes, the confidence does."""
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        self.temperature.fill_(float(temperature))


def build_model(config: TrainConfig) -> DigitCNN:
    """Build the untrained network that ``config`` describes."""
    return DigitCNN(width=config.width, blocks=config.blocks, dropout=config.dropout, batch_norm=config.batch_norm)


def save_checkpoint(
    model: nn.Module, config: TrainConfig, directory: str | Path, calibration: dict | None = None
) -> Path:
    """Write ``weights.pt`` (a plain state_dict), ``config.json`` and ``calibration.json`` into ``directory``; return it.

    ``calibration.json`` holds the model's temperature and ``calibration`` (how it was fitted: held-out images, NLL
    before and after); it is written when either is given, so an uncalibrated model's folder is as before.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd module keeps the real one here
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    state.pop("temperature", None)  # (never persistent; kept out should a subclass make it so)
    torch.save(state, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(config.to_json())
    temperature = float(getattr(model, "temperature", torch.tensor(1.0)))
    if calibration is not None or temperature != 1.0:
        record = {"temperature": temperature, **(calibration or {})}
        (directory / CALIBRATION_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return directory


def read_temperature(directory: str | Path) -> float:
    """The temperature stored in ``directory``'s calibration.json; 1.0 when there is none (an uncalibrated model)."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0
    return float(json.loads(path.read_text())["temperature"])


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[DigitCNN, TrainConfig]:
    """Rebuild the network from ``config.json``, load ``weights.pt`` with ``weights_only=True``, set its temperature."""
    directory = Path(directory)
    config = TrainConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = build_model(config)
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.set_temperature(read_temperature(directory))
    return model.to(device).eval(), config


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0-255, shape (N, 1, 28, 28), to the network's input: float32 in [0, 1], channels-last layout.

    The one place that scales pixels; the network itself then normalises by MNIST's mean and std. Anything but
    uint8 is refused, so no image can be scaled twice (or not at all).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"the network's input is made from uint8 pixels 0-255, got {images.dtype}")
    return to_channels_last(images.float().div_(PIXEL_MAX))


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory layout (the layout ``inference_model`` and training give the network).

    channels_last selects the fastest convolution kernels of cuDNN (tensor cores) and of oneDNN on CPU
    (measured on 2 AMD EPYC cores: 4,600 -> 6,900 images/s in fp32).
    """
    return x.contiguous(memory_format=torch.channels_last)


def batched_logits(
    model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = MAX_BATCH
) -> Iterator[torch.Tensor]:
    """The one inference loop: fp32 logits of uint8 images (N, 28, 28) or (N, 1, 28, 28), 0-255, ``batch_size`` at a time.

    Runs ``model`` in eval mode (and restores its mode after the last batch) on the device of its parameters;
    each logits tensor stays there. The caller chooses the autograd mode (``torch.no_grad``, ``inference_mode``).
    """
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x.unsqueeze(1)
    was_training = model.training
    if was_training:  # (the served model is always in eval mode: no walk over its modules per request)
        model.eval()
    try:
        for start in range(0, len(x), batch_size):
            # Full precision everywhere, so the accuracy logged at training time is the served model's, to the image.
            yield model(to_input(x[start : start + batch_size].to(device, non_blocking=True))).float()
    finally:
        if was_training:
            model.train()


@torch.inference_mode()
def predict_proba(model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = MAX_BATCH) -> np.ndarray:
    """Class probabilities (N, 10) as float32 for uint8 images (N, 28, 28) or (N, 1, 28, 28), 0-255."""
    out = [torch.softmax(logits, dim=1).cpu() for logits in batched_logits(model, images, batch_size)]
    if not out:
        return np.zeros((0, 10), dtype=np.float32)
    return (out[0] if len(out) == 1 else torch.cat(out)).numpy()

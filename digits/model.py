"""The CNN, built from a ``TrainConfig``, and its checkpoint format (state_dict + config JSON, no pickles)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digits.config import TrainConfig

# MNIST's pixel mean and std on [0, 1]: the network normalises its own input so that training, the
# served model and the app all feed it the same thing, pixels in [0, 1] with MNIST polarity.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std))


def build_model(config: TrainConfig) -> DigitCNN:
    """Build the untrained network that ``config`` describes."""
    return DigitCNN(width=config.width, blocks=config.blocks, dropout=config.dropout, batch_norm=config.batch_norm)


def save_checkpoint(model: nn.Module, config: TrainConfig, directory: str | Path) -> Path:
    """Write ``weights.pt`` (a plain state_dict) and ``config.json`` into ``directory``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd module keeps the real one here
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(config.to_json())
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[DigitCNN, TrainConfig]:
    """Rebuild the network from ``config.json`` and load ``weights.pt`` with ``weights_only=True``."""
    directory = Path(directory)
    config = TrainConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = build_model(config)
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Class probabilities (N, 10) as float32 for uint8 images (N, 28, 28) or (N, 1, 28, 28), 0-255."""
    device = next(model.parameters()).device
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
        # Full precision everywhere, so the accuracy logged at training time is the served model's, to the image.
        out.append(torch.softmax(model(batch).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 10), dtype=np.float32)

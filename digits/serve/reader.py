"""The line reader: a small CNN over a whole strip of digits, one frame per ``STRIDE`` pixels of width, read with CTC.

A picture becomes a strip the way the reader was trained on (``picture_strip``): the ink as ``preprocess.ink_map``
finds it, cropped to its box and scaled so the line is ``LINE`` pixels high inside a ``HEIGHT``-pixel strip. The
network (``ReaderNet``) emits, for every frame, log-probabilities over blank + the ten digits; ``greedy_decode``
takes the best class per frame, merges repeats and drops blanks, so a repeated digit needs a blank frame between
its two emissions. No recurrent layer: each frame sees about one and a half digits, which keeps emissions at their
digit (part 2 maps frames back to boxes). Checkpoint: ``weights.pt`` (state_dict) + ``reader_config.json``.
Needs numpy, Pillow and torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digits.core.config import ReaderConfig
from digits.serve import strip
from digits.serve.line_reader import LineReader, write_calibration
from digits.serve.preprocess import ink_map
from digits.serve.strip import HEIGHT, LINE, MAX_WIDTH, PAD, STRIDE, batch_array, frames_for, to_strip  # noqa: F401 (re-exported)

__all__ = ["BLANK", "HEIGHT", "STRIDE", "ReaderNet", "Reading", "greedy_decode", "picture_strip", "read_strips"]

BLANK = 0  # class 0 is CTC's blank; class d + 1 is digit d
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "reader_config.json"


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ReaderNet(nn.Module):
    """Conv blocks halving the height to 4 and the width to a quarter, then a column head: (N, 1, 32, W) -> (N, W/4, 11).

    Input: pixels in [0, 1], light ink on dark. Output: log-probabilities per frame (blank first).
    """

    def __init__(self, width: int = 16, dropout: float = 0.1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(1, w),
            nn.MaxPool2d(2),  # 16 x W/2
            *_block(w, 2 * w),
            nn.MaxPool2d(2),  # 8 x W/4: the frame rate
            *_block(2 * w, 3 * w),
            *_block(3 * w, 3 * w),
            nn.MaxPool2d((2, 1)),  # 4 x W/4
            *_block(3 * w, 4 * w),
        )
        # The column's four rows together (a 4x3 convolution): where in the column the ink sits matters (a 7 from a 1).
        self.column = nn.Sequential(
            nn.Conv2d(4 * w, 6 * w, (4, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(6 * w), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(6 * w, 11, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.column(self.features(x * 2 - 1)).squeeze(2)  # (N, C, T)
        return torch.log_softmax(self.head(frames), dim=1).transpose(1, 2)  # (N, T, 11)


def build_reader(config: ReaderConfig) -> ReaderNet:
    """The untrained reader that ``config`` describes."""
    return ReaderNet(width=config.reader_width, dropout=config.reader_dropout)


def picture_strip(image: Any) -> np.ndarray:
    """A picture (what ``preprocess.to_mnist`` takes) to the reader's strip, through ``preprocess.ink_map``."""
    return to_strip(ink_map(image)[0])[0]


@dataclass(frozen=True)
class Reading:
    """A strip read: its digits, the frames that emitted them, and the string's probability along the greedy path."""

    text: str
    frames: tuple[int, ...]
    confidence: float


def greedy_decode(log_probs: np.ndarray, lengths: Sequence[int] | None = None) -> list[Reading]:
    """Best class per frame, repeats merged, blanks dropped; ``log_probs`` (N, T, 11), ``lengths`` the valid frames."""
    log_probs = np.asarray(log_probs)
    if log_probs.ndim == 2:
        log_probs = log_probs[None]
    best = log_probs.argmax(axis=2)
    top = np.take_along_axis(log_probs, best[..., None], axis=2)[..., 0]
    out = []
    for i, path in enumerate(best):
        t_max = int(lengths[i]) if lengths is not None else len(path)
        path = path[:t_max]
        keep = (path != BLANK) & np.concatenate([[True], path[1:] != path[:-1]])
        where = np.flatnonzero(keep)
        text = "".join(str(int(c) - 1) for c in path[where])
        out.append(Reading(text, tuple(int(t) for t in where), float(np.exp(top[i, :t_max].sum()))))
    return out


def batch_tensor(strips: Sequence[np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
    """``strip.batch_array`` as a tensor: (N, 1, HEIGHT, W) floats in [0, 1], and the widths."""
    batch, widths = batch_array(strips)
    return torch.from_numpy(batch), widths


def read_strips(net: ReaderNet, strips: Sequence[np.ndarray], batch: int = 256) -> list[Reading]:
    """Read strips (uint8 (HEIGHT, W_i)) with ``net`` in eval mode, in batches of similar widths."""
    return [greedy_decode(f)[0] for f in strip_frames(net, strips, batch)]


def save_reader(
    net: ReaderNet, config: ReaderConfig, directory: str | Path, calibration: dict[str, float] | None = None
) -> Path:
    """Write ``weights.pt`` (state_dict), ``reader_config.json`` and, when given, ``reader_calibration.json`` into
    ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(config.to_json())
    if calibration is not None:
        write_calibration(directory, calibration)
    return directory


def load_reader(directory: str | Path) -> tuple[ReaderNet, ReaderConfig]:
    """Rebuild the reader from its config and load its weights (``weights_only=True``: no pickles)."""
    directory = Path(directory)
    config = ReaderConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    net = build_reader(config)
    net.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return net.eval(), config


def line_reader(directory: str | Path) -> LineReader:
    """The served line reader from a saved folder (weights.pt, reader_config.json, reader_calibration.json)."""
    net, _ = load_reader(directory)
    net = net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def frames(strips: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(strips, dtype=np.float32))
        return net(x.contiguous(memory_format=torch.channels_last)).float().numpy()

    return LineReader.calibrated(frames, directory)


def strip_frames(net: ReaderNet, strips: Sequence[np.ndarray], batch: int = 256) -> list[np.ndarray]:
    """Each strip's per-frame log-probabilities (T_i, 11) from ``net`` (on the CPU, eval mode), in width-sorted batches."""
    net.eval()

    @torch.inference_mode()
    def frames(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).float().numpy()

    return strip.strip_frames(frames, strips, batch)

"""Numbers read by the trained line reader: pictures to strips, the reader's frames, a constrained CTC decoding.

``LineReader`` holds a frame function (strips float32 (N, 1, HEIGHT, W) in [0, 1] -> log-probabilities
(N, W // 4, 11): the torch network or its ONNX graph) and the temperature fitted on validation strips
(``ctc_calibrate``). ``read_lines`` answers as the cut reader does (``numbers.NumberReading``: text, confidence,
each digit with its confidence and box in the picture's pixels), so the endpoint's columns stay the same. The
number's confidence is its string's probability exp(-CTC loss) at that temperature; a digit's, its posterior against
its nine substitutes. ``length`` and ``pattern`` hold the decoding to readings they allow (``ctc_pattern``).
Numpy only, besides the frame function: the ONNX-backed model reads numbers without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digits.serve.ctc_decode import read_frames
from digits.serve.ctc_pattern import MAX_DIGITS, ConstraintError, compile_constraint
from digits.serve.decode import InputError
from digits.serve.numbers import DigitReading, NumberReading, read_each
from digits.serve.preprocess import ink_map
from digits.serve.strip import Placement, place, strip_frames

__all__ = ["CALIBRATION_FILE", "LineReader", "read_calibration", "read_lines", "write_calibration"]

CALIBRATION_FILE = "reader_calibration.json"  # beside the reader's weights (or its ONNX graph): its temperature
Frames = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LineReader:
    """A frame function (strips -> per-frame log-probabilities) and the temperature of its string confidence."""

    frames: Frames
    temperature: float = 1.0
    offset: float = 0.0  # strip pixels from where the reader emits a digit to the digit's centre

    @classmethod
    def calibrated(cls, frames: Frames, directory: str | Path) -> LineReader:
        """``frames`` with the calibration stored in ``directory`` (``read_calibration``)."""
        record = read_calibration(directory)
        return cls(frames, record["temperature"], record["emission_offset"])


def read_calibration(directory: str | Path) -> dict[str, float]:
    """``directory``'s ``reader_calibration.json``: ``temperature`` (1.0 when absent) and ``emission_offset`` (0.0)."""
    path = Path(directory) / CALIBRATION_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    temperature, offset = float(record.get("temperature", 1.0)), float(record.get("emission_offset", 0.0))
    if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(offset)):
        raise ValueError(f"{path}: the temperature must be a positive number and the offset finite, got {record}")
    return {"temperature": temperature, "emission_offset": offset}


def write_calibration(directory: str | Path, calibration: dict[str, float]) -> Path:
    """Write ``calibration`` (temperature, emission_offset) as ``directory``'s ``reader_calibration.json``."""
    path = Path(directory) / CALIBRATION_FILE
    path.write_text(json.dumps(calibration, indent=2))
    return path


def _strip(image: Any) -> tuple[np.ndarray, Placement]:
    ink, scale = ink_map(image)
    if not (ink > 0.05).any():
        raise InputError("no number found: the image is blank")
    return place(ink, scale)


def read_lines(
    items: Sequence[Any], reader: LineReader, length: object = None, pattern: object = None
) -> list[NumberReading]:
    """Read each picture in ``items`` as a number with ``reader``, held to ``length`` digits and/or ``pattern``.

    Malformed constraints, a blank picture, no digits read and more than ``MAX_DIGITS`` digits are an
    ``InputError`` (a 400 when served), naming the picture by its position.
    """
    compile_constraint(length=length, pattern=pattern)  # a malformed constraint: refused before any picture is read
    strips = read_each(items, _strip)
    frames = strip_frames(reader.frames, [strip for strip, _ in strips])  # similar widths share a forward pass
    return [_answer(i, strip, where, frames[i], reader, length, pattern) for i, (strip, where) in enumerate(strips)]


def _answer(
    i: int, strip: np.ndarray, where: Placement, frames: np.ndarray, reader: LineReader, length: object, pattern: object
) -> NumberReading:
    try:
        reading = read_frames(
            frames, strip, length=length, pattern=pattern, temperature=reader.temperature, offset=reader.offset
        )
    except ConstraintError as exc:
        raise InputError(f"image {i}: {exc}") from None
    if not reading.text:
        raise InputError(f"image {i}: no number found: no digits could be read in the ink")
    if len(reading.text) > MAX_DIGITS:
        raise InputError(f"image {i}: read {len(reading.text)} digits, more than the {MAX_DIGITS} a number may have")
    digits = tuple(
        DigitReading(int(c), float(p), where.to_picture(box))
        for c, p, box in zip(reading.text, reading.digit_confidences, reading.boxes)
    )
    return NumberReading(reading.text, float(reading.confidence), digits)

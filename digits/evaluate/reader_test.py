"""The served line reader judged on strips it never saw: exact match, per-digit error, its calibrated confidence,
the reject option and the boxes.

Every strip is read as the endpoint reads it (``ctc_decode.read_frames``: free decoding at the fitted temperature,
per-digit boxes and confidences), so the figures logged are the served model's. Metrics (prefix ``test_`` or
``val_``): ``number_exact_match``, ``number_cer``, ``number_ece`` (of the string's confidence),
``number_exact_at_95`` (exact match of the 95% most confident numbers: what a cheque reader that refuses 5% gets),
``number_box_hits`` (digits whose box centre is within a quarter of the true digit's width of its centre, over
the digits of the strips read with the right length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from digits.learn.reader_train import edit_distance
from digits.learn.strips import Strips
from digits.serve.ctc_calibrate import expected_calibration_error
from digits.serve.ctc_decode import NumberReading, constrained_decode, read_frames, tempered
from digits.serve.strip import STRIDE

__all__ = ["fit_emission_offset", "accuracy_at_coverage", "box_hits", "number_metrics", "read_all_strips"]


def read_all_strips(
    frames: Sequence[np.ndarray], strips: Strips, temperature: float, offset: float = 0.0
) -> list[NumberReading]:
    """Each strip read from its frames (T_i, 11) as served: free decoding, boxes and confidences at ``temperature``,
    boxes found around emissions moved by ``offset`` pixels."""
    return [read_frames(f, image, temperature=temperature, offset=offset) for f, image in zip(frames, strips.images)]


def fit_emission_offset(frames: Sequence[np.ndarray], strips: Strips, temperature: float) -> float:
    """The median distance in strip pixels from the centre of the frames that emitted a digit to the digit's true
    centre, over the strips read with the right number of digits: where this reader emits, relative to its digits
    (a convolutional reader without recurrence emits a digit about one frame left of its centre)."""
    shifts = []
    for f, text, spans in zip(frames, strips.texts, strips.spans):
        decoded = constrained_decode(tempered(f, temperature))
        if len(decoded.text) != len(text):
            continue
        for (x0, x1), (first, last) in zip(np.asarray(spans, dtype=np.float64), decoded.spans):
            shifts.append((x0 + x1) / 2 - (first + last + 1) / 2 * STRIDE)
    return float(np.median(shifts)) if shifts else 0.0


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the ``coverage`` share of answers with the highest confidence (ties: all of them kept)."""
    if not len(confidence):
        return math.nan
    keep = max(1, int(math.floor(coverage * len(confidence))))
    threshold = np.sort(confidence)[::-1][keep - 1]
    return float(correct[confidence >= threshold].mean())


def box_hits(strips: Strips, readings: Sequence[NumberReading]) -> tuple[int, int]:
    """(digits whose box centre is within a quarter of the true digit's width of the true centre, digits compared),
    over the strips read with the right number of digits (a box of a missing digit has nothing to compare with)."""
    hits = total = 0
    for spans, text, reading in zip(strips.spans, strips.texts, readings):
        if len(reading.text) != len(text):
            continue
        for (x0, x1), box in zip(np.asarray(spans, dtype=np.float64), reading.boxes):
            total += 1
            hits += abs((box[0] + box[2]) / 2 - (x0 + x1) / 2) <= (x1 - x0) / 4
    return hits, total


def number_metrics(strips: Strips, readings: Sequence[NumberReading], prefix: str = "test_") -> dict[str, float]:
    """Exact match, CER, the confidence's ECE, exact match at 95% coverage and box hits, as ``prefix`` metrics."""
    texts = [r.text for r in readings]
    correct = np.array([t == s for t, s in zip(texts, strips.texts)])
    confidence = np.array([r.confidence for r in readings])
    errors = sum(edit_distance(t, s) for t, s in zip(texts, strips.texts))
    hits, total = box_hits(strips, readings)
    return {
        f"{prefix}number_exact_match": float(correct.mean()),
        f"{prefix}number_cer": errors / max(1, sum(len(s) for s in strips.texts)),
        f"{prefix}number_ece": expected_calibration_error(confidence, correct),
        f"{prefix}number_exact_at_95": accuracy_at_coverage(confidence, correct, 0.95),
        f"{prefix}number_box_hits": hits / max(1, total),
    }

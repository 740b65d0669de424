"""Calibrating the line reader's string confidence: one temperature on the frames' logits, fitted on validation
strips by the negative log-likelihood of their true strings, and the expected calibration error (ECE) to report.

The string's confidence is exp(-CTC loss) of the reading (``ctc_decode.digit_confidences``); raw frame
posteriors sit near 1 even when wrong, a temperature above 1 spreads them. Needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from digits.serve.ctc_decode import log_likelihoods, tempered

__all__ = ["expected_calibration_error", "fit_temperature", "string_nll"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def string_nll(samples: Sequence[tuple[np.ndarray, str]], temperature: float) -> float:
    """Mean -log p(true string | frames) over ``samples`` (log-probabilities (T, 11), true digit string) at
    ``temperature``; an impossible string (too few frames) counts as a large finite loss, not infinity."""
    losses = []
    for log_probs, label in samples:
        digits = np.array([[int(c) for c in label]], np.int64).reshape(1, len(label))
        ll = float(log_likelihoods(tempered(log_probs, temperature), digits)[0])
        losses.append(-ll if math.isfinite(ll) else 1e3)
    return float(np.mean(losses))


def fit_temperature(
    samples: Sequence[tuple[np.ndarray, str]], low: float = 0.05, high: float = 20.0, tol: float = 1e-3
) -> float:
    """The temperature in [low, high] minimising ``string_nll``: a golden-section search over log(temperature)
    (the NLL is smooth and, in practice, unimodal in it). Each step scores every sample once."""
    if not samples:
        raise ValueError("fit_temperature needs at least one (log_probs, label) sample")
    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = string_nll(samples, math.exp(c)), string_nll(samples, math.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = string_nll(samples, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = string_nll(samples, math.exp(d))
    return math.exp((a + b) / 2)


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """ECE: the gap between mean confidence and accuracy in ``bins`` equal-width confidence bins, weighted by how
    many answers fall in each (Guo et al. 2017)."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(conf[inside].mean() - hit[inside].mean())
    return float(total / conf.size)

"""Temperature scaling (Guo et al. 2017): one scalar T fitted on held-out images so that softmax(z / T) means what it says.

A network trained with label smoothing and strong augmentation is under-confident (a plain 7 read at 83%); dividing
its logits by T < 1 sharpens every answer alike, so the argmax (and the accuracy) never changes. T minimises the
negative log-likelihood of held-out labels; the NLL of softmax(beta * z) is convex in beta = 1 / T, so a bounded
golden-section search on beta finds the one minimum. Pure numpy: works on any model's probabilities (the logits up to
a per-row constant are log p, which softmax ignores), so the baseline is calibrated the same way.

What is held out: a CNN with a validation split is calibrated on it; the final model, trained on train + validation,
on ``calibration_size`` validation digits left out of its training (``digits.core.config.DataConfig``).
"""

from __future__ import annotations

import math

import numpy as np

from digits.evaluate.metrics import ECE_BINS, _check, reliability_bins

T_MIN, T_MAX = 0.05, 20.0  # the search's bounds: wider than any temperature a sane classifier needs
_TINY = 1e-300  # a probability of exactly 0 (float32 underflow) as a finite log
_GOLDEN = (math.sqrt(5) - 1) / 2


def to_logits(proba: np.ndarray) -> np.ndarray:
    """Logits (float64) that give ``proba`` back under softmax: log p, a zero probability made finite."""
    return np.log(np.maximum(np.asarray(proba, dtype=np.float64), _TINY))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``proba`` recalibrated: softmax(log p / T), as float64 rows that sum to 1 (the same argmax)."""
    _check_temperature(temperature)
    return softmax(to_logits(proba) / temperature)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def fit_temperature(proba: np.ndarray, labels: np.ndarray, tol: float = 1e-4) -> float:
    """The temperature in [``T_MIN``, ``T_MAX``] that minimises the NLL of ``labels`` under ``proba`` recalibrated.

    ``proba`` (N, 10): a model's probabilities on held-out images (never the test set), ``labels`` (N,) their digits.
    """
    y, p = _check(labels, proba)
    logits = to_logits(p)
    lo, hi = 1 / T_MAX, 1 / T_MIN  # on beta = 1 / T, where the NLL is convex
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(logits, y, 1 / a), nll(logits, y, 1 / b)
    while hi - lo > tol * max(1.0, lo):
        if fa < fb:  # the minimum is left of b
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(logits, y, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(logits, y, 1 / b)
    return float(1 / ((lo + hi) / 2))


def calibration_summary(labels: np.ndarray, before: np.ndarray, temperature: float) -> dict[str, float]:
    """How the fit did on the held-out images: temperature, NLL and ECE before and after (keys ``calibration_*``)."""
    y, p = _check(labels, before)
    logits = to_logits(p)
    after = softmax(logits / temperature)
    return {
        "temperature": float(temperature),
        "calibration_images": float(len(y)),
        "calibration_nll_before": nll(logits, y),
        "calibration_nll_after": nll(logits, y, temperature),
        "calibration_ece_before": reliability_bins(y, p, ECE_BINS).ece,
        "calibration_ece_after": reliability_bins(y, after, ECE_BINS).ece,
    }


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")


def calibrate_network(network, images: np.ndarray, labels: np.ndarray, held_out: str) -> dict[str, float | str]:
    """Fit the temperature of a ``digits.serve.model.DigitCNN`` on held-out ``images`` and set it on the network.

    ``held_out`` says in words which images those are (it goes into calibration.json). Returns the summary
    (``calibration_summary``) with ``held_out``; the network then answers calibrated everywhere (evaluation,
    checkpoint, served model, ONNX export).
    """
    from digits.serve.model import predict_proba  # (evaluate may import serve; kept local: torch only when used)

    module = getattr(network, "_orig_mod", network)  # a torch.compile'd network keeps the real one here
    module.set_temperature(1.0)
    before = predict_proba(module, images)
    temperature = fit_temperature(before, labels)
    module.set_temperature(temperature)
    return {**calibration_summary(labels, before, temperature), "held_out": held_out}

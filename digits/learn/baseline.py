"""The seed project's baseline: multinomial logistic regression on pixels scaled to [0, 1]."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

MAX_ITER = 100  # lbfgs iterations at most, each one pass over the training images


def features(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 784) in [0, 1], the baseline's input."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def make_estimator(seed: int = 0, max_iter: int = MAX_ITER) -> LogisticRegression:
    """The baseline, unfitted: logistic regression, lbfgs, L2, C=1; its ``get_params()`` are the run's parameters."""
    # tol=1e-3: lbfgs reaches its accuracy plateau long before the default 1e-4 (same test accuracy, half the time).
    return LogisticRegression(max_iter=max_iter, tol=1e-3, random_state=seed)


def params(model: LogisticRegression) -> dict[str, Any]:
    """What a baseline run logs as its parameters: the estimator's class and every one of its ``get_params()``."""
    return {"model": type(model).__name__, **model.get_params()}


def predict_proba(model: LogisticRegression, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, 10), columns in digit order."""
    return model.predict_proba(features(images))


def fit_baseline_with_history(
    images: np.ndarray,
    labels: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    max_iter: int = MAX_ITER,
    block: int = 10,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[LogisticRegression, list[dict], float]:
    """Fit ``make_estimator(seed, max_iter)`` on uint8 images in blocks of ``block`` lbfgs iterations, recording the
    curves after each block; ~92% test accuracy on MNIST in seconds.

    Each lbfgs iteration is one pass over all the training images, so the curves are the baseline's epochs.
    Returns the model, one dict per block (``step`` = iterations so far, ``train_loss``, ``train_accuracy`` and,
    with ``val``, ``val_loss``, ``val_accuracy``; losses are cross-entropy without the L2 term) and the seconds
    spent fitting (the curves' own evaluation excluded). ``callback(step, metrics)`` is called after each block.
    Warm restarts cost lbfgs its curvature memory: the model needs a few more iterations than one uninterrupted
    fit and ends within about 0.1 point of its test accuracy. The returned model's ``get_params()`` are
    ``make_estimator(seed, max_iter)``'s: the fit as a whole, not its last block.
    """
    model = make_estimator(seed, max_iter).set_params(max_iter=block, warm_start=True)
    x, y = features(images), np.asarray(labels)
    parts = [("train", x, y)] + ([("val", features(val[0]), np.asarray(val[1]))] if val is not None else [])
    history: list[dict] = []
    done, seconds = 0, 0.0
    while done < max_iter:
        model.max_iter = min(block, max_iter - done)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # stopping after a block is the point
            model.fit(x, y)
        seconds += time.perf_counter() - t0
        ran = int(model.n_iter_[0])
        if ran == 0:  # already converged: a warm start from the optimum does not move
            break
        done += ran
        metrics: dict = {"step": done}
        for name, xs, ys in parts:
            proba = model.predict_proba(xs)
            picked = np.clip(proba[np.arange(len(ys)), ys], 1e-15, 1.0)
            metrics[f"{name}_loss"] = float(-np.log(picked).mean())
            metrics[f"{name}_accuracy"] = float((proba.argmax(axis=1) == ys).mean())
        history.append(metrics)
        if callback is not None:
            callback(done, {k: v for k, v in metrics.items() if k != "step"})
        if ran < model.max_iter:  # lbfgs met its tolerance inside the block
            break
    return model.set_params(max_iter=max_iter, warm_start=False), history, seconds


def requirements() -> list[str]:
    """Pinned pip requirements of the logged baseline model (what loading it needs)."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("scikit-learn", "numpy", "scipy", "mlflow")]

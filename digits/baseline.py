"""The seed project's baseline: multinomial logistic regression on pixels scaled to [0, 1]."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


def features(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 784) in [0, 1], the baseline's input."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def fit_baseline(images: np.ndarray, labels: np.ndarray, seed: int = 0, max_iter: int = 100) -> LogisticRegression:
    """Fit logistic regression (lbfgs, L2, C=1) on uint8 images; ~92% test accuracy on MNIST in seconds."""
    # tol=1e-3: lbfgs reaches its accuracy plateau long before the default 1e-4 (same test accuracy, half the time).
    model = LogisticRegression(max_iter=max_iter, tol=1e-3, random_state=seed)
    return model.fit(features(images), labels)


def predict_proba(model: LogisticRegression, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, 10), columns in digit order."""
    return model.predict_proba(features(images))

"""Evaluate a model's test-set probabilities and log the result to the active MLflow run."""

from __future__ import annotations

import mlflow
import numpy as np

from digits import metrics


def log_test_evaluation(y_true: np.ndarray, proba: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """Compute the test metrics (same keys for every model family), log them, and return them prefixed."""
    values = {prefix + k: float(v) for k, v in metrics.classification_metrics(y_true, proba).items()}
    mlflow.log_metrics(values)
    return values

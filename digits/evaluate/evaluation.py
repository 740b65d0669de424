"""Evaluate a model on the test set and log the result to MLflow: metrics, tables and figures, the same for every model.

What a model's run holds (the keys and paths are the same for the baseline, the CNN and ``digits evaluate``):

- metrics ``test_<name>`` for every name of ``metrics.METRIC_NAMES``, and ``test_errors`` (misclassified images);
- ``test_coverage_at_99``, ``test_coverage_at_99_5``, ``test_coverage_at_99_9`` (the reject option,
  ``digits.evaluate.coverage``); for a calibrated model also ``test_ece_uncalibrated`` and
  ``test_log_loss_uncalibrated`` (the same model before its temperature);
- ``evaluation/per_class.csv``, ``evaluation/top_confusions.csv``, ``evaluation/reliability_bins.csv``,
  ``evaluation/accuracy_coverage.csv`` (the curve at fixed confidence thresholds);
- ``evaluation/*.png``: the confusion matrix (counts and row-normalised), ROC curves, the reliability diagram (of the
  answers as served: calibrated when the model is; ``reliability_uncalibrated.png`` beside it), the accuracy-coverage
  curve, the misclassified test images and the training curves (see ``FIGURES``).

The exploratory figures of the training data are ``digits.evaluate.eda``'s; the ``digits evaluate`` job, which loads
any registered model, logged model or run checkpoint, is ``digits.mlops.evaluate_job``'s.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np

from digits.core.errors import DigitsError
from digits.evaluate import coverage, metrics, plots, robustness

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
FIGURES = (
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "roc.png",
    "reliability.png",
    "accuracy_coverage.png",
    "misclassified.png",
    "training_curves.png",
)
TABLES = ("per_class.csv", "top_confusions.csv", "reliability_bins.csv", "accuracy_coverage.csv")
# Set on the run that holds the EDA figures, once they are all logged: a run with these tags has all of them.
# Set on every pipeline (and evaluation) run: the run whose eda/ folder shows this run's data.
# The metric keys of the epoch curves, shared by the CNN's epoch logger and the baseline's blocks.
_MODEL_LABELS = {"cnn": "CNN", "logreg": "logistic regression"}
CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


class EvaluationError(DigitsError):
    """A model cannot be loaded or evaluated; one line for the user."""


def log_test_evaluation(
    y_true: np.ndarray,
    proba: np.ndarray,
    prefix: str = "test_",
    *,
    images: np.ndarray | None = None,
    history: list[dict] | None = None,
    family: str = "cnn",
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    reference: tuple[str, dict[str, float]] | None = None,
    uncalibrated: np.ndarray | None = None,
    robust_size: int | None = None,
) -> dict[str, float]:
    """Log the test metrics, tables and figures of ``proba`` into the active run; return the metrics, prefixed.

    ``images`` (the test images) are needed for the grid of misclassified digits, ``history`` (one dict per
    epoch, as ``train.fit`` returns) for the training curves; without them those figures are left out.
    ``family`` (``cnn`` or ``logreg``) says how to read the curves: epochs, or blocks of lbfgs iterations.
    ``predict`` (uint8 images -> probabilities) adds the robustness evaluation (``digits.evaluate.robustness``; needs
    ``images``), drawn beside ``reference`` (a name and its metrics) when given; its metrics are returned unprefixed.
    ``uncalibrated``: the model's probabilities before temperature scaling (``proba`` are after); their ECE, log loss
    and reliability diagram are logged with the suffix ``_uncalibrated``. ``robust_size``: test digits corrupted for
    the robustness evaluation (the config field; None: ``robustness.DEFAULT_SIZE``).
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba)
    values = {prefix + k: float(v) for k, v in metrics.classification_metrics(y_true, proba).items()}
    y_pred = proba.argmax(axis=1)
    values[prefix + "errors"] = float(np.sum(y_pred != y_true))  # "the same accuracy to the last image"
    values.update({prefix + k: v for k, v in coverage.coverage_metrics(y_true, proba).items()})
    if uncalibrated is not None:
        before = metrics.classification_metrics(y_true, uncalibrated)
        values.update({f"{prefix}{k}_uncalibrated": float(before[k]) for k in ("ece", "log_loss", "brier")})
    mlflow.log_metrics(values)

    _log_tables_and_figures(y_true, proba, images, history, family, uncalibrated)
    if predict is not None and images is not None:
        values.update(
            robustness.log_robustness(
                predict,
                images,
                y_true,
                label=_MODEL_LABELS.get(family, family),
                reference=reference,
                size=robust_size,
            )
        )
    return values


def _log_tables_and_figures(
    y_true: np.ndarray,
    proba: np.ndarray,
    images: np.ndarray | None,
    history: list[dict] | None,
    family: str,
    uncalibrated: np.ndarray | None,
) -> None:
    """The evaluation's tables (``TABLES``) and figures (``FIGURES``, those that apply) into ``evaluation/``."""
    y_pred = proba.argmax(axis=1)
    reliability = metrics.reliability_bins(y_true, proba)
    tables = {
        "per_class.csv": metrics.per_class_report(y_true, proba),
        "top_confusions.csv": metrics.top_confusions(y_true, y_pred, k=10),
        "reliability_bins.csv": reliability.to_frame(),
        "accuracy_coverage.csv": coverage.threshold_table(y_true, proba),
    }
    figures: dict[str, Callable] = {
        "confusion_matrix.png": lambda: plots.confusion_matrix_figure(y_true, y_pred, normalize=False),
        "confusion_matrix_normalized.png": lambda: plots.confusion_matrix_figure(y_true, y_pred, normalize=True),
        "roc.png": lambda: plots.roc_figure(y_true, proba),
        "reliability.png": lambda: plots.reliability_figure(y_true, proba),
        "accuracy_coverage.png": lambda: coverage.coverage_figure(y_true, proba),
    }
    if uncalibrated is not None:
        figures["reliability_uncalibrated.png"] = lambda: plots.reliability_figure(y_true, uncalibrated)
    if images is not None:
        figures["misclassified.png"] = lambda: plots.misclassified_figure(images, y_true, proba)
    if history:
        x_label, note = curve_labels(family, history)
        figures["training_curves.png"] = lambda: plots.training_curves_figure(history, x_label=x_label, note=note)
    with tempfile.TemporaryDirectory(prefix="digits-eval-") as tmp:
        for name, frame in tables.items():
            frame.to_csv(Path(tmp) / name, index=False)
        for name, build in figures.items():
            (Path(tmp) / name).write_bytes(plots.figure_to_png(build()))
        mlflow.log_artifacts(tmp, EVALUATION_DIR)


def curve_labels(family: str, history: list[dict]) -> tuple[str, str]:
    """The x-axis label and the caption of a training-curves figure: what the points and the series mean."""
    has_val = any("val_loss" in h or "val_accuracy" in h for h in history)
    if family == "logreg":
        x_label = "lbfgs iterations (each one pass over the training images)"
        note = "logistic regression, evaluated every 10 iterations until it converged; loss = cross-entropy without the L2 penalty"
    else:
        x_label = "epoch"
        # The train_* numbers are measured while learning, on augmented images with label smoothing: they sit
        # below the validation accuracy, which readers otherwise take for a bug.
        note = "train_*: mean over the epoch's augmented batches (loss with label smoothing)"
        note += "; val_*: after the epoch, plain images" if has_val else ""
    if not has_val:
        note += "\nno validation curves: this model trained on the training and validation images together"
    return x_label, note

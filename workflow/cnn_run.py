"""The CNN's step: trained (or retrained on train + validation as the final model), calibrated, evaluated once on the
test set, logged as the serving pyfunc (carrying the line reader when one was trained) and exported to ONNX."""

from __future__ import annotations

import functools
import logging
import tempfile
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from digits.core.config import TrainConfig
from digits.evaluate.calibration import calibrate_network
from digits.evaluate.evaluation import log_test_evaluation
from digits.evaluate.metrics import top_confusions
from digits.learn.data import MNIST, Split, stratified_order
from digits.learn.train import fit
from digits.mlops import registry, tracking
from digits.mlops.feedback_data import log_feedback_evaluation
from digits.serve.model import predict_proba, save_checkpoint
from workflow.reader_run import ReaderOutcome

log = logging.getLogger(__name__)


@dataclass
class ModelOutcome:
    """What a model's run left behind: its id, its test metrics and (for the CNN) the logged model's URI."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str | None = None
    onnx_model_uri: str | None = None  # the ONNX-backed pyfunc logged beside the final CNN
    # The card's confusion table, from the predictions in memory: no download of the CSV just logged.
    confusions: pd.DataFrame = field(default_factory=lambda: top_confusions(np.zeros(0, int), np.zeros(0, int)))


def run_cnn(
    config: TrainConfig,
    mnist: MNIST,
    split: Split,
    *,
    nested: bool,
    final: bool = False,
    reference: ModelOutcome | None = None,
    reader: ReaderOutcome | None = None,
) -> ModelOutcome:
    """Train the CNN, evaluate it once on the test set and log config, epochs, metrics and checkpoint.

    ``final``: train on the training and validation images together (the configuration was already chosen
    on validation), so no validation metrics are logged. ``reference``: the baseline, drawn beside the CNN in
    the robustness figure. ``reader``: the line reader the served models carry for ``mode=number`` (its test
    figures are logged here too, so the registry compares both); without one, numbers are read by cutting.
    """
    name, step = ("cnn-final", "final") if final else ("cnn", "train")
    with tracking.model_run(name, nested=nested, model_family="cnn", pipeline_step=step) as active:
        tracking.log_config(config)
        train_idx, held_out = training_split(config, mnist, split, final)
        tracking.log_dataset(mnist, "train", train_idx, "training")
        if not final:
            tracking.log_dataset(mnist, "train", split.val, "validation")
        tracking.log_dataset(mnist, "test", None, "testing")
        val = None if final else (mnist.train_images[split.val], mnist.train_labels[split.val])
        result = fit(
            config,
            (mnist.train_images[train_idx], mnist.train_labels[train_idx]),
            val,
            callbacks=[tracking.epoch_logger()],
        )
        mlflow.log_metrics({"train_seconds": result.seconds, "device_is_cuda": float(result.device.type == "cuda")})
        uncalibrated = predict_proba(result.model, mnist.test_images) if len(held_out) else None
        calibration = calibrate(result.model, mnist, held_out, final)
        proba = predict_proba(result.model, mnist.test_images)  # as served: with the temperature
        predict = functools.partial(predict_proba, result.model)  # the corrupted digits' and the feedback's readings
        metrics = log_test_evaluation(
            mnist.test_labels,
            proba,
            images=mnist.test_images,
            history=result.history,
            predict=predict,
            reference=("logistic regression", reference.metrics) if reference else None,
            uncalibrated=uncalibrated,
            robust_size=config.robust_size,
        )
        metrics.update(log_feedback_evaluation(config, predict))
        metrics.update(_reader_figures(reader))
        model_uri, onnx_uri = _log_served(result.model, config, calibration, mnist, proba, reader, final)
        log.info(
            "cnn: test accuracy %.2f%%, ECE %.4f (train %.1fs on %s)",
            100 * metrics["test_accuracy"],
            metrics["test_ece"],
            result.seconds,
            result.device,
        )
        confusions = top_confusions(mnist.test_labels, proba.argmax(axis=1), k=10)
        return ModelOutcome(active.info.run_id, metrics, model_uri, onnx_uri, confusions)


def _reader_figures(reader: ReaderOutcome | None) -> dict[str, float]:
    """The reader's test figures, logged on the CNN's run too: the registry compares versions on both."""
    if reader is None:
        return {}
    numbers = {k: v for k, v in reader.metrics.items() if k.startswith("test_number_")}
    mlflow.log_metrics(numbers)
    mlflow.set_tag("reader_run_id", reader.run_id)
    return numbers


def _log_served(
    network, config: TrainConfig, calibration, mnist: MNIST, proba, reader: ReaderOutcome | None, final: bool
) -> tuple[str, str | None]:
    """The checkpoint, the serving pyfunc (with the reader's folder) and, for the final model, the ONNX-backed one."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(network, config, tmp, calibration)
        mlflow.log_artifacts(tmp, "checkpoint")  # torch-only users load this folder with model.load_checkpoint
        info = registry.log_cnn_model(tmp, reader=reader.folder if reader else None)  # ready to register
    onnx_reader = reader.onnx_folder if reader is not None else None
    onnx_uri = log_onnx(network, config, mnist, proba, onnx_reader) if final else None
    return info.model_uri, onnx_uri


def training_split(config: TrainConfig, mnist: MNIST, split: Split, final: bool) -> tuple[np.ndarray, np.ndarray]:
    """The images the CNN trains on and those held out to fit its temperature (``digits.evaluate.calibration``).

    A model with a validation split trains on ``split.train`` and is calibrated on the whole validation split. The
    final model trains on train + validation except a stratified, seeded ``calibration_size`` of the validation
    digits (at most half of them), on which it is calibrated; ``calibration_size`` 0: all of them, no calibration.
    """
    if not final:
        return split.train, (split.val if config.calibration_size else np.zeros(0, np.int64))
    size = min(config.calibration_size, len(split.val) // 2)
    order = stratified_order(mnist.train_labels[split.val], config.seed + 1)  # not the split's own order
    held_out = np.sort(split.val[order[:size]])
    rest = np.setdiff1d(split.val, held_out)
    return np.sort(np.concatenate([split.train, rest])), held_out


def calibrate(network, mnist: MNIST, held_out: np.ndarray, final: bool) -> dict | None:
    """Fit and set ``network``'s temperature on the ``held_out`` training images; log and return the summary."""
    if not len(held_out):
        return None
    where = "validation digits left out of the final model's training" if final else "validation digits (all of them)"
    summary = calibrate_network(
        network, mnist.train_images[held_out], mnist.train_labels[held_out], f"{len(held_out)} {where}"
    )
    mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
    mlflow.set_tag("calibration", f"temperature applied, fitted on {summary['held_out']}")
    log.info(
        "calibration: temperature %.3f on %s (NLL %.4f -> %.4f)",
        summary["temperature"],
        summary["held_out"],
        summary["calibration_nll_before"],
        summary["calibration_nll_after"],
    )
    return summary


def log_onnx(network, config: TrainConfig, mnist: MNIST, test_proba: np.ndarray, reader_folder=None) -> str | None:
    """Export ``network`` to ONNX, check it on the test set, and log it as the ONNX-backed pyfunc in the active run.

    ``test_proba``: PyTorch's probabilities on the test images (already computed for the evaluation). Logs
    ``onnx_max_abs_diff`` and ``onnx_same_digits`` (the share of test digits ONNX Runtime reads as PyTorch
    does). A graph that does not match is not logged (tag ``onnx_export``): the torch model is registered alone.
    """
    from digits.mlops import export

    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_onnx(network, config, f"{tmp}/{export.ONNX_FILE}")
        check = export.parity(network, export.session(path), mnist.test_images, test_proba)
        mlflow.log_metrics({"onnx_max_abs_diff": check.max_abs_diff, "onnx_same_digits": float(check.same_digits)})
        if not check.ok:
            mlflow.set_tag("onnx_export", f"not logged: max |dp| {check.max_abs_diff:.2e} over {export.PARITY_ATOL:g}")
            log.warning(
                "onnx: the exported graph does not match PyTorch (max |dp| %.2e): not logged", check.max_abs_diff
            )
            return None
        mlflow.set_tag(
            "onnx_export", f"opset {export.OPSET}, max |dp| {check.max_abs_diff:.1e} on {check.images:,} test images"
        )
        log.info("onnx: exported, max |dp| %.1e on the %d test images", check.max_abs_diff, check.images)
        return registry.log_onnx_model(path, reader=reader_folder).model_uri

"""The line reader's step: trained on strips of the training digits, validated on strips of the validation digits,
logged as a run ``reader`` (the ``reader`` entry point on its own, a child run of ``main``)."""

from __future__ import annotations

import logging
import tempfile

import mlflow

from digits.core.config import ReaderConfig
from digits.learn.data import MNIST, Split
from digits.mlops import tracking

log = logging.getLogger(__name__)


def run_reader(config: ReaderConfig, mnist: MNIST, split: Split, *, nested: bool) -> tuple[str, dict[str, float]]:
    """Train the line reader on strips of the training digits, validate on strips of the validation digits, and log
    its params, per-epoch CTC loss and validation metrics, the strips as inputs, figures and weights as ``reader``."""
    from digits.evaluate import reader_eval
    from digits.learn.reader_train import fit_reader, strips_digest
    from digits.serve.reader import save_reader

    with tracking.model_run("reader", nested=nested, model_family="reader", pipeline_step="reader") as active:
        tracking.log_new_params(config.to_dict())
        mlflow.log_dict(config.to_dict(), "reader_config.json")
        for part, idx in (("training", split.train), ("validation", split.val)):
            tracking.log_array_dataset(
                mnist.train_images[idx],
                mnist.train_labels[idx],
                source=mnist.source,
                name=f"mnist-strips-{part}",
                digest=strips_digest(mnist.digest, idx, config, part),
                context=part,
            )
        train = (mnist.train_images[split.train], mnist.train_labels[split.train])
        val = (mnist.train_images[split.val], mnist.train_labels[split.val])
        result = fit_reader(config, train, val, callbacks=[tracking.epoch_logger()])
        last = result.history[-1]
        metrics = {
            "val_exact_match": last["val_exact_match"],
            "val_cer": last["val_cer"],
            "train_seconds": result.seconds,
        }
        parts = reader_eval.breakdown(result.val, result.val_readings)
        for key in ("length", "spacing"):
            metrics.update({f"val_exact_match_{key}_{k}": v for k, v in parts[key].items()})
        mlflow.log_metrics(metrics)
        mlflow.log_figure(reader_eval.samples_figure(result.val, result.val_readings), "figures/reader_samples.png")
        mlflow.log_figure(
            reader_eval.exact_match_figure(result.val, result.val_readings), "figures/reader_exact_match.png"
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_reader(result.model.cpu(), config, tmp)
            mlflow.log_artifacts(tmp, "reader")  # weights.pt (state_dict) + reader_config.json: rebuilt from code
        log.info(
            "reader: validation exact match %.2f%%, CER %.3f%% (train %.0fs on %s)",
            100 * metrics["val_exact_match"],
            100 * metrics["val_cer"],
            result.seconds,
            result.device,
        )
        return active.info.run_id, metrics

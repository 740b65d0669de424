"""The line reader's step: trained on strips of the training digits, validated on strips of the validation digits,
calibrated on them, judged once on strips of the test digits, exported to ONNX, and logged as a run ``reader`` (the
``reader`` entry point on its own, a child run of ``main``, whose served CNN then carries it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np

from digits.core.config import ReaderConfig
from digits.learn.data import MNIST, Split
from digits.mlops import tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderOutcome:
    """The reader's run, its metrics, and the folders the served models bundle (torch and ONNX)."""

    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    folder: Path | None = None  # weights.pt, reader_config.json, reader_calibration.json
    onnx_folder: Path | None = None  # reader.onnx, reader_calibration.json; None when the export failed its check


def run_reader(config: ReaderConfig, mnist: MNIST, split: Split, *, nested: bool, workdir: str | Path) -> ReaderOutcome:
    """Train the line reader on strips of the training digits, validate on strips of the validation digits, fit the
    temperature of its number confidence on them, read strips of the test digits once as served, and log it all as
    ``reader``. ``workdir``: where the bundled folders are written for the caller (who removes it)."""
    from digits.evaluate import reader_eval
    from digits.learn.reader_train import fit_reader

    with tracking.model_run("reader", nested=nested, model_family="reader", pipeline_step="reader") as active:
        tracking.log_new_params(config.to_dict())
        mlflow.log_dict(config.to_dict(), "reader_config.json")
        for part, images, labels, digest in _datasets(config, mnist, split):
            tracking.log_array_dataset(
                images, labels, source=mnist.source, name=f"mnist-strips-{part}", digest=digest, context=part
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
        mlflow.log_figure(reader_eval.samples_figure(result.val, result.val_readings), "figures/reader_samples.png")
        mlflow.log_figure(
            reader_eval.exact_match_figure(result.val, result.val_readings), "figures/reader_exact_match.png"
        )
        net = result.model.cpu().eval()
        calibration, served = _calibrate_and_test(net, config, mnist, result.val)
        metrics.update(served)
        mlflow.log_metrics(metrics)
        folder, onnx_folder = _save(net, config, calibration, Path(workdir))
        log.info(
            "reader: test exact match %.2f%% (%.2f%% of the 95%% most confident), CER %.3f%%, ECE %.4f, boxes %.2f%% "
            "(train %.0fs on %s)",
            100 * served["test_number_exact_match"],
            100 * served["test_number_exact_at_95"],
            100 * served["test_number_cer"],
            served["test_number_ece"],
            100 * served["test_number_box_hits"],
            result.seconds,
            result.device,
        )
        return ReaderOutcome(active.info.run_id, metrics, folder, onnx_folder)


def _datasets(config: ReaderConfig, mnist: MNIST, split: Split):
    from digits.learn.reader_train import strips_digest

    for part, idx in (("training", split.train), ("validation", split.val)):
        digest = strips_digest(mnist.digest, idx, config, part)
        yield part, mnist.train_images[idx], mnist.train_labels[idx], digest
    test = np.arange(len(mnist.test_labels))
    yield "testing", mnist.test_images, mnist.test_labels, strips_digest(mnist.digest, test, config, "testing")


def test_strips(config: ReaderConfig, mnist: MNIST):
    """``reader_val_strips`` strips of the test digits, seeded apart from the validation strips."""
    from digits.learn.reader_train import strip_kwargs
    from digits.learn.strips import make_strips

    rng = np.random.default_rng([config.seed, 2])
    return make_strips(mnist.test_images, mnist.test_labels, config.reader_val_strips, rng, **strip_kwargs(config))


def _calibrate_and_test(net, config: ReaderConfig, mnist: MNIST, val) -> tuple[dict[str, float], dict[str, float]]:
    """The calibration fitted on the validation strips (the confidence's temperature, the emissions' offset from their
    digits), and the served reader's figures on them and on the test strips."""
    from digits.evaluate.reader_test import fit_emission_offset, number_metrics, read_all_strips
    from digits.serve.ctc_calibrate import fit_temperature
    from digits.serve.reader import strip_frames

    val_frames = strip_frames(net, val.images)
    temperature = fit_temperature(list(zip(val_frames, val.texts)))
    offset = fit_emission_offset(val_frames, val, temperature)
    metrics = {"number_temperature": temperature, "number_emission_offset": offset}
    metrics.update(number_metrics(val, read_all_strips(val_frames, val, temperature, offset), prefix="val_"))
    test = test_strips(config, mnist)
    metrics.update(number_metrics(test, read_all_strips(strip_frames(net, test.images), test, temperature, offset)))
    return {"temperature": temperature, "emission_offset": offset}, metrics


def _save(net, config: ReaderConfig, calibration: dict[str, float], keep: Path) -> tuple[Path, Path | None]:
    """The torch folder and the ONNX folder (None when its graph fails the parity check), logged as artifacts."""
    from digits.core.errors import first_line
    from digits.mlops.reader_export import ReaderExportError, export_reader
    from digits.serve.reader import save_reader

    folder = save_reader(net, config, keep / "reader", calibration)
    mlflow.log_artifacts(str(folder), "reader")  # weights.pt (state_dict) + configs: rebuilt from code, no pickle
    try:
        onnx_folder = export_reader(net, config, keep / "reader_onnx", calibration)
    except ReaderExportError as exc:
        mlflow.set_tag("reader_onnx_export", first_line(exc))
        log.warning("reader: %s: the ONNX model reads numbers by cutting", first_line(exc))
        return folder, None
    mlflow.log_artifacts(str(onnx_folder), "reader_onnx")
    return folder, onnx_folder

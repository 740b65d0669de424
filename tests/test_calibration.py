"""Temperature scaling and the reject option: the fit, what it never changes, the curve and the checkpoint record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from digits.core.config import TrainConfig
from digits.evaluate import coverage
from digits.evaluate.calibration import apply_temperature, calibration_summary, fit_temperature, softmax
from digits.serve.model import CALIBRATION_FILE, build_model, load_checkpoint, predict_proba, save_checkpoint


def _under_confident(n: int = 4000, true_temperature: float = 0.4, seed: int = 0):
    """Probabilities softmax(z) of labels drawn from softmax(z / T): a model under-confident by ``T``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 10)) * 2.5
    truth = softmax(logits / true_temperature)
    labels = (truth.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return softmax(logits), labels


@pytest.mark.unit
def test_the_fitted_temperature_recovers_the_one_that_made_the_labels_and_lowers_nll_and_ece():
    proba, labels = _under_confident()
    temperature = fit_temperature(proba, labels)
    assert temperature == pytest.approx(0.4, rel=0.08)
    summary = calibration_summary(labels, proba, temperature)
    assert summary["calibration_nll_after"] < summary["calibration_nll_before"]
    assert summary["calibration_ece_after"] < 0.02 < summary["calibration_ece_before"]
    # An over-confident model gets T > 1.
    over, over_labels = _under_confident(true_temperature=2.0)
    assert fit_temperature(over, over_labels) > 1.5


@pytest.mark.unit
def test_calibration_never_changes_the_argmax_and_keeps_rows_summing_to_one():
    proba, _ = _under_confident(500)
    for temperature in (0.1, 0.5, 3.0):
        out = apply_temperature(proba, temperature)
        np.testing.assert_array_equal(out.argmax(1), proba.argmax(1))
        np.testing.assert_allclose(out.sum(1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(proba, 0.0)


@pytest.mark.unit
def test_the_checkpoint_stores_the_temperature_as_json_and_the_network_applies_it(tmp_path):
    torch.manual_seed(0)
    network = build_model(TrainConfig(width=4, blocks=2)).eval()
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    plain = predict_proba(network, images)
    save_checkpoint(network, TrainConfig(width=4, blocks=2), tmp_path / "plain")
    assert not (tmp_path / "plain" / CALIBRATION_FILE).exists()  # an uncalibrated folder is as before
    network.set_temperature(0.25)
    save_checkpoint(network, TrainConfig(width=4, blocks=2), tmp_path / "cal", {"held_out": "20 images"})
    record = json.loads((tmp_path / "cal" / CALIBRATION_FILE).read_text())
    assert record == {"temperature": 0.25, "held_out": "20 images"}
    loaded, _ = load_checkpoint(tmp_path / "cal")
    np.testing.assert_allclose(predict_proba(loaded, images), apply_temperature(plain, 0.25), atol=1e-5)
    assert "temperature" not in torch.load(tmp_path / "cal" / "weights.pt", weights_only=True)


@pytest.mark.unit
def test_the_accuracy_coverage_curve_keeps_the_most_confident_answers_and_ties_together():
    labels = np.array([0, 1, 2, 3, 4])
    # confidences 0.9, 0.8, 0.8, 0.6, 0.5; the 0.8 pair holds one error, the 0.5 answer is wrong.
    conf = [0.9, 0.8, 0.8, 0.6, 0.5]
    right = [True, True, False, True, False]
    proba = np.zeros((5, 10))
    for i, (c, ok) in enumerate(zip(conf, right)):
        guess = labels[i] if ok else (labels[i] + 1) % 10
        proba[i] = (1 - c) / 9
        proba[i, guess] = c
    frame = coverage.curve(labels, proba)
    assert frame["kept"].tolist() == [1, 3, 4, 5]  # the tie at 0.8 is never split
    assert frame["accuracy"].tolist() == pytest.approx([1.0, 2 / 3, 3 / 4, 3 / 5])
    assert coverage.coverage_at(frame, 0.999) == pytest.approx(0.2)
    assert coverage.coverage_at(frame, 0.7) == pytest.approx(0.8)
    table = coverage.threshold_table(labels, proba, thresholds=(0.0, 0.85, 0.95))
    assert table["kept"].tolist() == [5, 1, 0] and np.isnan(table["accuracy"].iloc[2])
    assert isinstance(coverage.coverage_figure(labels, proba), object)


@pytest.mark.unit
def test_min_confidence_in_the_answer_and_its_one_line_refusals():
    from mlflow.exceptions import MlflowException

    from digits.serve.answers import answer

    pixels = np.zeros((28, 28), np.uint8)
    pixels[8:20, 12:16] = 220
    frame = pd.DataFrame({"image": [pixels.tolist()] * 2})
    proba = np.array([[0.95] + [0.05 / 9] * 9, [0.5, 0.4] + [0.1 / 8] * 8])
    out = answer(frame, lambda images: proba[: len(images)], {"min_confidence": 0.9})
    assert out["digit"].tolist() == [0, -1] and out["unsure"].tolist() == [False, True]
    assert out["confidence"].tolist() == pytest.approx([0.95, 0.5])
    assert "unsure" not in answer(frame, lambda images: proba[: len(images)], {"min_confidence": 0.0})
    for bad in ("0.9", True, 1.01, -0.5, float("nan")):
        with pytest.raises(MlflowException) as info:
            answer(frame, lambda images: proba[: len(images)], {"min_confidence": bad})
        assert info.value.get_http_status_code() == 400
        assert info.value.message.startswith("the param 'min_confidence' must be a number from 0 to 1, got ")

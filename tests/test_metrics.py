"""digits.evaluate.metrics against values computed by hand on tiny examples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from digits.evaluate.metrics import (
    METRIC_NAMES,
    classification_metrics,
    confusion_counts,
    per_class_report,
    per_class_roc_auc,
    reliability_bins,
    top_confusions,
)

pytestmark = pytest.mark.unit


def _onehot(y: np.ndarray) -> np.ndarray:
    return np.eye(10)[y]


def _row(**probs: float) -> list[float]:
    """A probability row from digit=probability keywords, e.g. _row(d0=0.7, d1=0.3)."""
    row = [0.0] * 10
    for key, value in probs.items():
        row[int(key[1:])] = value
    return row


# Four samples whose every number is easy to work out by hand (confidences avoid the 1/15 bin edges):
#   y=0 p0=.70 p1=.20 p2=.10  right, confidence .70, sum of squares .09+.04+.01 = .14
#   y=1 p0=.65 p1=.35         wrong (0), confidence .65, .4225+.4225 = .845
#   y=2 p2=1                  right, confidence 1, 0
#   y=2 p2=.10 p3=.90         wrong (3), confidence .90, .81+.81 = 1.62
HAND_Y = np.array([0, 1, 2, 2])
HAND_P = np.array([_row(d0=0.7, d1=0.2, d2=0.1), _row(d0=0.65, d1=0.35), _row(d2=1.0), _row(d2=0.1, d3=0.9)])


def test_keys_are_exactly_the_documented_unprefixed_names():
    rng = np.random.default_rng(0)
    y = np.arange(50) % 10
    p = rng.dirichlet(np.ones(10), size=50)
    result = classification_metrics(y, p)
    assert (
        set(result)
        == set(METRIC_NAMES)
        == {
            "accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "roc_auc",
            "log_loss",
            "brier",
            "rmse",
            "ece",
        }
    )
    assert all(isinstance(v, float) for v in result.values())


def test_perfect_predictions():
    y = np.arange(30) % 10
    result = classification_metrics(y, _onehot(y))
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"):
        assert result[key] == pytest.approx(1.0), key
    assert result["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert result["brier"] == 0.0
    assert result["rmse"] == 0.0
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)


def test_uniform_probabilities():
    y = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])  # 2 of 12 are digit 0, which argmax of a uniform row picks
    result = classification_metrics(y, np.full((len(y), 10), 0.1))
    # Brier: (1 - 0.1)^2 + 9 * 0.1^2 = 0.81 + 0.09 per sample.
    assert result["brier"] == pytest.approx(0.9)
    assert result["rmse"] == pytest.approx(math.sqrt(0.09))
    assert result["log_loss"] == pytest.approx(math.log(10))
    assert result["roc_auc"] == pytest.approx(0.5)  # every score ties
    assert result["accuracy"] == pytest.approx(2 / 12)
    assert result["ece"] == pytest.approx(abs(2 / 12 - 0.1))


def test_hand_computed_example():
    result = classification_metrics(HAND_Y, HAND_P)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["brier"] == pytest.approx((0.14 + 0.845 + 0 + 1.62) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt((0.14 + 0.845 + 0 + 1.62) / 40))
    assert result["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.35) + math.log(1.0) + math.log(0.1)) / 4)
    # One sample per bin: ECE = mean |correct - confidence|.
    assert result["ece"] == pytest.approx((0.3 + 0.65 + 0.0 + 0.9) / 4)
    # Digits in y or predicted: 0, 1, 2, 3. Precision 1/2, 0 (never predicted), 1, 0; recall 1, 0, 1/2, 0 (absent).
    assert result["macro_precision"] == pytest.approx(0.375)
    assert result["macro_recall"] == pytest.approx(0.375)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0 + 2 / 3 + 0) / 4)
    # AUC of digits 0 and 1 is 1; digit 2: positives 1.0 and 0.1 against negatives 0.1 and 0 -> (1 + 1 + 0.5 + 1) / 4.
    assert per_class_roc_auc(HAND_Y, HAND_P) == pytest.approx({0: 1.0, 1: 1.0, 2: 0.875})
    assert result["roc_auc"] == pytest.approx((1 + 1 + 0.875) / 3)


def test_rmse_is_root_of_brier_over_ten():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(10, 0.3), size=200)
    y = rng.integers(0, 10, size=200)
    result = classification_metrics(y, p)
    assert result["rmse"] == pytest.approx(math.sqrt(result["brier"] / 10))


def test_batch_missing_classes_still_works():
    y = np.array([3, 3, 5, 5, 5])
    p = np.array(
        [_row(d3=0.8, d5=0.2), _row(d3=0.6, d5=0.4), _row(d5=0.9, d3=0.1), _row(d5=0.7, d0=0.3), _row(d5=0.5, d3=0.5)]
    )
    result = classification_metrics(y, p)
    assert all(math.isfinite(v) for v in result.values())
    assert result["accuracy"] == pytest.approx(0.8)  # the 0.5/0.5 tie goes to digit 3
    # Only digits 3 and 5 are scored, not the eight absent ones; both separate perfectly on their own column.
    assert per_class_roc_auc(y, p) == {3: 1.0, 5: 1.0}
    assert result["roc_auc"] == 1.0
    # Macro over digits 3 and 5 only: recall 2/2 and 2/3 (a digit in neither y nor the predictions does not count as 0).
    assert result["macro_recall"] == pytest.approx((1 + 2 / 3) / 2)


def test_single_class_has_undefined_auc_but_other_metrics():
    y = np.array([7, 7, 7])
    result = classification_metrics(y, _onehot(y))
    assert math.isnan(result["roc_auc"])
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0


def test_float32_softmax_rows_do_not_warn():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(100, 10)).astype(np.float32) * 4
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. scikit-learn's "y_prob values do not sum to one"
        classification_metrics(rng.integers(0, 10, 100), p)


@pytest.mark.parametrize(
    "y, p, match",
    [
        (np.array([0, 1]), np.full((2, 9), 1 / 9), "shape"),
        (np.array([0, 1, 2]), np.full((2, 10), 0.1), "3 labels"),
        (np.array([0, 10]), np.full((2, 10), 0.1), "digits"),
        (np.array([], dtype=int), np.zeros((0, 10)), "no samples"),
    ],
)
def test_bad_input_is_a_clear_error(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)


def test_per_class_report():
    report = per_class_report(HAND_Y, HAND_P)
    assert list(report.columns) == ["digit", "precision", "recall", "f1", "support"]
    assert report["digit"].tolist() == list(range(10))
    assert report["support"].tolist() == [1, 1, 2, 0, 0, 0, 0, 0, 0, 0]
    assert report["precision"].tolist()[:4] == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert report["recall"].tolist()[:4] == pytest.approx([1.0, 0.0, 0.5, 0.0])


def test_macro_metrics_are_the_mean_of_the_report_over_present_digits():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, size=300)
    p = rng.dirichlet(np.ones(10), size=300)
    p[np.arange(300), y] += 1.5  # make it a decent classifier
    p /= p.sum(1, keepdims=True)
    report = per_class_report(y, p)
    result = classification_metrics(y, p)
    assert result["macro_precision"] == pytest.approx(report["precision"].mean())
    assert result["macro_recall"] == pytest.approx(report["recall"].mean())
    assert result["macro_f1"] == pytest.approx(report["f1"].mean())
    assert report["support"].sum() == 300


def test_top_confusions_order_and_ties():
    pairs = [(4, 9)] * 3 + [(7, 1)] * 2 + [(3, 5)] * 2 + [(1, 7)] + [(d, d) for d in range(10)] * 5
    y_true, y_pred = (np.array(v) for v in zip(*pairs))
    table = top_confusions(y_true, y_pred)
    assert list(table.columns) == ["true", "predicted", "count"]
    # The diagonal never appears; ties (count 2) in (true, predicted) order.
    assert table.values.tolist() == [[4, 9, 3], [3, 5, 2], [7, 1, 2], [1, 7, 1]]
    assert top_confusions(y_true, y_pred, k=2).values.tolist() == [[4, 9, 3], [3, 5, 2]]


def test_top_confusions_without_mistakes_is_empty():
    y = np.arange(10)
    table = top_confusions(y, y)
    assert table.empty and list(table.columns) == ["true", "predicted", "count"]


def test_reliability_bins():
    rel = reliability_bins(HAND_Y, HAND_P, bins=15)
    assert len(rel.edges) == 16 and rel.edges[0] == 0 and rel.edges[-1] == 1
    assert rel.count.sum() == 4
    # Confidence 1.0 belongs to the last bin, (14/15, 1].
    assert rel.count[14] == 1 and rel.accuracy[14] == 1.0 and rel.confidence[14] == 1.0
    assert np.flatnonzero(rel.count).tolist() == [9, 10, 13, 14]  # 0.65, 0.70, 0.90, 1.0
    assert np.isnan(rel.accuracy[0]) and np.isnan(rel.confidence[0])  # empty bins are NaN, not 0
    assert rel.ece == pytest.approx(classification_metrics(HAND_Y, HAND_P)["ece"])
    frame = rel.to_frame()
    assert list(frame.columns) == ["lower", "upper", "count", "confidence", "accuracy"] and len(frame) == 15


def test_reliability_bins_pool_within_a_bin():
    # Two samples in the same bin (confidence 0.95 and 0.97), one right and one wrong: gap |0.5 - 0.96|.
    y = np.array([0, 1])
    p = np.array([_row(d0=0.95, d1=0.05), _row(d0=0.97, d1=0.03)])
    rel = reliability_bins(y, p, bins=10)
    assert rel.count[9] == 2
    assert rel.accuracy[9] == pytest.approx(0.5)
    assert rel.confidence[9] == pytest.approx(0.96)
    assert rel.ece == pytest.approx(0.46)


def test_confusion_counts():
    matrix = confusion_counts(np.array([0, 0, 9, 9, 9]), np.array([0, 9, 9, 9, 0]))
    assert matrix.shape == (10, 10) and matrix.sum() == 5
    assert matrix[0, 0] == 1 and matrix[0, 9] == 1 and matrix[9, 9] == 2 and matrix[9, 0] == 1
    assert confusion_counts(np.array([], dtype=int), np.array([], dtype=int)).sum() == 0

"""Issue 12: the corruptions, the robustness evaluation, the robust augmentation, and real-world pictures read
close to the MNIST digit they were made from."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from digits.core.config import ConfigError, TrainConfig
from digits.core.errors import DigitsError
from digits.evaluate import corruptions, robustness
from digits.learn import render
from digits.learn.augment import augment
from digits.serve.preprocess import to_mnist
from tests.conftest import fake_digits


def strokes(n: int = 12) -> np.ndarray:
    """Digit-like images without MNIST: a ring or a bar per image, anti-aliased, light ink on black."""
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        if i % 2:
            out[i] = np.clip(2.5 - np.abs(np.hypot(yy - 14, xx - 13.5) - 7 - i % 3), 0, 1)
        else:
            out[i] = np.clip(2.0 - np.abs(xx - 14 - 0.2 * (yy - 14) - i % 3), 0, 1) * ((yy > 4) & (yy < 24))
    return np.rint(out * 255).astype(np.uint8)


@pytest.mark.unit
@pytest.mark.parametrize("name", corruptions.names())
def test_each_corruption_is_deterministic_per_seed_and_changes_the_image(name):
    images = strokes()
    a, b = corruptions.corrupt(name, images, seed=0), corruptions.corrupt(name, images, seed=0)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, b)
    changed = np.abs(a.astype(int) - images).mean(axis=(1, 2))
    assert (changed > 1.0).all(), f"{name} left an image (almost) as it was: {changed.min():.2f}"
    if name not in (
        "scale_60",
        "scale_140",
        "thin_1",
        "thin_2",
        "thick_1",
        "thick_2",
        "blur_07",
        "blur_12",
        "contrast_40",
        "contrast_20",
        "invert",
        "jpeg_20",
    ):
        assert not np.array_equal(a, corruptions.corrupt(name, images, seed=1)), f"{name} ignores its seed"


@pytest.mark.unit
def test_unknown_corruption_is_refused():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corruptions.corrupt("fog", strokes())


@pytest.mark.unit
def test_every_family_has_a_mild_severity_and_both_kinds_exist():
    families = {c.family for c in corruptions.CORRUPTIONS.values()}
    assert families >= {
        "rotate",
        "shear",
        "scale",
        "shift",
        "thin",
        "thick",
        "noise",
        "salt_pepper",
        "blur",
        "contrast",
        "invert",
        "jpeg",
        "canvas",
        "photo",
    }
    assert all(any(c.mild for c in corruptions.CORRUPTIONS.values() if c.family == f) for f in families)
    assert {c.kind for c in corruptions.CORRUPTIONS.values()} == {"array", "image"}


@pytest.mark.unit
def test_robustness_table_and_metrics_measure_the_model(monkeypatch):
    images, labels = fake_digits(200, np.random.default_rng(0))
    truth = {images[i].tobytes(): labels[i] for i in range(len(labels))}

    def oracle(x: np.ndarray) -> np.ndarray:  # right on an unchanged image, wrong (class 0 vs label) otherwise
        p = np.zeros((len(x), 10))
        for i, image in enumerate(x):
            p[i, truth.get(image.tobytes(), (labels[0] + 1) % 10)] = 1
        return p

    table = robustness.robustness_table(oracle, images, labels, size=50)
    assert list(table["corruption"]) == corruptions.names()
    assert (table["n"] == 50).all() and table["accuracy"].between(0, 1).all()
    values = robustness.robust_metrics(table)
    assert values["robust_mean_accuracy"] == pytest.approx(table["accuracy"].mean())
    assert set(values) == {f"robust_{n}_accuracy" for n in corruptions.names()} | {"robust_mean_accuracy"}
    perfect = robustness.robustness_table(
        lambda x: np.eye(10)[np.zeros(len(x), int)], images, np.zeros(200, np.uint8), size=50
    )
    assert (perfect["accuracy"] == 1).all()


@pytest.mark.unit
@pytest.mark.parametrize(
    "size, n_test, expected", [(None, 10000, robustness.DEFAULT_SIZE), (300, 10000, 300), (50000, 1000, 1000)]
)
def test_sample_size_is_the_config_field_capped_at_the_test_set(size, n_test, expected):
    assert robustness.sample_size(n_test, size) == expected


@pytest.mark.unit
def test_robust_size_is_a_validated_config_field_not_an_environment_variable(monkeypatch):
    from digits.core.config import ConfigError, DataConfig

    monkeypatch.setenv("DIGITS_ROBUST_SIZE", "40")  # the old variable changes nothing any more
    assert robustness.sample_size(10000, DataConfig().robust_size) == 2000
    with pytest.raises(ConfigError, match="robust_size must be an integer from 10 to 10000, got 5"):
        DataConfig(robust_size=5).validate()
    with pytest.raises(DigitsError, match="robust_size"):
        robustness.sample_size(10000, 5)


@pytest.mark.unit
def test_log_robustness_logs_metrics_table_and_figure(tracking_uri):
    images, labels = fake_digits(100, np.random.default_rng(0))
    guess = lambda x: np.full((len(x), 10), 0.1)  # noqa: E731
    with mlflow.start_run() as run:
        values = robustness.log_robustness(
            guess, images, labels, label="CNN", reference=("baseline", {"robust_rotate_15_accuracy": 0.5}), size=40
        )
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["robust_mean_accuracy"] == values["robust_mean_accuracy"]
    assert "robust_canvas_accuracy" in logged and "robust_photo_accuracy" in logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/robustness.csv", "evaluation/robustness.png"}


@pytest.mark.unit
def test_robust_augmentation_is_seeded_bounded_and_on_the_batch_device():
    x = torch.from_numpy(strokes(32)).unsqueeze(1).float() / 255
    a = augment(x, 0.5, "robust", torch.Generator().manual_seed(0))
    b = augment(x, 0.5, "robust", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.device == x.device and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) > 0.02
    assert augment(x, 0.0, "robust") is x
    stronger = (augment(x, 1.0, "robust", torch.Generator().manual_seed(0)) - x).abs().mean()
    assert float(stronger) > float((a - x).abs().mean())  # the strength the search tunes really scales it
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        augment(x, 0.5, "fancy")


@pytest.mark.unit
def test_augment_policy_is_validated():
    with pytest.raises(ConfigError, match="augment_policy must be one of robust, affine"):
        TrainConfig(augment_policy="fancy").validate()


@pytest.mark.data
def test_thin_drawing_and_grey_photo_preprocess_close_to_the_mnist_original(mnist):
    rng = np.random.default_rng(0)
    images = mnist.test_images[:60]
    baseline = np.array(
        [np.abs(to_mnist(d).astype(float) - d).mean() for d in images]
    )  # the MNIST digit itself, re-framed
    for kind in ("canvas", "photo"):
        diffs = np.array([np.abs(to_mnist(getattr(render, kind)(d, rng)).astype(float) - d).mean() for d in images])
        # Mean absolute difference in grey levels of 255: about 17 for the digit itself, 18 drawn, 25 photographed.
        assert diffs.mean() < baseline.mean() + 12, (kind, diffs.mean(), baseline.mean())
        assert np.percentile(diffs, 90) < 45, (kind, np.percentile(diffs, 90))


@pytest.mark.unit
def test_thinning_keeps_a_stroke_s_connections_and_leaves_a_one_pixel_line():
    from scipy import ndimage

    yy, xx = np.mgrid[0:60, 0:60]
    ring = (np.hypot(yy - 30, xx - 30) < 20) & (np.hypot(yy - 30, xx - 30) > 11)  # a thick 0
    bar = np.zeros((60, 60), bool)
    bar[10:50, 25:34] = True  # a thick 1
    for mask, holes in ((ring, 1), (bar, 0)):
        line = render.thin(mask)
        assert line.sum() < mask.sum() / 4 and (line <= mask).all()
        assert ndimage.label(line, structure=np.ones((3, 3)))[1] == 1  # still one stroke
        assert ndimage.label(~line)[1] - 1 == holes  # the 0 keeps its hole, the 1 gains none
    # A row of thin horizontal 3-px-wide strokes: no pixel keeps more than two line neighbours along a bar.
    assert render.thin(bar)[20:40, 25:34].sum(axis=1).max() == 1


@pytest.mark.data
def test_a_drawn_number_has_as_many_strokes_as_its_ink(mnist):
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    strips = [np.concatenate(list(mnist.test_images[k : k + 5]), axis=1) for k in range(0, 20, 5)]
    drawn = sum(ndimage.label(render.canvas(s, np.random.default_rng(0)) < 128, structure=eight)[1] for s in strips)
    ink = sum(ndimage.label(render.upscale(s, render.CANVAS_SCALE) > 0.5, structure=eight)[1] for s in strips)
    assert drawn == ink  # 21 pieces for 20 digits (the distance-transform ridge drew 29)

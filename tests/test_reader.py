"""The line reader (issue 29): synthetic number strips, CTC decoding, its config, and the `-e reader` run."""

import numpy as np
import pytest

from digits.core.config import ConfigError, ReaderConfig
from digits.learn.strips import draw_strings, make_strips, warp_glyphs
from digits.serve.reader import BLANK, HEIGHT, ReaderNet, frames_for, greedy_decode, load_reader, save_reader


def _digits(n_per_class: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky fake digits: digit d is a bar of width 4 + d (enough to lay out and render, no MNIST needed)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for d in range(10):
        for _ in range(n_per_class):
            img = np.zeros((28, 28), np.uint8)
            img[4:24, 10 : 14 + d // 2] = rng.integers(180, 256)
            images.append(img)
            labels.append(d)
    return np.stack(images), np.array(labels)


@pytest.mark.unit
def test_strips_are_deterministic_per_seed_and_leave_the_source_digits_untouched():
    images, labels = _digits()
    before = images.copy()
    a = make_strips(images, labels, 12, np.random.default_rng(3), render_share=0.5)
    b = make_strips(images, labels, 12, np.random.default_rng(3), render_share=0.5)
    c = make_strips(images, labels, 12, np.random.default_rng(4), render_share=0.5)
    assert a.texts == b.texts and all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    assert a.texts != c.texts
    assert np.array_equal(images, before)


@pytest.mark.unit
def test_strips_keep_every_digit_inside_and_record_its_span():
    images, labels = _digits()
    strips = make_strips(images, labels, 40, np.random.default_rng(0), render_share=0.0, overlap=0.35)
    for image, text, spans, gaps in zip(strips.images, strips.texts, strips.spans, strips.gaps):
        assert image.shape[0] == HEIGHT and image.dtype == np.uint8
        assert len(spans) == len(text) and len(gaps) == len(text) - 1
        assert (spans[:, 0] >= 0).all() and (spans[:, 1] <= image.shape[1]).all()
        assert (spans[:, 1] > spans[:, 0]).all() and (np.diff(spans[:, 0]) > 0).all()  # left to right
        # The ink under each span is its digit's bar.
        for x0, x1 in spans:
            assert image[:, int(np.floor(x0)) : int(np.ceil(x1))].max() > 100
        ink_cols = np.flatnonzero(image.max(axis=0) > 0)
        assert ink_cols[0] >= spans[:, 0].min() - 1.5 and ink_cols[-1] <= spans[:, 1].max() + 1.5
        assert (gaps >= -0.35 - 1e-6).all()


@pytest.mark.unit
def test_strings_are_uniform_with_repeats_over_represented():
    strings = draw_strings(4000, np.random.default_rng(0), range(1, 13))
    lengths = np.array([len(s) for s in strings])
    assert set(lengths) == set(range(1, 13))
    flat = np.concatenate(strings)
    assert np.bincount(flat, minlength=10).min() > 0.08 * len(flat)
    repeats = np.mean(np.concatenate([s[1:] == s[:-1] for s in strings if len(s) > 1]))
    assert repeats > 0.2  # uniform digits would repeat 10% of the time


@pytest.mark.unit
def test_glyph_warp_keeps_ink_in_frame():
    images, _ = _digits()
    warped = warp_glyphs(images, np.random.default_rng(0))
    assert warped.shape[1:] == (40, 40) and warped.max() <= 1
    assert (warped[:, 0, :].max() == 0) and (warped[:, :, 0].max() == 0)


def _one_hot_path(path: list[int], classes: int = 11) -> np.ndarray:
    log_probs = np.full((len(path), classes), -20.0)
    log_probs[np.arange(len(path)), path] = 0.0
    return log_probs


@pytest.mark.unit
def test_greedy_decoding_needs_a_blank_between_repeated_digits():
    b = BLANK
    # "00" is 1,1 with a blank between; 1,1,1 without one is a single 0; "111" needs two blanks.
    readings = greedy_decode(
        np.stack(
            [
                _one_hot_path([b, 1, 1, b, 1, b, b, b, b]),
                _one_hot_path([b, 1, 1, 1, b, b, b, b, b]),
                _one_hot_path([2, b, 2, 2, b, 2, b, 10, 10]),
            ]
        )
    )
    assert [r.text for r in readings] == ["00", "0", "1119"]
    assert readings[0].frames == (1, 4)
    assert greedy_decode(_one_hot_path([b, 3, b, 4]), [2])[0].text == "2"  # frames past the length are padding


@pytest.mark.unit
def test_reader_net_emits_a_frame_per_four_pixels_and_round_trips_its_checkpoint(tmp_path):
    net = ReaderNet(width=4).eval()
    out = net(__import__("torch").zeros(2, 1, HEIGHT, 96))
    assert tuple(out.shape) == (2, frames_for(96), 11) == (2, 24, 11)
    config = ReaderConfig(reader_width=4)
    save_reader(net, config, tmp_path)
    loaded, loaded_config = load_reader(tmp_path)
    assert loaded_config == config
    assert all((a == b).all() for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reader_lr", -1.0, "reader_lr must be a number in (0, 1], got -1.0"),
        ("reader_max_length", 13, "reader_max_length must be an integer from 1 to 12, got 13"),
        ("reader_overlap", 0.9, "reader_overlap must be in [0, 0.6], got 0.9"),
        ("reader_strips", 0, "reader_strips must be an integer from 16 to 10000000, got 0"),
    ],
)
def test_bad_reader_config_is_one_line(field, value, message):
    with pytest.raises(ConfigError) as info:
        ReaderConfig(**{field: value}).validate()
    assert str(info.value) == message and "\n" not in str(info.value)


@pytest.mark.unit
def test_bad_reader_flag_is_one_line_and_exit_2(capsys):
    from workflow.cli import main

    assert main(["reader", "--reader_width", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "digits reader: error: reader_width must be an integer from 4 to 256, got 2"


@pytest.mark.data
def test_rendered_mnist_strips_keep_their_spans_on_their_ink(mnist):
    strips = make_strips(mnist.test_images, mnist.test_labels, 30, np.random.default_rng(0), render_share=1.0)
    assert {"canvas", "photo"} <= set(strips.renderers)
    for image, spans in zip(strips.images, strips.spans):
        assert (spans[:, 0] >= 0).all() and (spans[:, 1] <= image.shape[1]).all()
        centres = ((spans[:, 0] + spans[:, 1]) / 2).astype(int)
        assert (image[:, np.clip(centres - 2, 0, None)].max(axis=0) + image[:, centres + 1].max(axis=0) > 0).all()


@pytest.mark.e2e
def test_mlflow_run_reader_logs_metrics_figures_and_model(mnist_dir, tracking_uri):
    import mlflow

    from tests.test_e2e_mlflow import mlflow_run

    params = {"subset": 1000, "val_size": 500, "data_dir": mnist_dir, "device": "cpu", "reader_epochs": 2}
    mlflow_run("reader", {**params, "reader_strips": 64, "reader_val_strips": 20, "reader_workers": 0})
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.tags["model_family"] == "reader"
    assert run.data.params["reader_strips"] == "64"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "ctc_loss")] == [1, 2]
    assert {"val_exact_match", "val_cer", "val_exact_match_length_1"} <= set(run.data.metrics) or {
        "val_exact_match",
        "val_cer",
    } <= set(run.data.metrics)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {
        "mnist-strips-training",
        "mnist-strips-validation",
        "mnist-strips-testing",
    }
    # Calibrated on the validation strips, read once on test strips as served, exported to ONNX beside the weights.
    for key in ("test_number_exact_match", "test_number_ece", "test_number_exact_at_95", "test_number_box_hits"):
        assert 0 <= run.data.metrics[key] <= 1, key
    assert run.data.metrics["number_temperature"] > 0
    onnx = {a.path for a in client.list_artifacts(run.info.run_id, "reader_onnx")}
    assert onnx == {"reader_onnx/reader.onnx", "reader_onnx/reader_calibration.json"}
    names = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/reader_samples.png", "figures/reader_exact_match.png"} <= names
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reader")
    net, config = load_reader(local)
    assert config.reader_strips == 64 and isinstance(net, ReaderNet)


@pytest.mark.unit
def test_reader_space_fills_a_valid_reader_config():
    import optuna

    from tuning.space import READER_SPACE, suggest_reader_config

    base = ReaderConfig()
    lows = {p.name: p.bounds_for("adamw")[0] for p in READER_SPACE}
    config = suggest_reader_config(optuna.trial.FixedTrial(lows), base)
    config.validate()
    assert {p.name: getattr(config, p.name) for p in READER_SPACE} == lows
    assert config.replace(**{p.name: getattr(base, p.name) for p in READER_SPACE}) == base


@pytest.mark.unit
def test_a_rendering_the_served_path_reads_as_blank_falls_back_to_the_ink():
    # A faint line can render to a picture in which ink_map finds no digit: the strip maker must not stop training.
    from digits.learn.strips import _render

    line = np.zeros((32, 60), np.float32)
    for renderer in ("canvas", "photo"):
        found, ratio = _render(line, renderer, np.random.default_rng(0))
        assert ratio == 1.0 and found is line

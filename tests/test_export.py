"""digits/export.py: the ONNX graph computes what the network does, from raw pixels, at any batch size."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from digits.core.config import TrainConfig
from digits.mlops import export
from digits.serve.model import build_model, predict_proba, save_checkpoint
from tests.conftest import ROOT, digits_command


def tiny_network(seed: int = 0):
    torch.manual_seed(seed)
    config = TrainConfig(width=4, blocks=2)
    network = build_model(config).eval()
    with torch.no_grad():  # batch norms with non-trivial statistics, so folding them is tested too
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return network, config


@pytest.mark.unit
def test_the_graph_takes_raw_pixels_at_any_batch_size_and_matches_pytorch(tmp_path):
    network, config = tiny_network()
    path = export.export_onnx(network, config, tmp_path / "m.onnx")
    session = export.session(path)
    (given,), (answer,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("pixels", "tensor(uint8)", [28, 28]) and not isinstance(
        given.shape[0], int
    )
    assert (answer.name, answer.type, answer.shape[1:]) == ("probabilities", "tensor(float)", [10])
    rng = np.random.default_rng(1)
    for n in (1, 3, 257):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        got = export.onnx_probabilities(session, images)
        np.testing.assert_allclose(got, predict_proba(network, images), atol=export.PARITY_ATOL)
        np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    check = export.parity(network, session, rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    assert check.ok and check.images == 64 and check.max_abs_diff < 1e-5
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["digits_config"]) == config.to_dict() and "uint8" in metadata["input"]


@pytest.mark.unit
def test_a_graph_that_computes_something_else_fails_the_parity_check(tmp_path):
    network, config = tiny_network(0)
    other, _ = tiny_network(1)
    session = export.session(export.export_onnx(other, config, tmp_path / "other.onnx"))
    check = export.parity(network, session, np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8))
    assert not check.ok and check.max_abs_diff > export.PARITY_ATOL


@pytest.mark.unit
def test_export_model_writes_the_graph_and_config_from_a_checkpoint(tmp_path):
    network, config = tiny_network()
    checkpoint = save_checkpoint(network, config, tmp_path / "ckpt")
    done = export.export_model(str(checkpoint), tmp_path / "out")
    assert done.path == tmp_path / "out" / "model.onnx" and done.parity.ok and done.parity.images == 512
    assert done.int8_path is None and done.accuracy is None and not (tmp_path / "out" / "model.int8.onnx").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == config.to_dict()


@pytest.mark.data
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model_uri", "models:/no-such-model@champion"],
            "digits export: error: cannot load the model models:/no-such-model@champion",
        ),
        (["--format", "tflite"], "digits export: error: --format must be onnx, got 'tflite'"),
    ],
)
def test_digits_export_refuses_bad_input_in_one_line(tmp_path, tracking_uri, args, message):
    result = subprocess.run(
        digits_command("export", "--out", str(tmp_path / "out"), *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
    assert not (tmp_path / "out").exists()


@pytest.mark.data
def test_a_trained_network_exports_with_parity_on_the_whole_test_set_and_int8_by_the_rule(mnist, tmp_path):
    from digits.learn.data import split_train_val
    from digits.learn.train import fit

    config = TrainConfig(epochs=1, subset=10000, device="cpu")
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    network = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
    done = export.export_model(str(save_checkpoint(network, config, tmp_path / "ckpt")), tmp_path / "out", mnist)
    assert done.parity.images == 10_000 and done.parity.same_digits and done.parity.max_abs_diff <= export.PARITY_ATOL
    accuracy = done.accuracy
    assert accuracy["torch"] > 0.9 and abs(accuracy["onnx"] - accuracy["torch"]) < 1e-9  # identical digits
    kept = accuracy["onnx"] - accuracy["int8"] <= export.INT8_MAX_DROP
    assert (done.int8_path is not None) == kept == (tmp_path / "out" / "model.int8.onnx").exists()
    if kept:  # a quarter of the size, the same input and output
        assert (tmp_path / "out" / "model.int8.onnx").stat().st_size < 0.5 * done.path.stat().st_size
        probabilities = export.onnx_probabilities(export.session(done.int8_path), mnist.test_images[:100])
        assert probabilities.shape == (100, 10)

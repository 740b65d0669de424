import math

import numpy as np
import pytest
import torch

from digits.core.config import ConfigError, TrainConfig
from digits.learn import train as train_module
from digits.learn.data import read_mnist_dir
from digits.learn.train import NonFiniteLossError, evaluate, fit, lr_factor, resolve_device
from digits.serve.model import (
    MAX_BATCH,
    batched_logits,
    build_model,
    load_checkpoint,
    predict_proba,
    save_checkpoint,
    to_input,
)


@pytest.mark.unit
@pytest.mark.parametrize("width, blocks, batch_norm", [(8, 1, True), (16, 3, True), (12, 4, False), (32, 2, True)])
def test_model_output_shape(width, blocks, batch_norm):
    model = build_model(TrainConfig(width=width, blocks=blocks, batch_norm=batch_norm)).eval()
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


@pytest.mark.data  # 60 epochs: half a second on an idle machine, tens of seconds when the cores are shared
def test_one_batch_overfit():
    # 64 random images with random labels: only a working loop (gradients, optimiser, schedule) memorises them.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=64).astype(np.uint8)
    config = TrainConfig(
        epochs=60,
        batch_size=64,
        lr=0.05,
        augment=0.0,
        label_smoothing=0.0,
        dropout=0.0,
        weight_decay=0.0,
        width=8,
        device="cpu",
    )
    result = fit(config, (images, labels))
    assert result.history[0]["train_loss"] > 1.5
    assert result.history[-1]["train_loss"] < 0.05
    assert (predict_proba(result.model, images).argmax(1) == labels).all()


@pytest.mark.unit
def test_fake_data_run_learns_and_reports_every_epoch(fake_mnist_dir):
    # One thread here and below: on two shared cores this test took 31 s with two threads and 1.3 s with one.
    m = read_mnist_dir(fake_mnist_dir)
    seen = []
    # The fake digits' class is the row of their bar: the robust policy's shifts of up to 4 px would hide it.
    config = TrainConfig(
        epochs=3, batch_size=64, width=8, lr=0.05, device="cpu", val_size=200, threads=1, augment_policy="affine"
    )
    fit(
        config,
        (m.train_images[:1000], m.train_labels[:1000]),
        (m.train_images[1000:], m.train_labels[1000:]),
        callbacks=[lambda e, metrics: seen.append((e, metrics))],
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    assert set(seen[-1][1]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second"}
    assert seen[-1][1]["val_accuracy"] > 0.9


@pytest.mark.unit
def test_training_is_reproducible_with_a_seed(fake_mnist_dir):
    m = read_mnist_dir(fake_mnist_dir)
    config = TrainConfig(epochs=1, batch_size=100, width=8, device="cpu", val_size=200, augment=0.5, threads=1)
    a = fit(config, (m.train_images[:500], m.train_labels[:500]))
    b = fit(config, (m.train_images[:500], m.train_labels[:500]))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]


@pytest.mark.unit
def test_nan_loss_stops_with_a_clear_error(monkeypatch):
    real = train_module.F.cross_entropy
    monkeypatch.setattr(train_module.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    images = np.zeros((32, 28, 28), np.uint8)
    with pytest.raises(NonFiniteLossError, match="training loss became nan in epoch 1"):
        fit(TrainConfig(epochs=2, batch_size=16, width=4, device="cpu"), (images, np.zeros(32, np.uint8)))


@pytest.mark.unit
def test_callback_exception_stops_training():
    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    images = np.zeros((32, 28, 28), np.uint8)
    with pytest.raises(Stop):
        fit(
            TrainConfig(epochs=5, batch_size=16, width=4, device="cpu"),
            (images, np.zeros(32, np.uint8)),
            callbacks=[stop],
        )


@pytest.mark.unit
def test_checkpoint_round_trip_uses_plain_tensors(tmp_path):
    config = TrainConfig(width=8, blocks=2)
    model = build_model(config).eval()
    save_checkpoint(model, config, tmp_path)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)  # would fail on a pickled module
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded, loaded_config = load_checkpoint(tmp_path)
    assert loaded_config == config
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    np.testing.assert_allclose(predict_proba(model, x), predict_proba(loaded, x), atol=1e-6)


@pytest.mark.unit
def test_to_input_scales_uint8_to_unit_floats_in_channels_last():
    x = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).repeat(196).reshape(1, 1, 28, 28).repeat(3, 1, 1, 1)
    out = to_input(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, x.double().div(255).float(), rtol=0, atol=0)
    assert x.dtype == torch.uint8  # the caller's images are not touched
    with pytest.raises(TypeError, match="uint8 pixels 0-255, got torch.float32"):
        to_input(out)  # already scaled: refused rather than divided by 255 again


@pytest.mark.unit
def test_one_inference_loop_gives_the_same_answer_in_any_chunking_and_keeps_the_mode():
    torch.manual_seed(0)
    model = build_model(TrainConfig(width=8, blocks=2)).train()
    images = np.random.default_rng(0).integers(0, 256, (23, 28, 28), dtype=np.uint8)
    whole = predict_proba(model, images)
    assert model.training  # eval for the forward passes only (dropout off, batch-norm statistics untouched)
    assert whole.shape == (23, 10) and whole.dtype == np.float32
    np.testing.assert_allclose(predict_proba(model, images, batch_size=5), whole, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, torch.from_numpy(images).unsqueeze(1)), whole, atol=0)
    with torch.no_grad():
        chunks = list(batched_logits(model, images, batch_size=10))
    assert [len(c) for c in chunks] == [10, 10, 3] and model.training
    np.testing.assert_allclose(torch.softmax(torch.cat(chunks), 1).numpy(), whole, atol=1e-6)
    assert predict_proba(model, images[:0]).shape == (0, 10) and MAX_BATCH == 1000


@pytest.mark.unit
def test_evaluate_is_the_loss_and_accuracy_of_the_predicted_probabilities():
    torch.manual_seed(0)
    model = build_model(TrainConfig(width=8, blocks=2))
    rng = np.random.default_rng(1)
    images, labels = (
        rng.integers(0, 256, (2 * MAX_BATCH + 7, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 2 * MAX_BATCH + 7),
    )
    proba = predict_proba(model, images).astype(np.float64)
    loss, accuracy = evaluate(model, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))
    assert accuracy == (proba.argmax(1) == labels).mean()
    assert loss == pytest.approx(-np.log(proba[np.arange(len(labels)), labels]).mean(), rel=1e-5)


@pytest.mark.unit
def test_schedules():
    onecycle = TrainConfig(schedule="onecycle", warmup=0.2)
    values = [lr_factor(s, 100, onecycle) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and max(values) == pytest.approx(1.0) and values[20] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-9)
    cosine = TrainConfig(schedule="cosine")
    assert lr_factor(0, 100, cosine) == 1.0 and lr_factor(50, 100, cosine) == pytest.approx(0.5)


@pytest.mark.unit
def test_config_validation_messages():
    with pytest.raises(ConfigError, match="lr must be"):
        TrainConfig(lr=math.nan).validate()
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adamw"):
        TrainConfig(optimizer="rmsprop").validate()
    with pytest.raises(ConfigError, match="subset must be 0"):
        TrainConfig(subset=5).validate()
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "unknown_future_key": 1}) == TrainConfig()


@pytest.mark.unit
def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")  # the GPU machine has one
    with pytest.raises(ConfigError, match="'cuda' was asked for but is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")

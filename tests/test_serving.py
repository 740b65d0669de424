"""End to end: a small real CNN registered, the real `mlflow models serve` on a free port, real MNIST digits sent
as pixel values and as drawings, every kind of bad input answered 4xx while the server keeps answering."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter

from digits.core.config import TrainConfig
from digits.core.names import ONNX_SUFFIX
from digits.evaluate.calibration import calibrate_network
from digits.learn import render
from digits.learn.data import split_train_val
from digits.learn.train import fit
from digits.mlops.export import export_onnx
from digits.mlops.registry import CHALLENGER, CHAMPION, log_cnn_model, log_onnx_model, register_model, set_alias
from digits.serve.contract import MAX_REQUEST_BYTES
from digits.serve.model import MAX_BATCH, build_model, predict_proba, save_checkpoint
from digits.serve.preprocess import to_mnist
from tests.conftest import ROOT, digits_command, isolated_store, scoring_server, zero_size_png

pytestmark = pytest.mark.e2e

MODEL = "digits-cnn"
N_ARRAYS = 300
N_DRAWINGS = 120


# --- test data -----------------------------------------------------------------------------------------------


def drawing(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit as a user's drawing: dark ink on white, enlarged to a few hundred pixels, off centre, thicker."""
    side = int(rng.integers(200, 320))
    big = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
    thicken = int(rng.choice([1, 5, 9]))
    if thicken > 1:  # Pillow's MaxFilter(1) crashes (SIGFPE), and would do nothing anyway
        big = big.filter(ImageFilter.MaxFilter(thicken))
    canvas = Image.new("L", (side + 200, side + 120), 0)
    canvas.paste(big, (int(rng.integers(0, 200)), int(rng.integers(0, 120))))
    return Image.eval(canvas, lambda v: 255 - v)


def encode(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


# --- the registered model and the server -------------------------------------------------------------------------


def venv_env(uri: str) -> dict[str, str]:
    # The scoring server starts `uvicorn` from PATH: this venv's bin must come first.
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.fixture(scope="module")
def registered(mnist, tmp_path_factory):
    """A CNN trained on 3,000 images (about 95% test accuracy) registered as champion; an untrained one as challenger."""
    root = tmp_path_factory.mktemp("serving")
    with isolated_store(root, "serving-tests") as (uri, experiment):
        config = TrainConfig(epochs=2, subset=3000, seed=0, device="cpu")
        split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
        trained = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
        # Calibrated as the pipeline does (on the validation split): the served models must answer with its temperature.
        calibrate_network(trained, mnist.train_images[split.val], mnist.train_labels[split.val], "the validation split")
        untrained = build_model(config).eval()
        promotions = {}
        for label, model in (("trained", trained), ("untrained", untrained)):
            accuracy = float((predict_proba(model, mnist.test_images).argmax(1) == mnist.test_labels).mean())
            with mlflow.start_run(experiment_id=experiment, run_name=label) as run:
                info = log_cnn_model(save_checkpoint(model, config, root / label))
                onnx = log_onnx_model(export_onnx(model, config, root / label / "model.onnx"))  # as main does
            register_model(
                onnx.model_uri,
                model_name=MODEL + ONNX_SUFFIX,
                test_accuracy=accuracy,
                run_id=run.info.run_id,
                data_digest=mnist.digest,
            )
            promotions[label] = register_model(
                info.model_uri, test_accuracy=accuracy, run_id=run.info.run_id, data_digest=mnist.digest
            )
            promotions[label + "_accuracy"] = accuracy
        yield {"uri": uri, "root": root, "model": trained, "promotions": promotions}


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server(registered, request):
    """`mlflow models serve -m models:/digits-cnn@champion --env-manager local` on a free port; killed afterwards.

    Every test that uses it runs twice: against digits-cnn (PyTorch) and digits-cnn-onnx (ONNX Runtime).
    """
    name = MODEL + (ONNX_SUFFIX if request.param == "onnx" else "")
    log = registered["root"] / f"server-{request.param}.log"
    with scoring_server(f"models:/{name}@{CHAMPION}", log, MLFLOW_TRACKING_URI=registered["uri"]) as (url, _):
        yield url


def invoke(url: str, payload: dict | str, content_type: str | None = "application/json") -> requests.Response:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"Content-Type": content_type} if content_type else {}  # None: no header at all
    return requests.post(f"{url}/invocations", data=data, headers=headers, timeout=60)


def predictions(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    out = response.json()["predictions"]
    for p in out:
        assert isinstance(p["digit"], int) and 0 <= p["digit"] <= 9
        assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-4
        assert p["confidence"] == pytest.approx(max(p["probabilities"])) and p["digit"] == int(
            np.argmax(p["probabilities"])
        )
    return out


# --- registry ----------------------------------------------------------------------------------------------------


def test_worse_model_does_not_take_champion(registered):
    promotions = registered["promotions"]
    assert promotions["trained_accuracy"] > 0.9 and promotions["untrained_accuracy"] < 0.5
    assert promotions["trained"].promoted and promotions["trained"].alias == CHAMPION
    assert not promotions["untrained"].promoted and promotions["untrained"].alias == CHALLENGER
    client = MlflowClient(registered["uri"])
    assert int(client.get_model_version_by_alias(MODEL, CHAMPION).version) == promotions["trained"].version
    run = client.get_run(client.get_model_version(MODEL, str(promotions["untrained"].version)).tags["source_run_id"])
    assert "does not beat champion" in run.data.tags["promotion"]


# --- good input -------------------------------------------------------------------------------------------------


def test_mnist_pixel_values_in_both_layouts(server, registered, mnist):
    images, labels = mnist.test_images[:N_ARRAYS], mnist.test_labels[:N_ARRAYS]
    square = predictions(invoke(server, {"inputs": images.tolist()}))
    flat = predictions(invoke(server, {"inputs": images.reshape(-1, 784).tolist()}))
    digits = np.array([p["digit"] for p in square])
    assert [p["digit"] for p in flat] == digits.tolist()
    # The endpoint is the trained network, no more, no less: same answers as calling it directly.
    np.testing.assert_array_equal(digits, predict_proba(registered["model"], images).argmax(1))
    assert (digits == labels).mean() > 0.9


def test_the_served_answer_is_calibrated_and_min_confidence_makes_doubtful_ones_unsure(server, registered, mnist):
    images = mnist.test_images[:N_ARRAYS]
    plain = predictions(invoke(server, {"inputs": images.tolist()}))
    served = np.array([p["probabilities"] for p in plain])
    network = registered["model"]
    assert float(network.temperature) < 0.9  # label smoothing: under-confident, so the fitted T sharpens
    np.testing.assert_allclose(served, predict_proba(network, images), atol=1e-4)  # the temperature, served
    confidence = served.max(axis=1)
    threshold = float(np.quantile(confidence, 0.2))
    response = invoke(server, {"inputs": images.tolist(), "params": {"min_confidence": threshold}})
    assert response.status_code == 200, response.text[:300]
    answers = response.json()["predictions"]
    unsure = np.array([a["unsure"] for a in answers])
    np.testing.assert_array_equal(unsure, confidence < threshold)
    assert 0 < unsure.sum() < len(answers)
    for got, before in zip(answers, plain):
        assert got["digit"] == (-1 if got["unsure"] else before["digit"])
        assert got["confidence"] == pytest.approx(before["confidence"])  # the best guess stays for the person
    assert "unsure" not in plain[0]  # without the param, the answer keeps its columns
    for bad in ("high", 1.5, -0.1, True, [0.5]):
        refused = invoke(server, {"inputs": images[:1].tolist(), "params": {"min_confidence": bad}})
        assert refused.status_code == 400, refused.text[:300]
        message = refused.json()["message"]
        assert (
            message.startswith("the param 'min_confidence' must be a number from 0 to 1, got ") and "\n" not in message
        )


def test_drawings_as_png_and_jpeg_in_split_and_records(server, mnist):
    rng = np.random.default_rng(0)
    images, labels = mnist.test_images[-N_DRAWINGS:], mnist.test_labels[-N_DRAWINGS:]
    pictures = [encode(drawing(image, rng), "PNG" if i % 3 else "JPEG") for i, image in enumerate(images)]
    half = N_DRAWINGS // 2
    split = predictions(
        invoke(server, {"dataframe_split": {"columns": ["image"], "data": [[p] for p in pictures[:half]]}})
    )
    records = predictions(invoke(server, {"dataframe_records": [{"image": p} for p in pictures[half:]]}))
    digits = np.array([p["digit"] for p in split + records])
    assert (digits == labels).mean() > 0.85  # about 0.94 with this small model; pixel values give about 0.95


def test_canvas_drawings_and_photos_are_read_through_the_server(server, registered, mnist):
    # Issue 12: a thin-pen canvas drawing and a photo on grey paper, made from MNIST test digits, as a client sends them.
    rng = np.random.default_rng(1)
    images, labels = mnist.test_images[:40], mnist.test_labels[:40]
    for kind, fmt in (("canvas", "PNG"), ("photo", "JPEG")):
        pictures = [getattr(render, kind)(image, rng) for image in images]
        served = np.array(
            [
                p["digit"]
                for p in predictions(invoke(server, {"inputs": [encode(Image.fromarray(p), fmt) for p in pictures]}))
            ]
        )
        # The server's path is preprocess.to_mnist and the network: the same answers as taking that path here.
        direct = predict_proba(
            registered["model"], np.stack([to_mnist(encode(Image.fromarray(p), fmt)) for p in pictures])
        ).argmax(1)
        np.testing.assert_array_equal(served, direct)
        # The small test model (3,000 images, 2 epochs) reads the originals at about 95%, these at 85-95%.
        assert (served == labels).mean() >= 0.8, kind


def test_response_shape_for_one_image(server, mnist):
    response = invoke(server, {"inputs": mnist.test_images[:1].tolist()})
    assert response.headers["content-type"].startswith("application/json")
    (only,) = predictions(response)
    assert set(only) == {"digit", "confidence", "probabilities"}


# --- bad input ------------------------------------------------------------------------------------------------


def bad_inputs(mnist) -> dict[str, tuple[object, str, str]]:
    """name: (payload, content type, what the error message must say)."""
    digit = mnist.test_images[0].astype(float)
    flat = digit.reshape(784).tolist()
    png = base64.b64decode(encode(drawing(mnist.test_images[0], np.random.default_rng(1))))
    split = lambda text: {"dataframe_split": {"columns": ["image"], "data": [[text]]}}  # noqa: E731
    return {
        "malformed JSON": ('{"inputs": [[0, 1,', "application/json", "valid JSON"),
        "wrong content type": ("inputs=1", "text/plain", "content types"),
        "no content type": ('{"inputs": []}', None, "no Content-Type header"),
        "deeply nested JSON": (
            '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "application/json",
            "nested too deeply",
        ),
        "783 values": ({"inputs": [flat[:783]]}, "application/json", "got shape (783,)"),
        "27x28": ({"inputs": [digit[:27].tolist()]}, "application/json", "got shape (27, 28)"),
        "strings": ({"inputs": [[str(v) for v in flat]]}, "application/json", "got strings"),
        "booleans": ({"inputs": [[v > 0 for v in flat]]}, "application/json", "got booleans"),
        "NaN": (json.dumps({"inputs": [[float("nan")] + flat[1:]]}), "application/json", "NaN or infinity"),
        "infinity": (json.dumps({"inputs": [[float("inf")] + flat[1:]]}), "application/json", "NaN or infinity"),
        "over 255": ({"inputs": [[300.0] + flat[1:]]}, "application/json", "from 0 to 255"),
        "negative": ({"inputs": [[-1.0] + flat[1:]]}, "application/json", "from 0 to 255"),
        "0-1 scale": ({"inputs": [(np.array(flat) / 255).tolist()]}, "application/json", "not 0-1"),
        "inverted pixels": (
            {"inputs": [(255 - np.array(flat)).tolist()]},
            "application/json",
            "light ink on a dark background",
        ),
        "empty batch": ({"inputs": []}, "application/json", "empty batch"),
        "empty split": ({"dataframe_split": {"columns": ["image"], "data": []}}, "application/json", "empty batch"),
        "not base64": (split("this is not base64!"), "application/json", "not valid base64"),
        "base64 of text": (
            split(base64.b64encode(b"just some text, not a picture").decode()),
            "application/json",
            "not a PNG or JPEG",
        ),
        "truncated PNG": (
            split(base64.b64encode(png[: len(png) // 2]).decode()),
            "application/json",
            "truncated or corrupt",
        ),
        "0x0 image": (split(base64.b64encode(zero_size_png()).decode()), "application/json", "0x0"),
        "huge image": (
            split(encode(Image.new("L", (5000, 4000), 255))),
            "application/json",
            "over the limit of 16,777,216",
        ),
        "blank image": (split(encode(Image.new("L", (300, 300), 255))), "application/json", "no digit found"),
        "batch over the limit": (
            {"inputs": np.zeros((MAX_BATCH + 1, 784), np.uint8).tolist()},
            "application/json",
            "over the limit of 1,000",
        ),
        "null image": ({"dataframe_records": [{"image": None}]}, "application/json", "got nothing"),
        "number as image": ({"dataframe_records": [{"image": 7}]}, "application/json", "got a number"),
        "no image column": ({"dataframe_records": [{"picture": "x"}]}, "application/json", "missing inputs ['image']"),
        "not an object": ("[1, 2, 3]", "application/json", "JSON dictionary"),
        "body over the limit": (
            '{"inputs": [' + "0," * (MAX_REQUEST_BYTES // 2) + "0]}",
            "application/json",
            f"over the limit of {MAX_REQUEST_BYTES:,}",
        ),
    }


def test_every_bad_input_is_a_4xx_that_says_what_is_wrong_and_the_server_keeps_answering(server, mnist):
    failures = []
    for name, (payload, content_type, expected) in bad_inputs(mnist).items():
        response = invoke(server, payload, content_type)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        message = response.json().get("message", "") if is_json else response.text
        if not (400 <= response.status_code < 500 and is_json and expected in message):
            failures.append(f"{name}: {response.status_code} {response.headers.get('content-type')} {message[:300]!r}")
        assert requests.get(f"{server}/ping", timeout=5).status_code == 200, f"server stopped answering after {name}"
    assert not failures, "\n".join(failures)
    predictions(invoke(server, {"inputs": mnist.test_images[:2].tolist()}))  # and still predicts


def test_error_messages_name_the_bad_image(server, mnist):
    images = mnist.test_images[:3].astype(float)
    images[2, 0, 0] = float("nan")
    response = invoke(server, json.dumps({"inputs": images.tolist()}))
    assert response.status_code == 400
    assert "image 2: pixel values must be finite numbers" in response.json()["message"]


# --- explicit promotion and roll-back -----------------------------------------------------------------------------


def test_explicit_promotion_and_roll_back(registered):
    promotions = registered["promotions"]
    good, bad = promotions["trained"].version, promotions["untrained"].version
    client = MlflowClient(registered["uri"])
    assert set_alias(MODEL, CHAMPION, bad) == good
    assert int(client.get_model_version_by_alias(MODEL, CHAMPION).version) == bad
    assert set_alias(MODEL, CHAMPION, good) == bad  # roll back
    assert int(client.get_model_version_by_alias(MODEL, CHAMPION).version) == good


def test_digits_predict_and_register_on_the_command_line(registered, mnist, tmp_path):
    env = venv_env(registered["uri"])
    rng = np.random.default_rng(2)
    paths = []
    for i in range(6):
        path = tmp_path / f"digit{i}.{'png' if i % 2 else 'jpg'}"
        drawing(mnist.test_images[i], rng).save(path)
        paths.append(str(path))
    result = subprocess.run(digits_command("predict", *paths), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == paths
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert sum(p == t for p, t in zip(predicted, mnist.test_labels[:6])) >= 5

    # Explicit promotion through the MLproject entry point, roll-back through the CLI.
    good, bad = registered["promotions"]["trained"].version, registered["promotions"]["untrained"].version
    client = MlflowClient(registered["uri"])
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "-e",
            "register",
            "-P",
            f"version={bad}",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(client.get_model_version_by_alias(MODEL, CHAMPION).version) == bad
    back = subprocess.run(
        digits_command("register", "--version", str(good)), env=env, capture_output=True, text=True, timeout=300
    )
    assert back.returncode == 0 and f"-> version {good} (it was on version {bad})" in back.stdout
    assert int(client.get_model_version_by_alias(MODEL, CHAMPION).version) == good
    missing = subprocess.run(
        digits_command("register", "--version", "99"), env=env, capture_output=True, text=True, timeout=300
    )
    assert (
        missing.returncode == 1
        and missing.stderr.strip().splitlines()[-1]
        == f"digits register: error: {MODEL} has no version 99 (versions: 1, 2)"
    )


# --- the guard is on, whole, for the installed MLflow -------------------------------------------------------------


def test_server_logs_no_fallback_warning(server, registered):
    logs = sorted(registered["root"].glob("server-*.log"))  # this backend's, and the other's if it ran first
    assert logs and not [log.name for log in logs if "request guard is partly off" in log.read_text()]

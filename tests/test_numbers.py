"""Multi-digit numbers: segmentation on synthetic numbers (gaps, touching, broken strokes), blank and too-many errors,
the composed evaluation set and its metrics, the served mode ``number`` over real HTTP and ``digits predict --number``."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image, ImageDraw
from scipy import ndimage

from digits.evaluate import number_eval
from digits.serve.answers import answer, request_mode
from digits.serve.numbers import MAX_DIGITS, read_number, read_numbers
from digits.serve.preprocess import InputError
from tests.conftest import ROOT, digits_command, evaluate_numbers_run, isolated_store, scoring_server

# --- synthetic numbers and a classifier that knows two shapes ----------------------------------------------------------


def ring(draw: ImageDraw.ImageDraw, x: int, y: int = 40, w: int = 60, h: int = 100) -> None:
    draw.ellipse([x, y, x + w, y + h], outline=0, width=10)


def bar(draw: ImageDraw.ImageDraw, x: int, y0: int = 40, y1: int = 140) -> None:
    draw.line([(x, y0), (x, y1)], fill=0, width=10)


def picture(width: int, strokes) -> Image.Image:
    image = Image.new("L", (width, 180), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        stroke(draw)
    return image


def shapes_proba(images: np.ndarray) -> np.ndarray:
    """0 for one ring (one hole), 1 for a straight upright stroke, anything else a doubtful 8."""
    out = np.full((len(images), 10), 0.01)
    for i, image in enumerate(images):
        ink = image > 64
        holes = ndimage.label(~ink)[1] - 1
        rows = [np.flatnonzero(row).mean() for row in ink if row.any()]
        digit, confidence = (0, 0.95) if holes == 1 else (1, 0.95) if holes == 0 and np.std(rows) < 1.0 else (8, 0.3)
        out[i, digit] = confidence
    return out / out.sum(axis=1, keepdims=True)


# --- segmentation -------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_digits_with_gaps_are_read_left_to_right_with_boxes():
    image = picture(420, [lambda d: bar(d, 40), lambda d: ring(d, 100), lambda d: bar(d, 220), lambda d: ring(d, 280)])
    reading = read_number(image, shapes_proba)
    assert reading.text == "1010"
    assert [d.digit for d in reading.digits] == [1, 0, 1, 0]
    boxes = [d.box for d in reading.digits]
    assert all(a[2] <= b[0] for a, b in zip(boxes, boxes[1:]))  # left to right, not overlapping
    assert boxes[1][0] == pytest.approx(100, abs=4) and boxes[1][2] == pytest.approx(160, abs=4)
    assert reading.confidence == pytest.approx(np.prod([d.confidence for d in reading.digits]))
    assert json.loads(reading.digits_json())[1] == {
        "digit": 0,
        "confidence": reading.digits[1].confidence,
        "box": list(boxes[1]),
    }


@pytest.mark.unit
def test_touching_digits_are_cut_where_they_read_best():
    # Two rings that touch: one component, two holes; the classifier doubts it as one digit, and a half ring.
    image = picture(220, [lambda d: ring(d, 40), lambda d: ring(d, 97)])
    assert ndimage.label(np.asarray(image) < 128)[1] == 1
    assert read_number(image, shapes_proba).text == "00"
    three = picture(300, [lambda d: ring(d, 40), lambda d: ring(d, 97), lambda d: ring(d, 154)])
    assert read_number(three, shapes_proba).text == "000"


@pytest.mark.unit
def test_a_confident_digit_of_ordinary_width_is_not_cut():
    # A wide ring (its width 1.1 of its height) read as a sure 0: one classifier call, the whole ring, and no cut
    # candidates; the same ring read with doubt gets a second call with its cuts.
    image = picture(260, [lambda d: ring(d, 40, 40, 110, 100)])
    calls: list[int] = []

    def counting(proba):
        def wrapped(images):
            calls.append(len(images))
            return proba(images)

        return wrapped

    assert read_number(image, counting(shapes_proba)).text == "0" and calls == [1]
    doubtful = lambda images: np.full((len(images), 10), 0.1)  # noqa: E731
    calls.clear()
    read_number(image, counting(doubtful))
    assert len(calls) == 2 and calls[0] == 1 and calls[1] > 1


@pytest.mark.unit
def test_broken_strokes_are_one_digit():
    # A 1 drawn in two strokes with a gap, and a ring with a loose flag above it (a 5's): parts of one digit each.
    image = picture(
        300,
        [
            lambda d: bar(d, 40, 40, 85),
            lambda d: bar(d, 42, 95, 140),
            lambda d: ring(d, 120, 60, 60, 80),
            lambda d: d.line([(125, 45), (175, 45)], fill=0, width=8),
        ],
    )
    reading = read_number(image, shapes_proba)
    assert len(reading.digits) == 2 and reading.text[0] == "1"
    assert reading.digits[1].box[1] == pytest.approx(41, abs=4)  # the flag belongs to the second digit's box


@pytest.mark.unit
def test_boxes_are_in_the_pictures_pixels_when_it_is_reduced():
    image = picture(420, [lambda d: bar(d, 40), lambda d: ring(d, 100)]).resize((1680, 720))  # 4x: worked on at 1024
    reading = read_number(image, shapes_proba)
    assert reading.text == "10"
    assert reading.digits[1].box[0] == pytest.approx(400, abs=16) and reading.digits[1].box[2] == pytest.approx(
        640, abs=16
    )


@pytest.mark.unit
def test_blank_and_too_many_digits_are_refused_in_one_line():
    with pytest.raises(InputError, match="no digit found"):
        read_number(Image.new("L", (300, 100), 255), shapes_proba)
    many = picture(60 * (MAX_DIGITS + 1) + 40, [lambda d, x=x: bar(d, 40 + 60 * x) for x in range(MAX_DIGITS + 1)])
    with pytest.raises(InputError, match="more than the 12 digits") as caught:
        read_number(many, shapes_proba)
    assert "\n" not in str(caught.value)
    assert (
        read_number(
            picture(60 * MAX_DIGITS + 40, [lambda d, x=x: bar(d, 40 + 60 * x) for x in range(MAX_DIGITS)]), shapes_proba
        ).text
        == "1" * 12
    )
    with pytest.raises(InputError, match="image 1: no digit found"):
        read_numbers([picture(200, [lambda d: ring(d, 40)]), Image.new("L", (50, 50), 0)], shapes_proba)


# --- the served answer ---------------------------------------------------------------------------------------


def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.unit
def test_mode_param_chooses_the_answer():
    from mlflow.exceptions import MlflowException

    number = encoded(picture(300, [lambda d: bar(d, 40), lambda d: ring(d, 100)]))
    out = answer(pd.DataFrame({"image": [number]}), shapes_proba, {"mode": "number"})
    assert list(out.columns) == ["text", "confidence", "digits"] and out["text"].tolist() == ["10"]
    assert [d["digit"] for d in json.loads(out["digits"][0])] == [1, 0]
    assert request_mode(None) == request_mode({}) == request_mode({"mode": None}) == "digit"
    assert list(answer(pd.DataFrame({"image": [number]}), shapes_proba).columns) == [
        "digit",
        "confidence",
        "probabilities",
    ]
    for frame, params, message in (
        (pd.DataFrame({"image": [number]}), {"mode": "numbers"}, "must be one of digit, number"),
        (
            pd.DataFrame({"image": [encoded(Image.new("L", (80, 80), 255))]}),
            {"mode": "number"},
            "image 0: no digit found",
        ),
    ):
        with pytest.raises(MlflowException, match=message) as caught:
            answer(frame, shapes_proba, params)
        assert caught.value.get_http_status_code() == 400


# --- the evaluation set ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_composed_numbers_are_seeded_and_touch_or_leave_gaps():
    rng = np.random.default_rng(0)
    images = np.zeros((10, 28, 28), np.uint8)
    images[:, 4:24, 10:18] = 255  # a block of 8x20: every digit the same width
    labels = np.arange(10)
    gap, text, picks = number_eval.compose(images, labels, rng, 5, "gap")
    assert len(text) == 5 and len(picks) == 5 and ndimage.label(gap > 0)[1] == 5
    touching, _, _ = number_eval.compose(images, labels, np.random.default_rng(1), 5, "touching")
    assert ndimage.label(touching > 0)[1] < 5
    a = number_eval.number_set(images, labels, 1, seed=3, lengths=(3,))
    b = number_eval.number_set(images, labels, 1, seed=3, lengths=(3,))
    assert len(a) == 4 and all(x.text == y.text and np.array_equal(x.picture, y.picture) for x, y in zip(a, b))
    assert {(s.spacing, s.renderer) for s in a} == {
        ("gap", "canvas"),
        ("gap", "photo"),
        ("touching", "canvas"),
        ("touching", "photo"),
    }


@pytest.mark.unit
def test_number_metrics():
    assert number_eval.edit_distance("90210", "9021") == 1 and number_eval.edit_distance("123", "321") == 2
    samples = [
        number_eval.NumberSample(np.zeros((2, 2), np.uint8), t, s, "canvas")
        for t, s in (("123", "gap"), ("4567", "touching"))
    ]
    values = number_eval.number_metrics(samples, [("123", 0.9), ("457", 0.5)])
    assert values["number_exact_match"] == 0.5 and values["number_length_accuracy"] == 0.5
    assert values["number_digit_accuracy"] == pytest.approx((1 + 0.75) / 2)
    assert values["number_exact_match_gap"] == 1 and values["number_exact_match_touching"] == 0
    assert values["number_digit_accuracy_len4"] == 0.75


# --- with a real network on real MNIST digits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def network(mnist):
    """A CNN trained on 3,000 images for 2 epochs (about 95% test accuracy)."""
    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit

    config = TrainConfig(epochs=2, subset=3000, seed=0, device="cpu")
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    return config, fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu().eval()


@pytest.mark.data
def test_evaluation_on_a_small_slice_logs_the_metrics(mnist, network, tracking_uri):
    from digits.serve.model import predict_proba

    samples = number_eval.number_set(mnist.test_images, mnist.test_labels, 2, seed=0, lengths=(3, 5))
    readings = number_eval.read_all(samples, number_eval.cutting(lambda images: predict_proba(network[1], images)))
    with mlflow.start_run() as run:
        values = number_eval.log_number_evaluation(samples, readings)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    for key in (
        "number_exact_match",
        "number_digit_accuracy",
        "number_length_accuracy",
        "number_exact_match_len5",
        "number_digit_accuracy_touching",
        "number_exact_match_gap",
    ):
        assert 0 <= logged[key] <= 1 and logged[key] == pytest.approx(values[key])
    assert values["number_digit_accuracy"] > 0.6, values
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "numbers")}
    assert files == {"numbers/readings.csv", "numbers/worst_misreads.png"}


def composed_png(mnist, text: str) -> str:
    """``text`` written with the first test digits of each label, with gaps, as a canvas drawing (base64 PNG)."""
    from digits.learn import render

    picks = [int(np.flatnonzero(mnist.test_labels == int(c))[0]) for c in text]
    strip = np.concatenate([np.pad(mnist.test_images[i], ((6, 6), (0, 0))) for i in picks], axis=1)
    return encoded(Image.fromarray(render.canvas(np.pad(strip, ((0, 0), (8, 8))), np.random.default_rng(0), scale=5)))


@pytest.fixture(scope="module")
def registered_number_model(mnist, network, tmp_path_factory):
    from digits.mlops.registry import log_cnn_model, register_model
    from digits.serve.model import save_checkpoint

    root = tmp_path_factory.mktemp("numbers-serving")
    with isolated_store(root, "numbers-tests") as (uri, experiment):
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_cnn_model(save_checkpoint(network[1], network[0], root / "ckpt"))
        register_model(
            info.model_uri,
            model_name="digits-numbers",
            test_accuracy=0.95,
            run_id=run.info.run_id,
            data_digest=mnist.digest,
        )
        yield {"uri": uri, "root": root, "model_uri": "models:/digits-numbers@champion"}


@pytest.mark.e2e
def test_served_number_mode_over_http(registered_number_model, mnist):
    model = registered_number_model
    picture = composed_png(mnist, "90210")
    with scoring_server(model["model_uri"], model["root"] / "server.log", MLFLOW_TRACKING_URI=model["uri"]) as (url, _):

        def post(payload):
            return requests.post(
                f"{url}/invocations", data=json.dumps(payload), headers={"Content-Type": "application/json"}, timeout=60
            )

        response = post({"dataframe_split": {"columns": ["image"], "data": [[picture]]}, "params": {"mode": "number"}})
        assert response.status_code == 200, response.text[:500]
        (answer_,) = response.json()["predictions"]
        digits = json.loads(answer_["digits"])
        assert len(digits) == 5 and answer_["text"] == "".join(str(d["digit"]) for d in digits)
        assert sum(a == b for a, b in zip(answer_["text"], "90210")) >= 4, answer_
        assert all(len(d["box"]) == 4 and 0 <= d["confidence"] <= 1 for d in digits)
        assert 0 < answer_["confidence"] <= 1
        records = post({"inputs": [picture], "params": {"mode": "number"}})
        assert records.status_code == 200 and records.json()["predictions"][0]["text"] == answer_["text"]
        # Old clients (no mode) still get digits.
        plain = post({"inputs": mnist.test_images[:2].tolist()})
        assert plain.status_code == 200 and {"digit", "probabilities"} <= set(plain.json()["predictions"][0])
        for payload, message in (
            ({"inputs": [picture], "params": {"mode": "numbers"}}, "must be one of digit, number"),
            ({"inputs": [picture], "params": {"mode": "number", "other": 1}}, "no params other than mode"),
            ({"inputs": [encoded(Image.new("L", (90, 60), 255))], "params": {"mode": "number"}}, "no digit found"),
        ):
            refused = post(payload)
            assert refused.status_code == 400 and message in refused.json()["message"], refused.text[:300]
        assert post({"inputs": [picture], "params": {"mode": "number"}}).status_code == 200  # still answering


@pytest.mark.e2e
def test_cli_predict_number(registered_number_model, mnist, tmp_path):
    model = registered_number_model
    path = tmp_path / "number.png"
    path.write_bytes(base64.b64decode(composed_png(mnist, "4711")))
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 80), 255).save(blank)
    env = {**os.environ, "MLFLOW_TRACKING_URI": model["uri"]}
    done = subprocess.run(
        digits_command("predict", "--number", str(path), "--model_uri", model["model_uri"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout.strip().rpartition(": ")[2].split()[0]
    assert len(text) == 4 and sum(a == b for a, b in zip(text, "4711")) >= 3, done.stdout
    refused = subprocess.run(
        digits_command("predict", "--number", str(blank), "--model_uri", model["model_uri"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        refused.returncode == 1 and "blank.png: no digit found" in refused.stderr and "Traceback" not in refused.stderr
    )


@pytest.mark.e2e
def test_cli_evaluate_number_logs_a_run(registered_number_model, mnist_dir):
    model = registered_number_model
    run = evaluate_numbers_run(model["uri"], model["model_uri"], "numbers-tests", mnist_dir, 1)
    client = mlflow.MlflowClient(model["uri"])
    assert run.info.run_name == "evaluate-numbers" and run.data.params["number_set_size"] == "1"
    metrics = run.data.metrics
    for key in (
        "number_exact_match",
        "number_digit_accuracy",
        "number_length_accuracy",
        *(f"number_exact_match_len{n}" for n in range(3, 9)),
        "number_exact_match_touching",
    ):
        assert 0 <= metrics[key] <= 1, key
    assert {f.path for f in client.list_artifacts(run.info.run_id, "numbers")} == {
        "numbers/readings.csv",
        "numbers/worst_misreads.png",
    }


# --- the app's number mode ---------------------------------------------------------------------------------------


class ShapesPredictor:
    """The app's predictor interface over the served answer with the two-shape classifier."""

    source = "shapes"

    def __init__(self):
        self.pictures = []

    def predict_number(self, picture: str) -> dict:
        self.pictures.append(picture)
        return answer(pd.DataFrame({"image": [picture]}), shapes_proba, {"mode": "number"}).iloc[0].to_dict()

    def predict(self, picture: str):
        return answer(pd.DataFrame({"image": [picture]}), shapes_proba)["probabilities"][0]

    def status(self) -> str:
        return "Reading with shapes."


@pytest.mark.unit
def test_app_number_mode_reads_the_drawing_and_boxes_each_digit():
    from digits.app.numbers import NUMBER_EMPTY_MESSAGE, read_number_drawing

    predictor = ShapesPredictor()
    drawing = picture(
        420, [lambda d: bar(d, 40), lambda d: ring(d, 100), lambda d: bar(d, 220), lambda d: ring(d, 280)]
    )
    message, seen = read_number_drawing({"composite": drawing}, predictor)
    assert message.startswith("**1010**") and seen.size == drawing.size
    red = np.asarray(seen)[..., 0].astype(int) - np.asarray(seen)[..., 1]
    assert (red > 100).sum() > 100  # the boxes are drawn in red over the drawing
    assert base64.b64decode(predictor.pictures[0])[:4] == b"\x89PNG"
    assert read_number_drawing({"composite": Image.new("L", (400, 100), 255)}, predictor) == (
        NUMBER_EMPTY_MESSAGE,
        None,
    )
    assert read_number_drawing(None, predictor) == (NUMBER_EMPTY_MESSAGE, None)


@pytest.mark.unit
def test_app_page_has_the_number_canvas():
    pytest.importorskip("gradio")
    from digits.app import page as app

    demo = app.build_app(ShapesPredictor())
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"number-sketch", "read-number", "number-message", "number-boxes", "sketch"} <= ids


TOUCHING = 0.8  # digits this many of their heights apart: the strokes of neighbours touch (a 12-px brush)


@pytest.mark.e2e
def test_app_number_mode_in_a_real_browser(mnist, tmp_path_factory):
    """The app's wide canvas in headless Chromium: 7010 written with real mouse strokes, its digits touching, read by
    the champion's line reader (``tests/assets/reader``) as 7010."""
    from tests.test_app import CHROMIUM, CHROMIUM_ARGS, STEPS, STROKES, start_app

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit
    from digits.mlops.registry import log_cnn_model, register_model
    from digits.serve.model import save_checkpoint

    root = tmp_path_factory.mktemp("number-app")
    with isolated_store(root, "app-tests") as (uri, experiment):
        config = TrainConfig(epochs=2, subset=10000, seed=0, device="cpu")  # as tests/test_app.py: about 98%
        split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
        model = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_cnn_model(save_checkpoint(model, config, root / "ckpt"), reader=ROOT / "tests/assets/reader")
        register_model(info.model_uri, test_accuracy=0.98, run_id=run.info.run_id, data_digest=mnist.digest)
        server = start_app("number-app", root, uri)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                page.set_default_timeout(60_000)
                page.goto(server.url)
                page.wait_for_selector("#number-sketch canvas")
                page.click('#number-sketch button[aria-label="Brush"]')
                box = page.locator("#number-sketch canvas").first.bounding_box()
                side = 0.6 * box["height"]
                left, top = box["x"] + 0.1 * box["width"], box["y"] + 0.2 * box["height"]
                for i, digit in enumerate("7010"):
                    for stroke in STROKES[digit]:
                        (x, y), rest = stroke[0], stroke[1:]
                        page.mouse.move(left + (TOUCHING * i + x) * side, top + y * side)
                        page.mouse.down()
                        for x, y in rest:
                            page.mouse.move(left + (TOUCHING * i + x) * side, top + y * side, steps=STEPS)
                        page.mouse.up()
                page.click("#read-number")
                page.wait_for_function(
                    "() => document.querySelector('#number-message')?.innerText.includes('confidence')"
                )
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#number-boxes img')].some(i => i.complete && i.naturalWidth > 0)"
                )
                page.screenshot(path=str(root / "number-app.png"), full_page=True)
                if os.environ.get("DIGITS_NUMBER_APP_SCREENSHOT"):  # the README's picture
                    page.locator("#number-boxes").screenshot(path=os.environ["DIGITS_NUMBER_APP_SCREENSHOT"])
                message = page.inner_text("#number-message").strip()
                browser.close()
        finally:
            server.stop()
    assert message.startswith("7010 "), f"{message}; see {root / 'number-app.png'}"

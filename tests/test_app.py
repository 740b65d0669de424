"""The drawing app: its pure parts without a browser (unit), then the real app in Debian's headless Chromium (e2e).

The e2e tests train a small real CNN on real MNIST, start ``digits app`` before any champion exists, check that the
page says so, register the champion, then draw digits with real mouse strokes on the real canvas and read the
answers from the page. A second app asks a real ``mlflow models serve`` endpoint; the same drawing must get the
same answer from both. ``DIGITS_APP_SCREENSHOT=docs/app.png`` keeps the screenshot the README shows.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digits.app import clients, reading
from digits.app import page as app
from digits.app.clients import AppError, EndpointModel, RegistryModel
from digits.serve.preprocess import InputError, to_mnist
from tests.conftest import free_port, isolated_store
from workflow.cli import build_parser

CHROMIUM = "/usr/bin/chromium"
# Flags that let Debian's Chromium run headless as root in a container, with no network chatter of its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ink_on_paper(strokes: list[list[tuple[float, float]]], side: int = 300, width: int = 22) -> Image.Image:
    """Strokes in [0, 1] coordinates drawn black on white, like the sketchpad's picture."""
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line([(x * side, y * side) for x, y in stroke], fill=0, width=width, joint="curve")
    return image


SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]
# Strokes in [0, 1] of the drawing area, drawn as a person would: big, in one or two movements.
STROKES = {
    "1": [[(0.55, 0.12), (0.47, 0.88)]],
    "7": SEVEN,
    "0": [
        [(0.5 + 0.24 * math.sin(2 * math.pi * t / 12), 0.5 - 0.36 * math.cos(2 * math.pi * t / 12)) for t in range(14)]
    ],
}


class FakePredictor:
    """A stand-in model that reads what it is sent: the digit of STROKES whose 28x28 picture is nearest to the
    picture's, 91% sure. So the answer shows which picture reached the model; it remembers what it was sent."""

    source = "a fake"

    def __init__(self, error: Exception | None = None):
        self.templates = {int(d): to_mnist(ink_on_paper(strokes)).astype(float) for d, strokes in STROKES.items()}
        self.error = error
        self.sent: list[str] = []

    def predict(self, picture: str) -> np.ndarray:
        self.sent.append(picture)
        if self.error:
            raise self.error
        seen = to_mnist(picture).astype(float)
        digit = min(self.templates, key=lambda d: np.abs(self.templates[d] - seen).sum())
        return np.eye(10)[digit] * 0.9 + 0.01

    def status(self) -> str:
        return "fake"


# --- unit: the pure parts --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_top_three_best_first_as_label_values():
    p = np.array([0.01, 0.02, 0.05, 0.6, 0.02, 0.2, 0.03, 0.04, 0.02, 0.01])
    top = reading.top_k(p)
    assert list(top) == ["3", "5", "2"]
    assert top == pytest.approx({"3": 0.6, "5": 0.2, "2": 0.05})
    assert reading.summary(top) == "The model reads **3** (60.0% sure)."


@pytest.mark.unit
def test_a_doubtful_answer_names_the_runner_up():
    top = reading.top_k([0.0, 0.45, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.15, 0.0])
    assert (
        reading.summary(top)
        == "The model reads **1** (45.0% sure). It might also be a 7 (40.0%): try drawing it larger and clearer."
    )


@pytest.mark.unit
@pytest.mark.parametrize("bad", [np.ones(9) / 9, [float("nan")] * 10])
def test_top_three_rejects_what_is_not_ten_probabilities(bad):
    with pytest.raises(AppError, match="expected ten finite probabilities"):
        reading.top_k(bad)


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [None, {"background": None, "layers": [], "composite": None}, {"composite": Image.new("L", (448, 448), 255)}],
    ids=["no value", "no composite", "white canvas"],
)
def test_an_empty_canvas_gets_a_message_not_a_prediction(value):
    predictor = FakePredictor()
    assert reading.read_drawing(value, predictor) == (None, None, reading.EMPTY_MESSAGE)
    assert predictor.sent == []


@pytest.mark.unit
def test_a_speck_is_no_digit_either():
    speck = Image.new("L", (448, 448), 255)
    speck.putpixel((200, 200), 0)
    predictor = FakePredictor()
    top, seen, message = reading.read_drawing({"composite": speck}, predictor)
    assert top is None and seen is None and message.startswith("No digit found: ")
    assert predictor.sent == []


@pytest.mark.unit
def test_a_drawing_is_sent_as_base64_png_and_previewed_with_the_models_preprocessing():
    predictor = FakePredictor()
    for digit, strokes in STROKES.items():  # each drawing gets its own answer: the model's, for that drawing
        drawing = ink_on_paper(strokes)
        top, seen, message = reading.read_drawing({"background": None, "layers": [], "composite": drawing}, predictor)
        assert list(top)[0] == digit and message.startswith(f"The model reads **{digit}** (91.0% sure)")
        sent = predictor.sent[-1]
        assert base64.b64decode(sent)[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(base64.b64decode(sent)))), np.asarray(drawing)
        )  # lossless
        # The preview is exactly preprocess.to_mnist of what was sent, blown up with square pixels.
        assert seen.size == (reading.PREVIEW_SIDE, reading.PREVIEW_SIDE)
        assert np.array_equal(np.asarray(seen.resize((28, 28), Image.Resampling.NEAREST)), to_mnist(sent))
    assert len(predictor.sent) == len(STROKES)  # one request per drawing


@pytest.mark.unit
def test_an_upload_is_sent_as_its_own_bytes(tmp_path):
    predictor = FakePredictor()
    for digit, strokes in STROKES.items():
        path = tmp_path / f"drawn-{digit}.jpg"
        ink_on_paper(strokes).save(path, format="JPEG", quality=80)
        top, seen, message = reading.read_upload(str(path), predictor)
        assert base64.b64decode(predictor.sent[-1]) == path.read_bytes()
        assert list(top)[0] == digit and seen is not None
        assert np.array_equal(np.asarray(seen.resize((28, 28), Image.Resampling.NEAREST)), to_mnist(path.read_bytes()))
    sent = len(predictor.sent)
    assert reading.read_upload(None, predictor)[2] == reading.NO_UPLOAD_MESSAGE
    assert len(predictor.sent) == sent  # no upload: nothing is sent


@pytest.mark.unit
def test_an_upload_that_is_not_png_or_jpeg_says_so(tmp_path):
    path = tmp_path / "seven.gif"
    ink_on_paper(SEVEN).save(path, format="GIF")
    top, seen, message = reading.read_upload(str(path), FakePredictor())
    assert top is None and seen is None
    assert message.startswith("The data is not a PNG or JPEG image")


@pytest.mark.unit
def test_model_errors_become_the_message_and_the_preview_stays():
    predictor = FakePredictor(error=AppError("cannot reach the endpoint http://127.0.0.1:9 (refused)"))
    top, seen, message = reading.read_drawing({"composite": ink_on_paper(SEVEN)}, predictor)
    assert top is None and seen is not None
    assert message == "Cannot reach the endpoint http://127.0.0.1:9 (refused)."


@pytest.mark.unit
def test_no_champion_message_says_how_to_make_one():
    no_model = clients.load_error_message(
        "models:/digits-cnn@champion", "RESOURCE_DOES_NOT_EXIST", "Registered Model with name=digits-cnn not found"
    )
    assert (
        no_model
        == "`models:/digits-cnn@champion` is not in the registry yet: train and register one with `make run` (or `digits main`), then read again (no restart needed)."
    )
    no_alias = clients.load_error_message(
        "models:/digits-cnn@champion", "INVALID_PARAMETER_VALUE", "Registered model alias champion not found."
    )
    assert no_alias.startswith(
        "no version of `digits-cnn` has the alias `champion` yet: train and register one with `make run`"
    )
    assert "`digits register --model_name digits-cnn --alias champion --version N`" in no_alias
    other = clients.load_error_message(
        "models:/digits-cnn@champion", "INTERNAL_ERROR", "database is locked\ntraceback..."
    )
    assert other == "cannot load `models:/digits-cnn@champion`: database is locked"


@pytest.mark.unit
def test_no_champion_in_a_real_empty_registry(tracking_uri):
    predictor = RegistryModel()  # must not raise: the app starts and says what is missing
    assert predictor.error.startswith("`models:/digits-cnn@champion` is not in the registry yet")
    assert predictor.status().startswith(
        "**No model to ask yet:** `models:/digits-cnn@champion` is not in the registry yet"
    )
    top, seen, message = reading.read_drawing({"composite": ink_on_paper(SEVEN)}, predictor)
    assert top is None and seen is not None and "make run" in message


@pytest.mark.unit
@pytest.mark.parametrize("url", ["127.0.0.1:5001", "ftp://host:21", "http://", ""])
def test_endpoint_must_be_an_http_url(url):
    with pytest.raises(AppError, match="--endpoint must be an http"):
        EndpointModel(url)


def endpoint_probabilities(picture: str) -> list[float]:
    """What the fake endpoint answers for ``picture``: its digit is the length of the text, modulo 10."""
    p = [0.01] * 10
    p[len(picture) % 10] = 0.91
    return p


class _FakeEndpoint(BaseHTTPRequestHandler):
    """Answers /invocations like the scoring server: predictions as records (a digit that depends on the picture
    sent), or a 400 with a message."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "content_type": self.headers["Content-Type"], "body": body})
        picture = body["dataframe_split"]["data"][0][0]
        if picture == "bad":
            self._answer(
                400,
                {
                    "error_code": "BAD_REQUEST",
                    "message": "image 0: the text is not valid base64 (Incorrect padding)\nmore",
                },
            )
        else:
            p = endpoint_probabilities(picture)
            self._answer(200, {"predictions": [{"digit": int(np.argmax(p)), "confidence": max(p), "probabilities": p}]})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.mark.unit
def test_the_endpoint_gets_the_request_a_client_sends_and_its_errors_come_back_as_one_line():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _FakeEndpoint.requests.clear()
        endpoint = EndpointModel(f"http://127.0.0.1:{server.server_port}/")
        for picture, digit in (("abc", 3), ("abcdefg", 7)):  # the answer is the endpoint's for the picture sent
            probabilities = endpoint.predict(picture)
            np.testing.assert_array_equal(probabilities, endpoint_probabilities(picture))
            assert probabilities.argmax() == digit
        first, second = _FakeEndpoint.requests
        assert first["path"] == "/invocations" and first["content_type"] == "application/json"
        assert first["body"] == {"dataframe_split": {"columns": ["image"], "data": [["abc"]]}}
        assert second["body"] == {"dataframe_split": {"columns": ["image"], "data": [["abcdefg"]]}}
        with pytest.raises(InputError) as info:
            endpoint.predict("bad")
        assert str(info.value) == "image 0: the text is not valid base64 (Incorrect padding)"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.unit
def test_an_unreachable_endpoint_is_a_message():
    port = free_port()
    endpoint = EndpointModel(f"http://127.0.0.1:{port}")
    with pytest.raises(
        AppError, match=rf"cannot reach the endpoint http://127.0.0.1:{port} .*is `mlflow models serve` running there\?"
    ):
        endpoint.predict("abc")
    assert endpoint.status().startswith("**The endpoint does not answer.**")


@pytest.mark.unit
def test_app_flags_and_their_defaults():
    args = build_parser().parse_args(["app"])
    assert (args.model_uri, args.endpoint, args.host, args.port, args.share) == (
        "models:/digits-cnn@champion",
        "",
        "127.0.0.1",
        7860,
        False,
    )
    args = build_parser().parse_args(
        [
            "app",
            "--model-uri",
            "models:/digits-cnn/3",
            "--endpoint",
            "http://127.0.0.1:5001",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--share",
        ]
    )
    assert (args.model_uri, args.endpoint, args.host, args.port, args.share) == (
        "models:/digits-cnn/3",
        "http://127.0.0.1:5001",
        "0.0.0.0",
        8000,
        True,
    )


@pytest.mark.data  # importing Gradio takes seconds
def test_the_page_builds_with_its_parts():
    demo = app.build_app(FakePredictor())
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"sketch", "read", "upload", "message", "top", "seen", "status"} <= ids
    assert demo.title == app.TITLE


# --- e2e: the real app in a real browser -----------------------------------------------------------------------

# Mouse moves per segment of a stroke. Each move costs a software-rendered WebGL frame (a fraction of a second on
# two busy cores); the brush fills the straight line between two moves anyway.
STEPS = 3


def subprocess_env(uri: str, root: Path) -> dict[str, str]:
    # The scoring server starts `uvicorn` from PATH: this venv's bin first. Gradio: no analytics, temp files in root.
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
    }


class Server:
    """A subprocess in its own session that answers ``ready_path`` over HTTP; stopped with its children."""

    def __init__(self, name: str, command: list[str], url: str, ready_path: str, env: dict[str, str], root: Path):
        self.name, self.url, self.log_path = name, url, root / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, env=env, cwd=root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{name} did not start: {self.output()[-3000:]}")
            time.sleep(0.5)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: it and anything it started
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def start_app(name: str, root: Path, uri: str, *flags: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "digits", "app", "--port", str(port), *flags]
    return Server(name, command, f"http://127.0.0.1:{port}", "/", subprocess_env(uri, root), root)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An empty sqlite tracking store and artifact folder, set for this process and the servers it starts."""
    root = tmp_path_factory.mktemp("app")
    with isolated_store(root, "app-tests") as (uri, experiment):
        yield {"uri": uri, "root": root, "experiment": experiment}


@pytest.fixture(scope="module")
def trained(mnist, store):
    """A small real CNN (2 epochs on 10,000 images, about 98% on the test set) saved as a checkpoint, not registered."""
    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit
    from digits.serve.model import predict_proba, save_checkpoint

    config = TrainConfig(epochs=2, subset=10000, width=16, seed=0, device="cpu")
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    model = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
    accuracy = float((predict_proba(model, mnist.test_images[:2000]).argmax(1) == mnist.test_labels[:2000]).mean())
    assert accuracy > 0.95
    return {
        "checkpoint": save_checkpoint(model, config, store["root"] / "checkpoint"),
        "accuracy": accuracy,
        "digest": mnist.digest,
    }


def register_champion(store, trained) -> None:
    """Log and register the trained CNN as champion, unless a champion exists already."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from digits.mlops.registry import log_cnn_model, register_model

    if any("champion" in m.aliases for m in MlflowClient().search_registered_models()):
        return
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        info = log_cnn_model(trained["checkpoint"])
    assert register_model(
        info.model_uri, test_accuracy=trained["accuracy"], run_id=run.info.run_id, data_digest=trained["digest"]
    ).promoted


@pytest.fixture(scope="module")
def registry_app(store):
    """`digits app` with its defaults (the champion of the registry), started while the registry is still empty."""
    server = start_app("registry-app", store["root"], store["uri"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(store):
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser), with a fresh profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(store["root"] / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1200, "height": 860},
        )
        context.set_default_timeout(60_000)  # two shared CPU cores: a first answer can take seconds
        context.outside = []  # requests the pages made anywhere but the local servers (fonts, analytics, CDNs)
        context.on(
            "request",
            lambda r: (
                None if r.url.startswith(("http://127.0.0.1:", "data:", "blob:")) else context.outside.append(r.url)
            ),
        )
        yield context
        context.close()


def open_app(browser, url: str):
    page = browser.new_page()
    page.goto(url)
    # The app selects the brush for the user; the canvas is ready for strokes once it is highlighted.
    page.wait_for_selector('#sketch button[aria-label="Brush"].highlight')
    page.wait_for_function("document.querySelector('#status')?.innerText.trim().length > 0")
    return page


def draw(page, strokes) -> None:
    """Real mouse strokes (down, moves in small steps, up) on the drawing area, centred in the canvas element."""
    box = page.locator("#sketch canvas").first.bounding_box()
    side = 0.7 * min(box["width"], box["height"])  # inside the white drawing area, whatever the zoom
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    for stroke in strokes:
        (x, y), rest = stroke[0], stroke[1:]
        page.mouse.move(left + x * side, top + y * side)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(left + x * side, top + y * side, steps=STEPS)
        page.mouse.up()


def message_contains(page, text: str) -> None:
    """Wait for the message, then for the answer to settle: no output faded as pending, the preview image loaded."""
    page.wait_for_function("t => document.querySelector('#message')?.innerText.includes(t)", arg=text)
    page.wait_for_function(
        "() => !document.querySelector('.pending, .generating')"
        " && [...document.querySelectorAll('#seen img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def press_read(page, expect: str) -> str:
    page.click("#read")
    message_contains(page, expect)
    return page.inner_text("#message").strip()


def clear(page) -> None:
    """Empty the canvas, and the message with it: reading an empty canvas must answer with the empty-canvas message."""
    page.click('#sketch button[aria-label="Clear canvas"]')
    assert press_read(page, "The canvas is empty") == reading.EMPTY_MESSAGE.replace("**", "")
    page.wait_for_selector('#sketch button[aria-label="Brush"].highlight')


def top_three(page) -> list[tuple[str, str]]:
    """The digits and confidences the page shows, best first (the confidences as the page holds them, exactly)."""
    sets = page.locator('#top [data-testid$="-confidence-set"]')
    return [
        (s.get_attribute("data-testid").split("-")[0], s.locator("meter").get_attribute("value")) for s in sets.all()
    ]


def answer(page) -> tuple[str, list[tuple[str, str]]]:
    return page.inner_text('#top [data-testid="label-output-value"]').strip(), top_three(page)


def mnist_picture(mnist, digit: int, path: Path) -> Path:
    """A real MNIST test digit as a user's picture: dark ink on white paper, 8x larger, saved as PNG."""
    index = int(np.flatnonzero(mnist.test_labels == digit)[0])
    Image.fromarray(255 - mnist.test_images[index]).resize((224, 224), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.mark.e2e
def test_draw_and_upload_digits_in_a_real_browser(registry_app, browser, store, trained, mnist):
    started = time.monotonic()
    page = open_app(browser, registry_app.url)

    # No champion yet: the app runs, and the page says so and how to make one.
    assert "No model to ask yet: models:/digits-cnn@champion is not in the registry yet" in page.inner_text("#status")
    assert "make run" in page.inner_text("#status")
    assert press_read(page, "The canvas is empty") == reading.EMPTY_MESSAGE.replace("**", "")
    draw(page, STROKES["7"])
    assert "make run" in press_read(page, "models:/digits-cnn@champion is not in the registry yet")
    page.screenshot(path=str(store["root"] / "no-champion.png"), full_page=True)

    # A champion registered while the app runs is used for the next drawing, without a restart.
    register_champion(store, trained)
    message = press_read(page, "The model reads")
    digit, top = answer(page)
    assert digit == "7", f"the 7 was read as {top}; see the 28x28 preview in {store['root']}"
    assert message.startswith("The model reads 7 (") and len(top) == 3
    page.reload()  # a fresh page for the README's screenshot, which shows the status line of a working app
    page.wait_for_selector('#sketch button[aria-label="Brush"].highlight')
    page.wait_for_function("document.querySelector('#status')?.innerText.includes('Reading with model')")
    draw(page, STROKES["7"])
    press_read(page, "The model reads")
    screenshot = store["root"] / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("DIGITS_APP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DIGITS_APP_SCREENSHOT"])

    for expected in ("1", "0"):
        clear(page)
        draw(page, STROKES[expected])
        press_read(page, "The model reads")
        digit, top = answer(page)
        page.screenshot(path=str(store["root"] / f"drawn-{expected}.png"))
        assert digit == expected, f"the {expected} was read as {top}; see {store['root']}/drawn-{expected}.png"

    # An uploaded PNG: a real MNIST 2 as a picture of dark ink on paper.
    clear(page)
    page.set_input_files('#upload input[type="file"]', str(mnist_picture(mnist, 2, store["root"] / "two.png")))
    message_contains(page, "The model reads")  # an upload is read at once, without the button
    digit, top = answer(page)
    assert digit == "2", f"the uploaded 2 was read as {top}"
    assert page.locator("#seen img").count() == 1  # the 28x28 preview is shown
    assert browser.outside == [], "the page reached outside this machine"
    print(f"browser test: {time.monotonic() - started:.1f}s after the app started")


@pytest.mark.e2e
def test_the_endpoint_and_the_registry_give_the_same_answer(registry_app, browser, store, trained, mnist):
    register_champion(store, trained)
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [
        mlflow_cli,
        "models",
        "serve",
        "-m",
        "models:/digits-cnn@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    served = Server(
        "scoring-server",
        command,
        f"http://127.0.0.1:{port}",
        "/ping",
        subprocess_env(store["uri"], store["root"]),
        store["root"],
    )
    try:
        endpoint_app = start_app("endpoint-app", store["root"], store["uri"], "--endpoint", served.url)
        try:
            answers = []
            for url in (registry_app.url, endpoint_app.url):
                page = open_app(browser, url)
                draw(page, STROKES["7"])
                answers.append((press_read(page, "The model reads"), answer(page), page.inner_text("#status")))
                page.close()
            (
                (registry_message, registry_answer, registry_status),
                (endpoint_message, endpoint_answer, endpoint_status),
            ) = answers
            assert (
                registry_status.startswith("Reading with model")
                and endpoint_status == f"Reading with endpoint {served.url}."
            )
            assert registry_answer[0] == "7"
            assert (endpoint_message, endpoint_answer) == (registry_message, registry_answer)
        finally:
            endpoint_app.stop()
        # The same picture, in-process: the very same ten probabilities from both.
        picture = base64.b64encode(mnist_picture(mnist, 2, store["root"] / "two.png").read_bytes()).decode()
        assert np.array_equal(RegistryModel().predict(picture), EndpointModel(served.url).predict(picture))
    finally:
        served.stop()

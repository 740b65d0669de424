"""The feedback loop: the store (crash-safe appends), curation, export/import, training on an export, the app's buttons."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits.feedback import store as feedback
from digits.feedback.store import FeedbackError, Store
from tests.conftest import ROOT, digits_command, fake_digits, tiny_reader_flags


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return fake_digits(n, np.random.default_rng(seed))


def filled_store(root: Path, n: int = 12) -> tuple[Store, np.ndarray, np.ndarray]:
    store = Store(root)
    x, y = images(n)
    for i, (image, label) in enumerate(zip(x, y)):
        store.record(
            mnist=image,
            label=int(label),
            model="digits-cnn/3",
            prediction=int(label) if i % 3 else (int(label) + 1) % 10,
            confidence=0.9,
            picture=feedback_png(image),
        )
    return store, x, y


def feedback_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((112, 112)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- unit: store, curation, export and import ----------------------------------------------------------------------


@pytest.mark.unit
def test_an_entry_holds_the_answer_and_the_picture_and_nothing_personal(tmp_path):
    store = Store(tmp_path / "fb")
    x, _ = images(1)
    picture = feedback_png(x[0])
    entry = store.record(mnist=x[0], label=7, model="digits-cnn/3", prediction=1, confidence=0.62, picture=picture)
    [back], skipped = store.entries()
    assert skipped == 0 and back == entry
    assert set(entry) == {
        "id",
        "time",
        "image_digest",
        "mnist",
        "label",
        "model",
        "source",
        "prediction",
        "confidence",
        "picture",
    }
    assert (entry["label"], entry["prediction"], entry["confidence"], entry["model"]) == (7, 1, 0.62, "digits-cnn/3")
    assert (tmp_path / "fb" / entry["picture"]).read_bytes() == picture
    assert np.array_equal(feedback.entry_image(back), x[0])
    assert entry["time"].endswith("+00:00")


@pytest.mark.unit
def test_export_then_import_keeps_every_image_and_label_bit_exact(tmp_path):
    store, x, y = filled_store(tmp_path / "mine")
    store.record(mnist=x[0], label=int(y[0]), model="digits-cnn/4")  # a duplicate: collapses
    curated = feedback.curate(*store.entries())
    assert curated.entries == 13 and len(curated.digests) == 12 and not curated.conflicts
    manifest = feedback.export(curated, tmp_path / "out" / "fb.npz")
    assert manifest["count"] == 12 and manifest["per_label"] == {str(d): int((y == d).sum()) for d in range(10)}
    assert json.loads((tmp_path / "out" / "fb.json").read_text()) == manifest
    loaded = feedback.load_export(tmp_path / "out" / "fb.npz")
    assert loaded.images.dtype == np.uint8 and np.array_equal(loaded.images, x) and np.array_equal(loaded.labels, y)

    theirs = Store(tmp_path / "theirs")
    assert feedback.import_export(theirs, loaded) == (12, 0)
    assert feedback.import_export(theirs, loaded) == (0, 12)  # importing again adds nothing
    again = feedback.curate(*theirs.entries())
    assert np.array_equal(again.images, x) and np.array_equal(again.labels, y)
    assert (
        feedback.export(again, tmp_path / "again.npz")["version"] == manifest["version"]
    )  # same content, same version


@pytest.mark.unit
def test_a_contradicting_label_is_flagged_and_left_out_of_the_export(tmp_path):
    store, x, y = filled_store(tmp_path / "fb", n=5)
    store.record(mnist=x[2], label=(int(y[2]) + 5) % 10, model="digits-cnn/3")
    curated = feedback.curate(*store.entries())
    digest = feedback.image_digest(x[2])
    assert curated.conflicts == {digest: sorted({int(y[2]), (int(y[2]) + 5) % 10})}
    assert digest not in curated.digests and len(curated.labels) == 4
    text = feedback.describe(curated)
    assert "4 to export, 1 with conflicting labels (not exported)" in text
    assert f"conflict: image {digest[:12]} labelled" in text and "digits-cnn/3: 6" in text


@pytest.mark.unit
def test_a_line_cut_short_is_skipped_and_the_next_append_is_read_back(tmp_path):
    store, x, y = filled_store(tmp_path / "fb", n=3)
    raw = store.table.read_bytes()
    store.table.write_bytes(raw[: len(raw) - 40])  # the last line half-written, as a crash leaves it
    entries, skipped = store.entries()
    assert len(entries) == 2 and skipped == 1
    assert [e["label"] for e in entries] == [int(v) for v in y[:2]]
    store.record(mnist=x[2], label=int(y[2]), model="m")
    entries, skipped = store.entries()
    assert len(entries) == 3 and skipped == 1 and entries[-1]["model"] == "m"


@pytest.mark.unit
def test_an_altered_line_fails_its_checksum(tmp_path):
    store, _, _ = filled_store(tmp_path / "fb", n=3)
    lines = store.table.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"model":"digits-cnn/3"', '"model":"digits-cnn/4"')  # still JSON, not what was written
    store.table.write_text("".join(lines))
    entries, skipped = store.entries()
    assert len(entries) == 2 and skipped == 1


@pytest.mark.unit
def test_a_writer_killed_mid_append_leaves_the_complete_entries_only(tmp_path):
    store, _, _ = filled_store(tmp_path / "fb", n=4)
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from digits.feedback import store as feedback
        store = feedback.Store({str(tmp_path / "fb")!r})
        line = feedback._line({{"id": "x", "label": 3, "image_digest": "0", "mnist": "", "model": "m"}})
        fd = os.open(store.table, os.O_WRONLY | os.O_APPEND)
        os.write(fd, line[: len(line) // 2])  # half of the entry reaches the file...
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the writer dies
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == -9
    entries, skipped = store.entries()
    assert len(entries) == 4 and skipped == 1
    x, _ = images(1, seed=5)
    store.record(mnist=x[0], label=4, model="after")
    entries, skipped = store.entries()
    assert len(entries) == 5 and entries[-1]["model"] == "after" and skipped == 1


@pytest.mark.unit
def test_the_held_out_part_is_a_seeded_fifth_of_the_digests_with_every_copy(tmp_path):
    x, _ = images(50)
    doubled = np.concatenate([x, x[:10]])
    held = feedback.split_by_digest(doubled, seed=0)
    assert held[:50].sum() == 10 and np.array_equal(held[50:], held[:10])
    assert np.array_equal(held, feedback.split_by_digest(doubled, seed=0))
    assert not np.array_equal(held, feedback.split_by_digest(doubled, seed=1))
    assert feedback.split_by_digest(x[:1], seed=0).sum() == 0 and feedback.split_by_digest(x[:2], seed=0).sum() == 1


@pytest.mark.unit
def test_the_default_store_is_beside_the_tracking_store():
    assert feedback.default_dir("sqlite:////tmp/fb/mlflow.db") == Path("/tmp/fb/feedback")
    assert feedback.default_dir("http://127.0.0.1:5000") == Path.home() / ".cache" / "digits" / "feedback"


def _export(tmp_path: Path, n: int = 10) -> Path:
    store, _, _ = filled_store(tmp_path / "src", n=n)
    feedback.export(feedback.curate(*store.entries()), tmp_path / "fb.npz")
    return tmp_path / "fb.npz"


@pytest.mark.unit
@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip", "does not match its manifest's"),
        ("no-manifest", "fb.json: file not found"),
        ("bad-manifest", "fb.json: not a feedback manifest"),
        ("missing", "fb.npz: no such export file"),
        ("not-npz", "fb.npz: not a feedback export"),
    ],
)
def test_a_bad_export_is_refused_with_one_line(tmp_path, damage, message):
    path = _export(tmp_path)
    manifest = feedback.manifest_path(path)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "no-manifest":
        manifest.unlink()
    elif damage == "bad-manifest":
        manifest.write_text("{not json")
    elif damage == "missing":
        path.unlink()
    else:  # a file whose digest matches but is no npz
        path.write_bytes(b"hello")
        meta = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**meta, "sha256": __import__("hashlib").sha256(b"hello").hexdigest()}))
    with pytest.raises(FeedbackError, match=message) as info:
        feedback.load_export(path)
    assert "\n" not in str(info.value)


@pytest.mark.unit
def test_feedback_commands_list_export_import(tmp_path, capsys):
    from workflow.cli import main

    filled_store(tmp_path / "fb", n=6)
    assert main(["feedback", "list", "--feedback_dir", str(tmp_path / "fb")]) == 0
    out = capsys.readouterr().out
    assert "6 entries, 6 distinct images: 6 to export" in out and "digits-cnn/3: 6" in out
    assert main(["feedback", "export", str(tmp_path / "x.npz"), "--feedback_dir", str(tmp_path / "fb")]) == 0
    assert "6 images, version" in capsys.readouterr().out
    assert main(["feedback", "import", str(tmp_path / "x.npz"), "--feedback_dir", str(tmp_path / "other")]) == 0
    assert "imported 6 entries" in capsys.readouterr().out
    assert main(["feedback", "export", str(tmp_path / "x.zip"), "--feedback_dir", str(tmp_path / "fb")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"digits feedback: error: the export must be a .npz file, got {tmp_path / 'x.zip'}"
    )
    assert main(["feedback", "export", str(tmp_path / "y.npz"), "--feedback_dir", str(tmp_path / "empty")]) == 1
    assert "nothing to export" in capsys.readouterr().err
    assert main(["feedback", "import", "--feedback_dir", str(tmp_path / "fb")]) == 2


@pytest.mark.unit
def test_bad_inputs_from_the_command_line_are_one_line_without_a_traceback(tmp_path, fake_mnist_dir):
    path = _export(tmp_path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    for args, code in (
        (["feedback", "import", str(path), "--feedback_dir", str(tmp_path / "fb")], 1),
        (["train", "--extra_data", "feedback.csv"], 2),
        (
            [
                "train",
                "--extra_data",
                str(tmp_path / "missing.npz"),
                "--data_dir",
                str(fake_mnist_dir),
                "--val_size",
                "100",
            ],
            1,
        ),
    ):
        result = subprocess.run(digits_command(*args), capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == code, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert ("does not match" in result.stderr) if code == 1 and "import" in args else True
        assert "missing.npz" in result.stderr if "missing" in args[2] else True


@pytest.mark.unit
def test_extra_data_joins_the_training_split_only(tmp_path, fake_mnist_dir):
    from digits.core.config import TrainConfig
    from workflow.pipeline import load_data

    path = _export(tmp_path, n=10)
    plain_mnist, plain = load_data(TrainConfig(data_dir=str(fake_mnist_dir), val_size=100))
    mnist, split = load_data(TrainConfig(data_dir=str(fake_mnist_dir), val_size=100, extra_data=str(path)))
    assert len(split.train) == len(plain.train) + 8 and np.array_equal(split.val, plain.val)  # 2 of 10 held out
    assert np.array_equal(mnist.test_images, plain_mnist.test_images) and mnist.digest != plain_mnist.digest
    x, _ = images(10)
    held = feedback.split_by_digest(x, seed=0)
    assert np.array_equal(mnist.train_images[len(plain_mnist.train_images) :], x[~held])


# --- unit: the app's buttons, without a browser ---------------------------------------------------------------------


@pytest.mark.unit
def test_the_buttons_store_the_answer_with_the_label_given(tmp_path):
    from digits.app import feedback as app_feedback
    from digits.app import reading
    from digits.serve.preprocess import to_mnist
    from tests.test_app import SEVEN, FakePredictor, ink_on_paper

    store = Store(tmp_path / "fb")
    predictor = FakePredictor()
    assert app_feedback.save(store, None, "3") == (None, app_feedback.NOTHING)
    top, seen, message, pending, said = app_feedback.read_drawing({"composite": ink_on_paper(SEVEN)}, predictor)
    assert list(top)[0] == "7" and pending["prediction"] == 7 and said == app_feedback.ASK
    assert app_feedback.save(store, pending, None)[1] == app_feedback.CHOOSE
    state, said = app_feedback.save(store, pending, "1")
    assert state is None and said == "Thanks: saved as a 1 (the model read 7)."
    [entry], _ = store.entries()
    sent = predictor.sent[-1]
    assert (entry["label"], entry["prediction"], entry["confidence"]) == (1, 7, pytest.approx(0.91))
    assert (store.root / entry["picture"]).read_bytes() == base64.b64decode(sent)
    assert np.array_equal(feedback.entry_image(entry), to_mnist(sent))
    assert entry["model"] == "a fake"
    assert app_feedback.read_drawing(None, predictor)[3] is None  # an empty canvas: nothing to give feedback on
    assert reading.read_drawing(None, predictor) == app_feedback.read_drawing(None, predictor)[:3]


@pytest.mark.unit
def test_app_feedback_flags():
    from workflow.cli import build_parser
    from workflow.commands import _feedback_store

    args = build_parser().parse_args(["app"])
    assert (args.feedback_dir, args.no_feedback) == ("", False)
    assert _feedback_store(build_parser().parse_args(["app", "--no-feedback"])) is None
    assert _feedback_store(build_parser().parse_args(["app", "--feedback_dir", "/tmp/x"])).root == Path("/tmp/x")


# --- data: a real training run on an export --------------------------------------------------------------------------


def _inputs(run) -> dict[str, tuple[str, int]]:
    """context -> (digest, rows) of each dataset input of ``run``."""
    out = {}
    for item in run.inputs.dataset_inputs:
        context = next(t.value for t in item.tags if t.key == "mlflow.data.context")
        rows = json.loads(item.dataset.profile)["targets_shape"][0]  # the count of images, as the MLflow UI shows it
        out[f"{item.dataset.name}:{context}"] = (item.dataset.digest, rows)
    return out


@pytest.mark.data
def test_extra_data_changes_the_logged_training_set_and_adds_feedback_accuracy(tmp_path, fake_mnist_dir, tracking_uri):
    import mlflow

    from workflow.cli import main

    path = _export(tmp_path, n=20)
    common = [
        "train",
        "--data_dir",
        str(fake_mnist_dir),
        "--val_size",
        "100",
        "--epochs",
        "1",
        "--width",
        "4",
        "--blocks",
        "1",
        "--batch_size",
        "64",
        "--augment",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    assert main(common) == 0
    assert main([*common, "--extra_data", str(path)]) == 0
    plain, extra = sorted(
        mlflow.search_runs(experiment_names=["digits"], output_format="list"), key=lambda r: r.info.start_time
    )
    before, after = _inputs(plain), _inputs(extra)
    assert before["mnist-training:training"][0] != after["mnist-training:training"][0]
    assert after["mnist-training:training"][1] == before["mnist-training:training"][1] + 16  # 4 of 20 held out
    assert before["mnist-validation:validation"] == after["mnist-validation:validation"]
    assert before["mnist-testing:testing"] == after["mnist-testing:testing"]  # never the test set
    version = feedback.load_export(path).manifest["version"]
    assert (
        after[f"feedback-{version}:feedback-training"][1] == 16
        and after[f"feedback-{version}:feedback-evaluation"][1] == 4
    )
    assert 0 <= extra.data.metrics["feedback_accuracy"] <= 1 and extra.data.metrics["feedback_heldout_images"] == 4
    assert "feedback_accuracy" not in plain.data.metrics
    assert extra.data.params["extra_data"] == str(path) and extra.data.tags["feedback_version"] == version


# --- e2e: correcting an answer in a real browser ---------------------------------------------------------------------

from tests.test_app import browser, store  # noqa: E402,F401,F811 - the real-browser fixtures, shared


@pytest.fixture
def fake_endpoint():
    """A scoring server stand-in (tests.test_app's): the digit it answers is the picture's length modulo 10."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_app import _FakeEndpoint

    class WithPing(_FakeEndpoint):
        def do_GET(self):  # noqa: N802 - /ping, as the scoring server answers it
            self._answer(200, {})

    server = ThreadingHTTPServer(("127.0.0.1", 0), WithPing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
def test_correct_and_confirm_answers_in_a_real_browser(browser, store, fake_endpoint, tmp_path):  # noqa: F811
    from tests.test_app import STROKES, answer, draw, open_app, press_read, start_app

    server = start_app(
        "feedback-app", store["root"], store["uri"], "--endpoint", fake_endpoint, "--feedback_dir", str(tmp_path / "fb")
    )
    try:
        page = open_app(browser, server.url)
        page.click("#fb_wrong")  # nothing read yet
        page.wait_for_function(
            "t => document.querySelector('#fb_message')?.innerText.includes(t)", arg="Read a drawing"
        )
        draw(page, STROKES["7"])
        press_read(page, "The model reads")
        digit, _ = answer(page)
        wrong = (int(digit) + 1) % 10  # "that's wrong, it was a ..."
        page.locator("#fb_label label").filter(has_text=str(wrong)).first.click()
        page.click("#fb_wrong")
        page.wait_for_function(
            "t => document.querySelector('#fb_message')?.innerText.includes(t)", arg=f"saved as a {wrong}"
        )
        page.wait_for_function(
            "() => !document.querySelector('#fb_label input:checked')"
        )  # cleared for the next answer
        draw(page, STROKES["1"])  # a second answer, confirmed
        press_read(page, "The model reads")
        second, _ = answer(page)
        page.click("#fb_right")
        page.wait_for_function(
            "t => document.querySelector('#fb_message')?.innerText.includes(t)", arg="as the model read it"
        )
    finally:
        server.stop()
    entries, skipped = Store(tmp_path / "fb").entries()
    assert skipped == 0 and [(e["label"], e["prediction"]) for e in entries] == [
        (wrong, int(digit)),
        (int(second), int(second)),
    ]
    for entry in entries:
        assert entry["model"] == f"endpoint {fake_endpoint}" and entry["source"] == "app"
        picture = (tmp_path / "fb" / entry["picture"]).read_bytes()
        assert picture[:8] == b"\x89PNG\r\n\x1a\n"
        from digits.serve.preprocess import to_mnist

        assert np.array_equal(feedback.entry_image(entry), to_mnist(picture))


@pytest.mark.unit
def test_the_model_card_says_what_feedback_the_model_trained_on():
    from digits.core.config import TrainConfig
    from digits.evaluate.report import feedback_text

    assert feedback_text(TrainConfig(), {}) == "None: trained on MNIST alone (`extra_data` empty)."
    text = feedback_text(
        TrainConfig(extra_data="fb.npz"),
        {"feedback_train_images": 80, "feedback_heldout_images": 20, "feedback_accuracy": 0.85},
    )
    assert text.startswith("From the export `fb.npz`: 80 images joined the training split and 20 ")
    assert "(`feedback_accuracy`): **85.00%**" in text and "MNIST test set alone" in text
    assert "no feedback image was held out" in feedback_text(
        TrainConfig(extra_data="fb.npz"), {"feedback_train_images": 1, "feedback_heldout_images": 0}
    )


@pytest.mark.data
def test_main_with_extra_data_shows_the_feedback_figures_in_the_card_and_keeps_the_promotion_rule(
    tmp_path, fake_mnist_dir, tracking_uri
):
    import mlflow

    from workflow.cli import main

    path = _export(tmp_path, n=20)
    assert (
        main(
            [
                "main",
                *tiny_reader_flags(),
                "--data_dir",
                str(fake_mnist_dir),
                "--val_size",
                "100",
                "--epochs",
                "1",
                "--width",
                "4",
                "--blocks",
                "1",
                "--batch_size",
                "64",
                "--augment",
                "0",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--n_trials",
                "0",
                "--extra_data",
                str(path),
            ]
        )
        == 0
    )
    [final] = mlflow.search_runs(
        experiment_names=["digits"], filter_string="tags.pipeline_step = 'final'", output_format="list"
    )
    assert final.data.metrics["feedback_heldout_images"] == 4 and "feedback_accuracy" in final.data.metrics
    card = mlflow.artifacts.load_text(f"runs:/{final.info.run_id}/model_card.md")
    assert "## Feedback data\n\nFrom the export `" in card and "16 images joined the training split and 4" in card
    assert "`feedback_accuracy`): **" in card
    version = mlflow.MlflowClient().get_model_version_by_alias(
        "digits-cnn", "champion"
    )  # the first model: champion by the MNIST test rule
    assert version.run_id == final.info.run_id


@pytest.mark.data  # importing Gradio takes seconds
def test_the_page_has_the_buttons_unless_feedback_is_off(tmp_path):
    from digits.app import page as app
    from tests.test_app import FakePredictor

    def ids(demo) -> set:
        return {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}

    assert {"fb_right", "fb_wrong", "fb_label", "fb_message", "read", "seen"} <= ids(
        app.build_app(FakePredictor(), Store(tmp_path))
    )
    assert not {"fb_right", "fb_wrong", "fb_label", "fb_message"} & ids(app.build_app(FakePredictor()))


@pytest.mark.unit
def test_the_answering_model_is_named_by_its_registered_version(tracking_uri, tmp_path):
    from types import SimpleNamespace

    import mlflow

    from digits.app.clients import EndpointModel
    from digits.app.feedback import model_label

    client = mlflow.MlflowClient()
    client.create_registered_model("digits-cnn")
    with mlflow.start_run(experiment_id=client.get_experiment_by_name("digits").experiment_id) as run:
        pass
    version = client.create_model_version("digits-cnn", str(tmp_path), run_id=run.info.run_id)
    client.set_registered_model_alias("digits-cnn", "champion", version.version)

    def loaded(run_id):
        return SimpleNamespace(
            model_uri="models:/digits-cnn@champion", _model=SimpleNamespace(metadata=SimpleNamespace(run_id=run_id))
        )

    assert model_label(loaded(run.info.run_id)) == f"digits-cnn/{version.version}"
    assert (
        model_label(loaded("other")) == "models:/digits-cnn@champion (run other: the alias moved since it was loaded)"
    )
    assert model_label(SimpleNamespace(model_uri="models:/digits-cnn/7", _model=object())) == "digits-cnn/7"
    assert (
        model_label(SimpleNamespace(model_uri="models:/digits-cnn@champion", _model=None))
        == "models:/digits-cnn@champion"
    )
    assert model_label(EndpointModel("http://127.0.0.1:5001/invocations")) == "endpoint http://127.0.0.1:5001"


@pytest.mark.unit
def test_two_writers_at_once_never_interleave_their_lines(tmp_path):
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from digits.feedback import store as feedback
        store = feedback.Store({str(tmp_path / "fb")!r})
        rng = np.random.default_rng(int(sys.argv[1]))
        for i in range(60):
            store.record(mnist=rng.integers(0, 256, (28, 28), dtype=np.uint8), label=i % 10, model=sys.argv[1], picture=rng.bytes(3000))
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(seed)], cwd=ROOT) for seed in (1, 2)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    entries, skipped = Store(tmp_path / "fb").entries()
    assert skipped == 0 and sorted(Counter(e["model"] for e in entries).items()) == [("1", 60), ("2", 60)]
    assert all((tmp_path / "fb" / e["picture"]).is_file() for e in entries)

"""The registry: the logged pyfunc (no pickle, bundled serving code, signature, example), promotion rule, roll-back."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from digits.core.config import TrainConfig
from digits.mlops import registry
from digits.mlops.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    log_cnn_model,
    register_baseline,
    register_model,
    set_alias,
)
from digits.serve import serving
from digits.serve.model import build_model, predict_proba, save_checkpoint
from tests.conftest import bundle_problems, import_closure, isolated_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_db_template):
    """One sqlite store and one logged (untrained, tiny) CNN for the module; each test registers its own model name."""
    root = tmp_path_factory.mktemp("registry")
    with isolated_store(root, "registry-tests", mlflow_db_template) as (_, experiment):
        checkpoint = save_checkpoint(
            build_model(TrainConfig(width=4, blocks=2)), TrainConfig(width=4, blocks=2), root / "ckpt"
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_cnn_model(checkpoint)
        yield {
            "uri": info.model_uri,
            "run_id": run.info.run_id,
            "experiment": experiment,
            "root": root,
            "checkpoint": checkpoint,
        }


@pytest.fixture
def name(request) -> str:
    return "m-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)


def register(store, name, accuracy):
    return register_model(
        store["uri"],
        model_name=name,
        test_accuracy=accuracy,
        run_id=store["run_id"],
        data_digest="d1g3st",
        git_commit="abc123",
    )


# --- the logged model ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_logged_model_has_no_pickle_and_carries_code_weights_signature_and_example(store):
    path = Path(mlflow.artifacts.download_artifacts(store["uri"], dst_path=str(store["root"] / "download")))
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files
    assert {f"code/digits/{m}" for m in registry.serving_files()} <= files
    assert {"artifacts/ckpt/weights.pt", "artifacts/ckpt/config.json", "serving_input_example.json"} <= files
    requirements = (path / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == sorted(registry.SERVING_REQUIREMENTS)
    assert all(re.fullmatch(r"[a-z]+==\d+(\.\d+)*", r) for r in requirements), requirements

    model = mlflow.pyfunc.load_model(store["uri"])
    assert model.metadata.get_input_schema().input_names() == ["image"]
    assert [(p.name, p.default) for p in model.metadata.get_params_schema().params] == [
        ("mode", "digit"),
        ("min_confidence", 0.0),
        ("length", 0),
        ("pattern", ""),
    ]
    assert model.metadata.get_output_schema().input_names() == [
        "digit",
        "confidence",
        "probabilities",
        "text",
        "digits",
        "unsure",
    ]
    example = json.loads((path / "serving_input_example.json").read_text())
    rows = example["dataframe_split"]["data"]
    assert isinstance(rows[0][0], str) and np.asarray(rows[1][0]).shape == (28, 28)  # a picture and pixel values
    out = model.predict(registry.input_example())
    assert list(out.columns) == ["digit", "confidence", "probabilities"] and len(out) == 2
    probabilities = np.asarray(out["probabilities"].tolist())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(out["confidence"], probabilities.max(axis=1))
    assert (out["digit"] == probabilities.argmax(axis=1)).all()


@pytest.mark.unit
def test_inference_model_gives_the_networks_probabilities():
    torch.manual_seed(0)
    network = build_model(TrainConfig(width=8, blocks=3)).eval()
    for module in network.modules():  # non-trivial batch-norm statistics, so folding them is really tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    expected = predict_proba(network, images)
    fast = serving.inference_model(copy.deepcopy(network))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    np.testing.assert_allclose(predict_proba(fast, images), expected, atol=1e-5)


@pytest.mark.unit
def test_serving_code_imports_nothing_from_training():
    allowed_third_party = {
        "numpy",
        "torch",
        "PIL",
        "pandas",
        "mlflow",
        "orjson",
        "scipy",
        "starlette",
    }  # starlette: the scoring server's own web framework
    assert bundle_problems(import_closure("serve/serving.py"), allowed_third_party) == []  # the torch model
    # The whole bundle: the same, and the ONNX model's onnxruntime (its own test checks it needs no torch).
    assert bundle_problems(registry.serving_files(), allowed_third_party | {"onnxruntime"}) == []


@pytest.mark.unit
def test_logging_needs_a_checkpoint_and_a_run(store, tmp_path):
    with pytest.raises(RegistryError, match="not a checkpoint: missing weights.pt, config.json"):
        log_cnn_model(tmp_path)
    with pytest.raises(RegistryError, match="needs an active MLflow run"):
        log_cnn_model(store["checkpoint"])


# --- the promotion rule ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_first_version_is_champion_and_is_tagged(store, name):
    promotion = register(store, name, 0.9)
    assert (promotion.version, promotion.promoted, promotion.alias) == (1, True, CHAMPION)
    client = MlflowClient()
    version = client.get_model_version_by_alias(name, CHAMPION)
    assert int(version.version) == 1
    assert version.tags["test_accuracy"] == "0.9"
    assert version.tags["source_run_id"] == store["run_id"]
    assert version.tags["data_digest"] == "d1g3st"
    assert version.tags["git_commit"] == "abc123"
    assert "first champion" in version.tags["promotion"]
    assert "first champion" in client.get_run(store["run_id"]).data.tags["promotion"]


@pytest.mark.unit
@pytest.mark.parametrize("accuracy", [0.85, 0.9])  # worse, and equal: only a strictly better version is promoted
def test_a_version_that_does_not_beat_the_champion_is_challenger(store, name, accuracy):
    register(store, name, 0.9)
    promotion = register(store, name, accuracy)
    assert (promotion.version, promotion.promoted, promotion.alias) == (2, False, CHALLENGER)
    assert "does not beat champion version 1 (test_accuracy 0.9000)" in promotion.reason
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 1
    assert int(client.get_model_version_by_alias(name, CHALLENGER).version) == 2
    assert client.get_run(store["run_id"]).data.tags["promotion"] == promotion.reason  # the run says why


@pytest.mark.unit
def test_a_better_version_takes_champion(store, name):
    register(store, name, 0.9)
    promotion = register(store, name, 0.95)
    assert (promotion.version, promotion.promoted, promotion.alias) == (2, True, CHAMPION)
    assert "beats champion version 1" in promotion.reason
    assert int(MlflowClient().get_model_version_by_alias(name, CHAMPION).version) == 2


@pytest.mark.unit
def test_a_champion_without_accuracy_is_not_replaced_silently(store, name):
    register(store, name, 0.9)
    MlflowClient().delete_model_version_tag(name, "1", "test_accuracy")
    promotion = register(store, name, 0.99)
    assert not promotion.promoted and "no test_accuracy tag" in promotion.reason


@pytest.mark.unit
def test_explicit_roll_back_and_promotion(store, name):
    register(store, name, 0.9)
    register(store, name, 0.95)
    assert set_alias(name, CHAMPION, 1) == 2  # roll back; returns where the alias was
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 1
    assert "set by hand" in client.get_model_version(name, "1").tags["promotion"]
    assert set_alias(name, CHAMPION, "2") == 1
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    "model, alias, version, message",
    [
        ("SELF", CHAMPION, 9, r"has no version 9 \(versions: 1\)"),
        ("no-such-model", CHAMPION, 1, "no registered model named 'no-such-model'"),
        ("SELF", CHAMPION, "two", "version must be a positive integer, got 'two'"),
        ("SELF", CHAMPION, 0, "version must be a positive integer"),
        ("SELF", "v1", 1, "cannot set alias 'v1'"),
    ],
)
def test_set_alias_errors_are_one_line(store, name, model, alias, version, message):
    register(store, name, 0.9)
    with pytest.raises(RegistryError, match=message) as info:
        set_alias(name if model == "SELF" else model, alias, version)
    assert "\n" not in str(info.value)


@pytest.mark.unit
def test_baseline_is_registered_under_its_own_name(store):
    promotion = register_baseline(store["uri"], test_accuracy=0.92, run_id=store["run_id"], data_digest="d1g3st")
    assert promotion.model_name == "digits-baseline" and promotion.promoted
    assert MlflowClient().get_model_version_by_alias("digits-baseline", CHAMPION).tags["test_accuracy"] == "0.92"


@pytest.mark.unit
@pytest.mark.parametrize("accuracy", [float("nan"), -0.1, 1.5])
def test_accuracy_must_be_a_fraction(store, name, accuracy):
    with pytest.raises(RegistryError, match="test_accuracy must be a number from 0 to 1"):
        register(store, name, accuracy)


@pytest.mark.unit
def test_git_commit_is_the_checked_out_commit_and_none_without_a_checkout_or_git(tmp_path, monkeypatch):
    git_path = shutil.which("git")
    if git_path is None:
        pytest.fail("this test needs git on PATH (it makes a repository to read the commit of)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
        return subprocess.run(
            [git_path, *identity, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
        )

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "file").write_text("one")
    git("add", "file", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", first)
    assert registry.current_git_commit(repo) == first
    (repo / "file").write_text("two")
    git("commit", "-q", "-am", "two", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert second != first and registry.current_git_commit(repo) == second  # the commit now, not a remembered one

    # The default is this package's own checkout, whatever that is here (None in an installed copy).
    package = Path(registry.__file__).resolve().parent
    here = git("rev-parse", "HEAD", cwd=package)
    assert registry.current_git_commit() == (here.stdout.strip() if here.returncode == 0 else None)

    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert registry.current_git_commit(outside) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))  # no git at all: None, not an exception
    assert registry.current_git_commit(repo) is None


# --- the CLI ---------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_cli_register_moves_an_alias_and_refuses_a_missing_version(store, name, capsys):
    from workflow.cli import main

    register(store, name, 0.9)
    register(store, name, 0.95)
    assert main(["register", "--model_name", name, "--alias", "champion", "--version", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{name}@champion -> version 1 (it was on version 2)"
    assert int(MlflowClient().get_model_version_by_alias(name, CHAMPION).version) == 1
    assert main(["register", "--model_name", name, "--alias", "champion", "--version", "7"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"digits register: error: {name} has no version 7 (versions: 1, 2)"
    assert main(["register", "--model_name", name]) == 2  # no --version: a usage error, one line
    assert (
        capsys.readouterr().err.strip()
        == "digits register: error: --version must be the number of a registered version (1, 2, ...), got 0"
    )


@pytest.mark.unit
def test_cli_predict_reads_image_files_through_the_registered_model(store, name, tmp_path, capsys):
    from workflow.cli import main

    register(store, name, 0.9)
    picture = tmp_path / "seven.png"
    example = registry.input_example()
    picture.write_bytes(base64.b64decode(example["image"][0]))
    assert main(["predict", str(picture), "--model_uri", f"models:/{name}@champion"]) == 0
    assert re.fullmatch(
        rf"{re.escape(str(picture))}: \d \(confidence (0|1)\.\d{{3}}\)", capsys.readouterr().out.strip()
    )
    # The reject option: below min_confidence the answer is "unsure" (this model is far from sure of anything).
    assert main(["predict", str(picture), "--model_uri", f"models:/{name}@champion", "--min_confidence", "1"]) == 0
    assert re.fullmatch(
        rf"{re.escape(str(picture))}: unsure \(confidence 0\.\d{{3}}\)", capsys.readouterr().out.strip()
    )
    assert main(["predict", str(picture), "--model_uri", f"models:/{name}@champion", "--min_confidence", "2"]) == 2
    assert "min_confidence must be a number from 0 to 1, got 2.0" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a picture")
    assert main(["predict", str(tmp_path / "notes.txt"), "--model_uri", f"models:/{name}@champion"]) == 1
    assert "notes.txt: the data is not a PNG or JPEG image" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.png"), "--model_uri", f"models:/{name}@champion"]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.data
def test_the_logged_model_runs_without_the_digits_package_installed(store, tmp_path):
    # A fresh environment has the pip requirements but not this project: hide the editable install and
    # check that the model loads and predicts with the code it carries.
    script = f"""
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", type(f).__module__)]
sys.path = [p for p in sys.path if p not in ("", {str(Path(registry.__file__).parents[1])!r})]
import importlib.util
assert importlib.util.find_spec("digits") is None, "digits is still importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({store["uri"]!r})
import digits.serve.preprocess
assert "/code/digits/" in digits.serve.preprocess.__file__.replace("\\\\", "/"), digits.serve.preprocess.__file__
example = pd.read_json({str(tmp_path / "example.json")!r}, orient="split")
print(model.predict(example)["digit"].tolist())
"""
    registry.input_example().to_json(tmp_path / "example.json", orient="split")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"\[\d, \d\]", result.stdout.strip().splitlines()[-1])


@pytest.mark.unit
def test_a_long_model_card_is_cut_to_mlflows_description_column_at_a_section():
    # PostgreSQL refuses a model version description over 5,000 characters (seen in CI once the card grew).
    from digits.mlops.registry import MAX_DESCRIPTION, fit_description

    card = "# Model card\n\nintro\n" + "".join(f"\n## Section {i}\n\n" + "| a | b |\n" * 60 for i in range(12))
    assert len(card) > MAX_DESCRIPTION
    short = fit_description(card, "abc123")
    assert len(short) <= MAX_DESCRIPTION
    assert short.startswith("# Model card") and "`model_card.md` in run `abc123`" in short
    body = short.split("\n\n(The full model card")[0]
    assert card.startswith(body) and card[len(body) :].startswith("\n\n## Section")  # cut where a section starts
    assert fit_description("small card", "r") == "small card"

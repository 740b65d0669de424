"""``digits doctor``: a report of what this environment runs with, and one line (and exit 1) per problem."""

from __future__ import annotations

import types

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from digits.core.config import TrainConfig
from digits.core.names import CHAMPION, CNN_MODEL_NAME
from digits.mlops import registry
from digits.serve import seams
from digits.serve.model import build_model, save_checkpoint
from tests.conftest import isolated_store, write_idx
from workflow.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture
def mnist_dir(tmp_path):
    """A valid (tiny) MNIST folder: the four IDX files, 28x28 images, labels 0-9."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for part, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    return folder


def doctor(capsys, *argv: str) -> tuple[int, str, list[str]]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("digits doctor:")]


def test_a_healthy_environment_reports_everything_and_exits_0(tmp_path, mnist_dir, capsys):
    with isolated_store(tmp_path, "doctor") as (uri, experiment):
        config = TrainConfig(width=4, blocks=2)
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_cnn_model(save_checkpoint(build_model(config), config, tmp_path / "ckpt"))
        version = mlflow.register_model(info.model_uri, CNN_MODEL_NAME).version
        MlflowClient().set_registered_model_alias(CNN_MODEL_NAME, CHAMPION, version)
        code, out, problems = doctor(capsys, "--data_dir", str(mnist_dir))
    assert (code, problems) == (0, [])
    for line in ("MLflow ", "Optuna ", "PyTorch ", "ONNX Runtime ", f"tracking URI   {uri}", f"registry URI   {uri}"):
        assert line in out
    assert f"{mnist_dir} (20 train, 10 test)" in out
    assert f"6 of 6 protections on for MLflow {mlflow.__version__}" in out
    assert f"models:/digits-cnn@champion is version {version}" in out


def test_each_problem_is_one_line_and_the_exit_status_is_1(tmp_path, capsys, monkeypatch):
    from mlflow.pyfunc import scoring_server

    changed = types.SimpleNamespace(**{k: v for k, v in vars(scoring_server).items() if k != "predictions_to_json"})
    monkeypatch.setattr(seams, "scoring_server", lambda: changed)  # an MLflow whose answer writer changed
    with isolated_store(tmp_path, "doctor"):
        code, out, problems = doctor(capsys, "--data_dir", str(tmp_path / "absent"))
    assert code == 1 and len(problems) == 3, problems
    assert (
        problems[0]
        == f"digits doctor: problem: data folder: data_dir {tmp_path / 'absent'} does not exist or is not a directory"
    )
    assert problems[1] == (
        "digits doctor: problem: serving guard: fast JSON answers (speed only) is off on MLflow "
        f"{mlflow.__version__} (predictions_to_json is gone)"
    )
    assert problems[2].startswith("digits doctor: problem: no champion registered (models:/digits-cnn@champion)")
    assert "5 of 6 protections on" in out


def test_an_unreachable_tracking_server_is_a_problem_not_a_hang(mnist_dir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, out, problems = doctor(capsys, "--data_dir", str(mnist_dir))
    assert code == 1 and "tracking URI   http://127.0.0.1:9" in out
    assert len(problems) == 1 and problems[0].startswith("digits doctor: problem: cannot read the registry: ")

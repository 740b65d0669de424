"""End to end: the real `mlflow run` on real MNIST into a temporary tracking store, then the store read back."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT, TEST_ROBUST_SIZE, TINY_READER

pytestmark = pytest.mark.e2e

# main also trains the line reader: at these sizes it takes seconds, not the default's minutes.


def mlflow_run(entry: str, params: dict, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``mlflow run . --env-manager local -e ENTRY -P k=v ...`` with this venv first on PATH."""
    args = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local", "-e", entry]
    if entry in ("main", "train", "baseline", "evaluate"):  # the tests' size of the robustness evaluation
        params = {"robust_size": TEST_ROBUST_SIZE, **params}
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_mlflow_run_train_logs_a_finished_run(mnist_dir, tracking_uri):
    mlflow_run("train", {"epochs": 1, "subset": 10000, "data_dir": mnist_dir, "device": "cpu"})
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert (
        run.data.params["epochs"] == "1" and run.data.params["subset"] == "10000" and run.data.params["width"] == "16"
    )
    assert run.data.tags["model_family"] == "cnn"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    assert history[0].value > 0.9  # chance is 0.1; a broken model or loop cannot get here
    assert run.data.metrics["test_accuracy"] > 0.9
    for key in ("train_loss", "val_loss", "lr", "images_per_second", "test_macro_f1", "test_log_loss"):
        assert key in run.data.metrics
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {
        "mnist-training",
        "mnist-validation",
        "mnist-testing",
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.json" in artifacts


def test_mlflow_run_main_nests_baseline_and_cnn(mnist_dir, tracking_uri, tmp_path):
    mlflow_run(
        "main", {"epochs": 1, "subset": 5000, "n_trials": 0, "data_dir": mnist_dir, "device": "cpu", **TINY_READER}
    )
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"baseline-logreg", "cnn-final", "reader"} <= set(children)
    base, cnn = children["baseline-logreg"], children["cnn-final"]
    assert base.data.tags["model_family"] == "logreg" and cnn.data.tags["model_family"] == "cnn"
    assert base.data.metrics["test_accuracy"] > 0.85 and cnn.data.metrics["test_accuracy"] > 0.9
    shared = {k for k in base.data.metrics if k.startswith("test_")}
    assert {"test_accuracy", "test_macro_f1", "test_log_loss"} <= shared <= set(cnn.data.metrics)
    assert all(r.info.status == "FINISHED" for r in children.values())
    # The final CNN is registered and, being the first version, takes champion; the baseline is registered too.
    champion = client.get_model_version_by_alias("digits-cnn", "champion")
    assert champion.run_id == cnn.info.run_id
    assert float(champion.tags["test_accuracy"]) == cnn.data.metrics["test_accuracy"]
    assert champion.tags["source_run_id"] == cnn.info.run_id and champion.tags["data_digest"]
    assert "Model card" in (champion.description or "") or "model card" in (champion.description or "").lower()
    assert [v.run_id for v in client.search_model_versions("name='digits-baseline'")] == [base.info.run_id]
    # Beside it, the same network exported to ONNX, checked on the whole test set, registered as digits-cnn-onnx.
    onnx = client.get_model_version_by_alias("digits-cnn-onnx", "champion")
    assert onnx.run_id == cnn.info.run_id and onnx.tags["test_accuracy"] == champion.tags["test_accuracy"]
    assert cnn.data.metrics["onnx_same_digits"] == 1.0 and cnn.data.metrics["onnx_max_abs_diff"] <= 1e-4
    assert (
        cnn.data.tags["registered_version"] == "digits-cnn/1"
    )  # the run's own registration tags are the torch model's
    # The line reader rides with both served models: its test figures on the CNN's run and on both versions.
    reader = children["reader"]
    assert cnn.data.tags["reader_run_id"] == reader.info.run_id
    numbers = reader.data.metrics["test_number_exact_match"]
    assert cnn.data.metrics["test_number_exact_match"] == numbers
    assert float(champion.tags["test_number_exact_match"]) == numbers == float(onnx.tags["test_number_exact_match"])
    assert reader.data.metrics["number_temperature"] > 0 and 0 <= reader.data.metrics["test_number_ece"] <= 1
    for name, folder, files in (
        ("digits-cnn", "reader", {"weights.pt", "reader_config.json", "reader_calibration.json"}),
        ("digits-cnn-onnx", "reader_onnx", {"reader.onnx", "reader_calibration.json"}),
    ):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / name)))
        assert {p.name for p in (local / "artifacts" / folder).iterdir()} == files, name


@pytest.mark.parametrize(
    "spelt, canonical",
    [
        ({"timeout": "0", "n_trials": "1", "trial_epochs": "1"}, {"timeout": 0.0, "n_trials": 1}),
        ({"lr": "0.10"}, {"lr": 0.1}),
        ({"epochs": "1.0"}, {"epochs": 1}),
    ],
    ids=["timeout=0", "lr=0.10", "epochs=1.0"],
)
def test_mlflow_run_main_takes_params_as_mlflow_spells_them(mnist_dir, tracking_uri, tmp_path, spelt, canonical):
    # `mlflow run` logs each -P value as typed into the run it makes; the pipeline's own canonical values must
    # not collide with them ("Changing param values is not allowed").
    params = {
        "epochs": 1,
        "subset": 1000,
        "val_size": 500,
        "n_trials": 0,
        "data_dir": mnist_dir,
        "device": "cpu",
        "threads": 1,
        **TINY_READER,
    }
    mlflow_run("main", {**params, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", **spelt})
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.info.status == "FINISHED" and {r.info.status for r in runs} == {"FINISHED"}
    assert {k: top.data.params[k] for k in spelt} == spelt  # MLflow's own record of the command line
    # The values the pipeline used, canonical and typed: the final model's config and the search's params.
    final = next(r for r in runs if r.info.run_name == "cnn-final")
    used = {**mlflow.artifacts.load_dict(f"runs:/{final.info.run_id}/config.json")}
    if "n_trials" in spelt:
        (search,) = [r for r in runs if r.info.run_name == "search"]
        used.update(timeout=float(search.data.params["timeout"]), n_trials=int(search.data.metrics["n_trials_added"]))
        assert search.data.params["timeout"] == "0.0"
    for key, value in canonical.items():
        assert used[key] == value and type(used[key]) is type(value), key

"""Evaluation report: metrics, tables and figures logged per model, EDA once per data digest, model card, `digits evaluate`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from digits.core.config import TrainConfig
from digits.evaluate import corruptions, eda, evaluation, report, robustness
from digits.evaluate.metrics import METRIC_NAMES
from digits.learn import baseline
from digits.mlops import evaluate_job
from digits.mlops.registry import fit_description
from tests.conftest import ROOT, TINY_READER, digits_command, fake_mnist

# Every metric a model's run must hold after its test evaluation, under the same keys for every model.
TEST_METRICS = (
    {f"test_{name}" for name in METRIC_NAMES}
    | {"test_errors"}
    | {f"test_coverage_at_{t}" for t in ("99", "99_5", "99_9")}
)
PIXEL_STD_FLOOR = 10.0  # a blank or near-blank PNG has a grey-level standard deviation far below this


def noisy_proba(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Probabilities that are right about 80% of the time, so there are mistakes to show."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 10))
    logits[np.arange(len(labels)), labels] += 2.5
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def artifact_paths(run_id: str, path: str = "") -> set[str]:
    """Every file under ``path`` in the run's artifacts, recursively."""
    client = mlflow.MlflowClient()
    found = set()
    for item in client.list_artifacts(run_id, path or None):
        found |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return found


def assert_png_readable(run_id: str, path: str) -> None:
    """The artifact decodes as a PNG of a sensible size that is not blank."""
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    data = Path(local).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    image = Image.open(io.BytesIO(data))
    image.load()
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape[0] >= 250 and pixels.shape[1] >= 500, (path, pixels.shape)
    assert pixels.std() > PIXEL_STD_FLOOR, f"{path} looks blank (pixel std {pixels.std():.1f})"


def assert_robustness(run) -> None:
    """``run`` holds issue 12's robustness evaluation: a metric per corruption, their mean, the table, the figure."""
    expected = {f"robust_{name}_accuracy" for name in corruptions.names()} | {"robust_mean_accuracy"}
    assert expected <= set(run.data.metrics), f"{run.info.run_name}: missing {sorted(expected - set(run.data.metrics))}"
    table = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/{robustness.TABLE}"))
    )
    assert table["corruption"].tolist() == corruptions.names()
    assert run.data.metrics["robust_mean_accuracy"] == pytest.approx(table["accuracy"].mean())
    assert_png_readable(run.info.run_id, f"evaluation/{robustness.FIGURE}")


def assert_full_evaluation(run) -> None:
    """``run`` holds every test metric, table and figure of an evaluated model, each PNG readable and not blank."""
    missing = TEST_METRICS - set(run.data.metrics)
    assert not missing, f"{run.info.run_name}: missing metrics {sorted(missing)}"
    files = artifact_paths(run.info.run_id, evaluation.EVALUATION_DIR)
    expected = {f"{evaluation.EVALUATION_DIR}/{name}" for name in evaluation.FIGURES + evaluation.TABLES}
    assert expected <= files, f"{run.info.run_name}: missing {sorted(expected - files)}"
    for name in evaluation.FIGURES:
        assert_png_readable(run.info.run_id, f"{evaluation.EVALUATION_DIR}/{name}")
    per_class = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/per_class.csv"))
    )
    assert list(per_class.columns) == ["digit", "precision", "recall", "f1", "support"] and per_class[
        "digit"
    ].tolist() == list(range(10))
    confusions = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/top_confusions.csv"))
    )
    assert list(confusions.columns) == ["true", "predicted", "count"] and len(confusions) <= 10
    assert (confusions["true"] != confusions["predicted"]).all() and confusions["count"].is_monotonic_decreasing


# --- unit: logging into a temporary store ---------------------------------------------------------------------


@pytest.fixture
def experiment(tracking_uri, tmp_path, monkeypatch) -> str:
    """An experiment of the temporary store whose artifacts stay under tmp_path (not ./mlruns of the checkout).

    Chosen through MLFLOW_EXPERIMENT_ID rather than mlflow.set_experiment, whose process-wide choice would
    outlive this test and its store.
    """
    experiment_id = mlflow.create_experiment("evaluation-tests", artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    return experiment_id


@pytest.mark.data  # every figure and table, rendered and logged: seconds
def test_log_test_evaluation_logs_every_metric_table_and_figure(experiment):
    data = fake_mnist()
    proba = noisy_proba(data.test_labels)
    history = [
        {"train_loss": 1 / e, "train_accuracy": 1 - 0.2 / e, "val_loss": 1.1 / e, "val_accuracy": 1 - 0.3 / e}
        for e in (1, 2, 3)
    ]
    with mlflow.start_run() as run:
        values = evaluation.log_test_evaluation(data.test_labels, proba, images=data.test_images, history=history)
    assert set(values) == TEST_METRICS
    assert values["test_errors"] == np.sum(proba.argmax(1) != data.test_labels)
    assert values["test_accuracy"] == pytest.approx(1 - values["test_errors"] / len(data.test_labels))
    assert_full_evaluation(mlflow.get_run(run.info.run_id))


@pytest.mark.unit
def test_without_images_or_history_those_two_figures_are_left_out(experiment):
    data = fake_mnist()
    with mlflow.start_run() as run:
        evaluation.log_test_evaluation(data.test_labels, noisy_proba(data.test_labels))
    files = artifact_paths(run.info.run_id)
    assert "evaluation/roc.png" in files
    assert "evaluation/misclassified.png" not in files and "evaluation/training_curves.png" not in files


@pytest.mark.unit
def test_curve_captions_say_what_the_series_are():
    x_label, note = evaluation.curve_labels("logreg", [{"step": 10, "train_loss": 1.0, "val_loss": 1.1}])
    assert "lbfgs" in x_label and "no validation" not in note
    x_label, note = evaluation.curve_labels("cnn", [{"train_loss": 1.0, "train_accuracy": 0.5}])
    assert x_label == "epoch" and "label smoothing" in note and "no validation curves" in note


@pytest.mark.data
def test_eda_is_logged_once_per_data_digest_and_again_if_its_run_is_deleted(experiment):
    data = fake_mnist()
    with mlflow.start_run() as first:
        assert eda.log_eda_once(data, tsne_sample=60) == first.info.run_id
    with mlflow.start_run() as second:
        assert eda.log_eda_once(data, tsne_sample=60) == first.info.run_id  # same digest: nothing drawn
    with mlflow.start_run() as other:
        assert eda.log_eda_once(fake_mnist(digest="otherdigest00002"), tsne_sample=60) == other.info.run_id

    first_files = artifact_paths(first.info.run_id)
    assert {f"{eda.EDA_DIR}/{name}" for name in eda.EDA_FIGURES} <= first_files
    for name in eda.EDA_FIGURES:
        assert_png_readable(first.info.run_id, f"{eda.EDA_DIR}/{name}")
    assert not any(p.startswith(eda.EDA_DIR) for p in artifact_paths(second.info.run_id))
    tags = {r: mlflow.get_run(r.info.run_id).data.tags for r in (first, second, other)}
    assert tags[first][eda.EDA_DIGEST_TAG] == data.digest and tags[first][eda.EDA_RUN_TAG] == first.info.run_id
    assert eda.EDA_DIGEST_TAG not in tags[second] and tags[second][eda.EDA_RUN_TAG] == first.info.run_id
    assert tags[other][eda.EDA_RUN_TAG] == other.info.run_id

    mlflow.MlflowClient().delete_run(first.info.run_id)  # the figures went with it: the next run draws them again
    with mlflow.start_run() as again:
        assert eda.log_eda_once(data, tsne_sample=60) == again.info.run_id


@pytest.mark.unit
def test_baseline_history_has_train_and_validation_curves_per_block():
    data = fake_mnist(n_train=400)
    calls = []
    model, history, seconds = baseline.fit_baseline_with_history(
        data.train_images[:300],
        data.train_labels[:300],
        (data.train_images[300:], data.train_labels[300:]),
        max_iter=30,
        block=5,
        callback=lambda step, m: calls.append((step, m)),
    )
    steps = [h["step"] for h in history]
    assert steps == sorted(steps) and steps[0] <= 5 and steps[-1] <= 30
    assert all({"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(h) for h in history)
    assert [s for s, _ in calls] == steps and "step" not in calls[0][1]
    assert seconds > 0 and (baseline.predict_proba(model, data.test_images).argmax(1) == data.test_labels).mean() > 0.9


@pytest.mark.unit
def test_block_fitted_baseline_has_the_estimators_parameters():
    data = fake_mnist(n_train=200)
    model, _, _ = baseline.fit_baseline_with_history(data.train_images, data.train_labels, seed=3, max_iter=20, block=5)
    assert model.get_params() == baseline.make_estimator(seed=3, max_iter=20).get_params()
    assert model.get_params()["tol"] == 1e-3 and not model.warm_start


@pytest.mark.unit
def test_baseline_run_logs_the_fitted_models_parameters_once(experiment):
    from digits.core.config import DataConfig
    from digits.learn.data import split_train_val
    from workflow.pipeline import run_baseline

    data = fake_mnist(n_train=300)
    config = DataConfig(val_size=50, seed=2)
    outcome = run_baseline(
        config, data, split_train_val(data.train_labels, config.val_size, config.seed, config.subset), nested=False
    )
    params = mlflow.get_run(outcome.run_id).data.params
    estimator = mlflow.sklearn.load_model(outcome.model_uri)
    expected = {
        "model": "LogisticRegression",
        **estimator.get_params(),
        "data_dir": "",
        "val_size": 50,
        "subset": 0,
        "seed": 2,
        "calibration_size": 2000,
        "robust_size": 2000,
    }
    assert params == {k: str(v) for k, v in expected.items()}
    # What was typed by hand before, now read from the model, and tol, which was missing:
    assert (
        params["solver"] == "lbfgs"
        and params["C"] == "1.0"
        and params["max_iter"] == "100"
        and params["tol"] == "0.001"
    )
    assert params["random_state"] == "2"


@pytest.mark.unit
def test_model_card_has_every_section_both_models_and_the_confusions():
    base = {"test_accuracy": 0.9226, "test_errors": 774.0, "test_log_loss": 0.28, "test_ece": 0.01}
    cnn = {"test_accuracy": 0.9931, "test_errors": 69.0, "test_log_loss": 0.03, "test_ece": 0.02}
    confusions = pd.DataFrame({"true": [7, 4], "predicted": [2, 9], "count": [9, 6]})
    card = report.model_card(
        model_name="digits-cnn",
        config=TrainConfig(epochs=7),
        baseline=base,
        cnn=cnn,
        confusions=confusions,
        data=report.DataSummary(
            source="/data", digest="abc", train=55000, val=5000, test=10000, subset=0, seed=0, final_train=60000
        ),
        test_support={7: 1028, 4: 982},
        runs={"final CNN": "r1", "baseline": "r2"},
        selection="Given on the command line.",
    )
    for heading in (
        "## Data and split",
        "## Training configuration",
        "## Test metrics: baseline vs CNN",
        "## Main confusions of the CNN",
        "## Intended use",
        "## Limits",
    ):
        assert heading in card
    assert "| accuracy | higher | 92.26% | 99.31% |" in card
    assert "| misclassified test images | lower | 774 | 69 |" in card
    assert "| 7 → 2 | 9 | 0.88% |" in card  # 9 of the 1,028 test 7s
    assert (
        "| epochs | `7` |" in card and "55,000" in card and "macro F1" in card and "n/a" in card
    )  # absent metrics say so


@pytest.mark.unit
def test_model_card_holds_every_fact_it_is_given():
    base = {"test_accuracy": 0.9226, "test_errors": 774.0, "test_roc_auc": 0.99, "test_ece": 0.01}
    cnn = {"test_accuracy": 0.9931, "test_errors": 69.0, "test_macro_f1": 0.993, "test_ece": 0.02}
    confusions = pd.DataFrame(
        {"true": [7, 4, 9, 3, 5, 1], "predicted": [2, 9, 4, 5, 3, 7], "count": [9, 6, 5, 4, 3, 2]}
    )
    arguments = dict(
        model_name="digits-x",
        config=TrainConfig(width=24, subset=10000, seed=4, data_dir="/secret"),
        baseline=base,
        cnn=cnn,
        confusions=confusions,
        baseline_confusions=confusions,
        data=report.DataSummary(
            source="/d2", digest="xyz", train=9000, val=1000, test=10000, subset=10000, seed=4, final_train=10000
        ),
        test_support={7: 1028, 4: 982},
        runs={"final CNN": "r1", "baseline": "r2", "pipeline (parent)": "r3"},
        selection="Chosen by search.",
    )
    card = report.model_card(**arguments)
    assert (
        card.startswith("# Model card: digits-x\n\n")
        and card.endswith("| pipeline (parent) | `r3` |\n")
        and "$" not in card
    )
    for fact in (
        "Test accuracy **99.31%** on the 10,000 MNIST test images, against 92.26% for the logistic-regression baseline.",
        "read from `/d2` (content digest `xyz`).",
        "- Validation: 1,000 images held out of the training images, stratified, seed 4; training split: 9,000 images (subset=10,000 of a stratified order).",
        "the training and validation images together (10,000), once",
        "## Training configuration\n\nChosen by search.\n\n| parameter | value |\n|---|---|\n| val_size | `5000` |\n| subset | `10000` |",
        "| width | `24` |",
        "| compile | `False` |",
        "| macro F1 | higher | n/a | 99.30% |",
        "| ROC AUC (one-vs-rest, macro) | higher | 0.9900 | n/a |",
        "| expected calibration error (15 bins) | lower | 0.0100 | 0.0200 |",
        "| 4 → 9 | 6 | 0.61% |\n| 9 → 4 | 5 | n/a |",  # no test support given for 9
        "These five pairs are 27 of the 69 mistakes; the full matrix is the run's `evaluation/confusion_matrix.png`.",
        "The baseline's most frequent confusions, for comparison: 7 → 2 (9), 4 → 9 (6), 9 → 4 (5).",
        "- Calibration (ECE 0.0200) and accuracy are measured on MNIST's test set only.",
        "| what | MLflow run id |\n|---|---|\n| final CNN | `r1` |\n| baseline | `r2` |",
    ):
        assert fact in card
    assert "| 1 → 7 |" not in card and "data_dir" not in card and "/secret" not in card  # five pairs; no local path
    two = report.model_card(**{**arguments, "confusions": confusions.head(2)})
    assert "These two pairs are 15 of the 69 mistakes;" in two and "five pairs" not in two
    assert "This pair is 9 of the 69 mistakes;" in report.model_card(**{**arguments, "confusions": confusions.head(1)})
    empty = report.model_card(
        model_name="m",
        config=TrainConfig(),
        baseline={},
        cnn={"test_accuracy": 1.0, "test_errors": 0.0},
        confusions=confusions.head(0),
        data=report.DataSummary(
            source="/d", digest="d", train=55000, val=5000, test=10000, subset=0, seed=0, final_train=60000
        ),
        test_support={},
        runs={},
        selection="x",
    )
    assert "## Main confusions of the CNN\n\nNo misclassified test images.\n\n## Robustness" in empty
    assert "Not measured for this model." in empty
    assert "training split: 55,000 images.\n" in empty and "against n/a for the logistic-regression baseline" in empty


@pytest.mark.unit
def test_model_card_template_names_exactly_the_fields_and_ships_as_package_data():
    import tomllib

    from digits.mlops import registry

    template = report.card_template()
    named = {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {None}
    fields = report.card_fields(
        model_name="m",
        config=TrainConfig(),
        baseline={},
        cnn={},
        confusions=pd.DataFrame({"true": [], "predicted": [], "count": []}),
        data=report.DataSummary(source="/d", digest="d", train=1, val=1, test=1, subset=0, seed=0, final_train=2),
        test_support={},
        runs={},
        selection="x",
    )
    assert named == set(fields)  # every placeholder filled, every field used
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "digits.evaluate"
    ]
    assert any((ROOT / "digits/evaluate").glob(pattern) for pattern in package_data)
    assert (ROOT / "digits/evaluate/templates/model_card.md").is_file()
    assert "evaluate/report.py" not in registry.serving_files()  # the served model's bundle needs no template


@pytest.mark.unit
def test_unknown_model_uri_is_one_line_error(tracking_uri):
    with pytest.raises(evaluation.EvaluationError, match=r"cannot load model 'models:/nope@champion'") as caught:
        evaluate_job.load_model("models:/nope@champion")
    assert "\n" not in str(caught.value)


@pytest.mark.data
def test_cli_evaluate_bad_uri_exits_non_zero_with_one_line(experiment, fake_mnist_dir):
    result = subprocess.run(
        digits_command("evaluate", "--model-uri", "runs:/0123456789abcdef/model", "--data_dir", str(fake_mnist_dir)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("digits evaluate: error: cannot load model 'runs:/0123456789abcdef/model'"), result.stderr[
        -2000:
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_evaluate_help_states_each_default():
    result = subprocess.run(digits_command("evaluate", "--help"), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0
    assert "--model_uri MODEL_URI, --model-uri MODEL_URI" in result.stdout and "--data_dir" in result.stdout
    assert "(default: models:/digits-cnn@champion)" in " ".join(result.stdout.split())
    assert "(default: empty)" in result.stdout


@pytest.mark.data
def test_evaluate_reproduces_a_registered_sklearn_model_and_a_run_checkpoint(experiment, tmp_path):
    from digits.serve.model import build_model, predict_proba, save_checkpoint

    data = fake_mnist()
    estimator = baseline.make_estimator(max_iter=20).fit(baseline.features(data.train_images), data.train_labels)
    config = TrainConfig(width=4, blocks=2)
    network = build_model(config).eval()  # untrained: any accuracy will do, it must only be reproduced exactly
    sources = {}
    with mlflow.start_run(tags={"model_family": "logreg"}) as run:
        evaluation.log_test_evaluation(
            data.test_labels, baseline.predict_proba(estimator, data.test_images), family="logreg"
        )
        mlflow.sklearn.log_model(estimator, name="model", pip_requirements=["scikit-learn"])  # no slow inference
        sources["models:/digits-baseline/1"] = run.info.run_id
    mlflow.register_model(f"runs:/{run.info.run_id}/model", "digits-baseline")
    with mlflow.start_run(tags={"model_family": "cnn"}) as run:
        evaluation.log_test_evaluation(data.test_labels, predict_proba(network, data.test_images))
        mlflow.log_artifacts(str(save_checkpoint(network, config, tmp_path / "ckpt")), "checkpoint")
        sources[f"runs:/{run.info.run_id}"] = run.info.run_id

    for uri, source_id in sources.items():
        values = evaluate_job.evaluate_model(uri, data, log_eda=False)
        source = mlflow.get_run(source_id)
        assert values["test_errors"] == source.data.metrics["test_errors"], uri  # the same accuracy, to the last image
    client = mlflow.MlflowClient()
    evaluations = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.pipeline_step = 'evaluate'"
    )
    assert {(r.data.tags["model_family"], r.data.tags["model_loaded_as"]) for r in evaluations} == {
        ("logreg", "sklearn"),
        ("cnn", "checkpoint"),
    }
    for r in evaluations:
        assert r.info.run_name == f"evaluate-{r.data.tags['model_family']}"
        assert r.data.tags["source_run_id"] in sources.values()
        assert r.data.metrics["source_test_accuracy"] == r.data.metrics["test_accuracy"]
        assert TEST_METRICS <= set(r.data.metrics)
        assert {f"evaluation/{f}" for f in evaluation.TABLES + ("roc.png", "misclassified.png")} <= artifact_paths(
            r.info.run_id
        )


# --- e2e: `mlflow run` on real MNIST ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """`mlflow run -e main` (1 epoch, 5,000 images, no search) on real MNIST into a fresh store, once for the module."""
    from tests.test_e2e_mlflow import mlflow_run

    data_dir = os.environ.get("DIGITS_DATA_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.fail("e2e tests need DIGITS_DATA_DIR pointing at the four MNIST IDX files (e.g. ../shared/data/mnist)")
    root = tmp_path_factory.mktemp("evaluation-e2e")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        # Artifacts under the test's folder, not ./mlruns of the checkout; every run of the module goes there.
        mp.setenv(
            "MLFLOW_EXPERIMENT_ID", mlflow.create_experiment("e2e", artifact_location=(root / "artifacts").as_uri())
        )
        mlflow_run(
            "main",
            {
                "epochs": 1,
                "subset": 5000,
                "n_trials": 0,
                "data_dir": data_dir,
                "device": "cpu",
                "storage": f"sqlite:///{root / 'optuna.db'}",
                **TINY_READER,
            },
        )
        client = mlflow.MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        yield {"runs": runs, "data_dir": data_dir, "mlflow_run": mlflow_run, "root": root}
        mlflow.set_tracking_uri(None)


def _by_name(runs) -> dict:
    return {r.info.run_name: r for r in runs}


@pytest.mark.e2e
def test_main_logs_every_metric_and_figure_for_baseline_and_cnn(main_run):
    runs = _by_name(main_run["runs"])
    base, cnn = runs["baseline-logreg"], runs["cnn-final"]
    for run in (base, cnn):
        assert_full_evaluation(run)
        assert_robustness(run)
        assert run.data.tags["pipeline_step"] in ("baseline", "final")
        assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {"mnist-training", "mnist-testing"}
    assert (base.data.tags["model_family"], cnn.data.tags["model_family"]) == ("logreg", "cnn")
    # Compare in the UI shows the same test metrics side by side, and the curves under the same keys.
    assert TEST_METRICS <= set(base.data.metrics) & set(cnn.data.metrics)
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(base.data.metrics)


@pytest.mark.e2e
def test_main_logs_eda_once_into_the_parent_and_the_model_card(main_run):
    runs = main_run["runs"]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    cnn = _by_name(runs)["cnn-final"]
    assert parent.data.tags[eda.EDA_RUN_TAG] == parent.info.run_id
    assert parent.data.tags[eda.EDA_DIGEST_TAG]
    for name in eda.EDA_FIGURES:
        assert_png_readable(parent.info.run_id, f"{eda.EDA_DIR}/{name}")
    card = mlflow.artifacts.load_text(f"runs:/{cnn.info.run_id}/{report.CARD_FILE}")
    base = _by_name(runs)["baseline-logreg"]
    assert (
        f"| accuracy | higher | {base.data.metrics['test_accuracy']:.2%} | {cnn.data.metrics['test_accuracy']:.2%} |"
        in card
    )
    assert mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/{report.CARD_FILE}") == card


@pytest.mark.e2e
def test_evaluate_registered_models_gives_the_training_runs_accuracy(main_run):
    """The CNN and baseline that main registered: the served pyfunc through `digits evaluate`, the sklearn
    baseline through `mlflow run -e evaluate`; the champion's description is the model card."""
    runs = _by_name(main_run["runs"])
    base, cnn = runs["baseline-logreg"], runs["cnn-final"]
    card = mlflow.artifacts.load_text(f"runs:/{cnn.info.run_id}/{report.CARD_FILE}")
    result = subprocess.run(
        digits_command(
            "evaluate",
            "--model-uri",
            "models:/digits-cnn@champion",
            "--data_dir",
            main_run["data_dir"],
            "--robust_size",
            "300",
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the same as source run" in result.stderr
    main_run["mlflow_run"](
        "evaluate", {"model_uri": "models:/digits-baseline@champion", "data_dir": main_run["data_dir"]}
    )

    client = mlflow.MlflowClient()
    evaluations = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.pipeline_step = 'evaluate'"
    )
    by_family = {r.data.tags["model_family"]: r for r in evaluations}
    assert set(by_family) == {"cnn", "logreg"}
    for family, source in (("cnn", cnn), ("logreg", base)):
        run = by_family[family]
        assert run.data.metrics["test_errors"] == source.data.metrics["test_errors"]  # to the last image
        assert run.data.metrics["test_accuracy"] == source.data.metrics["test_accuracy"]
        assert run.data.tags["source_run_id"] == source.info.run_id
        assert_full_evaluation(run)
        assert_robustness(run)
        # The same corrupted digits for every evaluation: the served model reads them as its training run did
        # (to within an image or two: the served network's fused convolutions round differently).
        n = pd.read_csv(
            io.StringIO(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/{robustness.TABLE}"))
        )["n"].iloc[0]
        assert run.data.metrics["robust_mean_accuracy"] == pytest.approx(
            source.data.metrics["robust_mean_accuracy"], abs=2 / n
        )
    assert (
        by_family["cnn"].data.tags["model_loaded_as"] == "pyfunc"
        and by_family["logreg"].data.tags["model_loaded_as"] == "sklearn"
    )
    version = client.get_model_version_by_alias("digits-cnn", "champion")
    assert (
        version.description == fit_description(card, cnn.info.run_id) and version.run_id == cnn.info.run_id
    )  # cut to 5,000 characters


@pytest.mark.unit
def test_training_curves_put_a_tick_on_each_step_and_never_a_fractional_epoch():
    from digits.evaluate import plots

    one = plots.training_curves_figure([{"train_loss": 1.0, "train_accuracy": 0.5}])
    assert [t for t in one.axes[0].get_xticks() if one.axes[0].get_xlim()[0] <= t <= one.axes[0].get_xlim()[1]] == [1]
    blocks = plots.training_curves_figure(
        [{"step": s, "train_loss": 1 / s} for s in (10, 20, 27)], x_label="lbfgs iterations"
    )
    assert blocks.axes[0].get_lines()[0].get_xdata().tolist() == [10, 20, 27]
    assert list(blocks.axes[0].get_xticks()) == [10, 20, 27] and blocks.axes[0].get_xlabel() == "lbfgs iterations"

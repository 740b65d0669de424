"""tuning/: the search space, the sampler's seeding, storage errors, pruning, NaN trials, MLflow nesting, resume,
interruption (SIGINT, SIGTERM, SIGKILL), two parallel workers, and the stored study read by optuna-dashboard.

Everything is tiny (1,000-2,000 training images, 500 validation images, 1-2 epochs, one thread) and both stores
live in tmp dirs: MLflow in a copy of a once-initialised sqlite file, Optuna in its own sqlite file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from digits.core.config import ReaderConfig, SearchConfig, TrainConfig
from tests.conftest import ROOT, digits_command
from tuning import liveness
from tuning import search as search_mod
from tuning import study as study_mod
from tuning.space import SEARCHED, SPACE, base_params, space_of, suggest_config
from tuning.storage import StorageError, open_storage

TINY = dict(subset=1000, val_size=500, threads=1)


# --- fixtures and helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path, monkeypatch, mlflow_db_template) -> SimpleNamespace:
    """A fresh MLflow store (set for this process and its subprocesses) and an Optuna storage URL, both in tmp_path.

    The working directory is tmp_path too, so that in-process runs put their artifacts (./mlruns) there.
    """
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    yield SimpleNamespace(tracking=uri, optuna=f"sqlite:///{tmp_path / 'optuna.db'}", dir=tmp_path)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def all_runs() -> list:
    client = mlflow.MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def children(parent) -> list:
    return sorted(
        (r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.start_time,
    )


def load(storage: str, name: str = "digits-cnn") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def tune(
    storage: str, data_dir: Path, *args: str, n_trials: int = 2, trial_epochs: int = 1, subset: int = 1000
) -> list[str]:
    """The ``digits tune`` command line of a tiny search."""
    return digits_command(
        "tune",
        "--data_dir",
        str(data_dir),
        "--subset",
        str(subset),
        "--val_size",
        "500",
        "--threads",
        "1",
        "--n_trials",
        str(n_trials),
        "--trial_epochs",
        str(trial_epochs),
        "--storage",
        storage,
        *args,
    )


def tiny_split(mnist, subset: int = 1000):
    from digits.learn.data import split_train_val

    return split_train_val(mnist.train_labels, 500, 0, subset)


def search_once(base: TrainConfig, search: SearchConfig, mnist, split) -> TrainConfig:
    """A search as ``main`` runs it: the storage, the study, the trials."""
    study = search_mod.open_search(base, search, mnist, search_mod.connect(search))
    return search_mod.run_search(study, base, search, mnist, split)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


# --- unit: the space, the sampler, the storage, the study, zombies ------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_suggest_config_stays_in_the_space(optimizer):
    base = TrainConfig(optimizer=optimizer, epochs=7, blocks=2, seed=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(40):
        trial = study.ask()
        config = suggest_config(trial, base)
        config.validate()
        space = space_of(optimizer)
        assert space["lr"][0] <= config.lr <= space["lr"][1]
        assert space["weight_decay"][0] <= config.weight_decay <= space["weight_decay"][1]
        assert isinstance(config.width, int) and config.width in (12, 16, 20, 24)
        assert config.batch_size in (64, 128, 256)
        assert 0 <= config.dropout <= 0.5 and 0 <= config.label_smoothing <= 0.2 and 0 <= config.augment <= 1
        # The trial length and everything not searched come from the base, never from the trial.
        assert (config.epochs, config.blocks, config.seed, config.optimizer) == (7, 2, 3, optimizer)
        assert set(trial.params) == set(SEARCHED)
        study.tell(trial, 0.5)
    assert len({t.params["lr"] for t in study.trials}) == 40  # log-uniform draws, not a grid


@pytest.mark.unit
def test_base_params_reproduce_the_base_config():
    base = TrainConfig()
    assert suggest_config(optuna.trial.FixedTrial(base_params(base)), base) == base
    # A batch size outside the choices cannot be enqueued; the rest still is.
    assert "batch_size" not in base_params(TrainConfig(batch_size=100))
    assert base_params(TrainConfig(batch_size=100))["lr"] == base.lr


@pytest.mark.unit
def test_sampler_is_seeded_and_a_resumed_study_draws_new_configs(tmp_path):
    def draw(storage, n, seed=0):
        study = optuna.create_study(
            storage=storage,
            study_name="s",
            direction="maximize",
            sampler=study_mod.make_sampler(seed),
            load_if_exists=True,
        )
        study.optimize(lambda t: suggest_config(t, TrainConfig()).lr, n_trials=n)
        return [t.params for t in study.trials]

    first = draw(f"sqlite:///{tmp_path / 'a.db'}", 3)
    assert draw(f"sqlite:///{tmp_path / 'b.db'}", 3) == first  # same seed, same configs
    resumed = draw(f"sqlite:///{tmp_path / 'a.db'}", 3)  # a second run with the same seed continues the study...
    assert resumed[:3] == first and all(p not in first for p in resumed[3:])  # ...with new configs, not repeats
    assert draw(f"sqlite:///{tmp_path / 'c.db'}", 3, seed=1) != first


@pytest.mark.unit
@pytest.mark.parametrize("url", ["nosuchdialect://x/y", "sqlite:////nonexistent-dir/sub/optuna.db", "not a url"])
def test_a_storage_that_cannot_be_opened_is_a_one_line_error(url):
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert "\n" not in message and "cannot open Optuna storage" in message


@pytest.mark.data
def test_digits_tune_with_a_bad_storage_exits_non_zero_with_one_line(tmp_path):
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("this is not a database\n" * 100)
    result = subprocess.run(
        digits_command("tune", "--storage", f"sqlite:///{not_a_db}", "--data_dir", str(tmp_path / "none")),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digits tune: error: cannot open Optuna storage"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_the_grace_period_is_a_search_config_field_that_reaches_the_storage(tmp_path, monkeypatch):
    from digits.core.config import ConfigError

    monkeypatch.setenv("DIGITS_GRACE_PERIOD", "999")  # the old variable changes nothing any more
    storage = search_mod.connect(SearchConfig(storage=f"sqlite:///{tmp_path / 'g.db'}", grace_period=9))
    assert storage.grace_period == 9 and storage.heartbeat_interval == 3
    assert open_storage(f"sqlite:///{tmp_path / 'h.db'}").grace_period == SearchConfig().grace_period == 60
    with pytest.raises(ConfigError, match="grace_period must be a whole number of seconds from 3 to 86400, got 2"):
        SearchConfig(grace_period=2).validate()


@pytest.mark.unit
def test_the_time_budget_stops_the_search_on_a_cpu_and_lets_a_gpu_run_every_trial(monkeypatch):
    import torch

    from digits.learn import train
    from workflow.pipeline import plan

    cpu = TrainConfig(device="cpu")
    assert search_mod.time_budget(SearchConfig(), cpu) == 360.0
    assert search_mod.time_budget(SearchConfig(timeout=100), cpu) == 100.0
    assert search_mod.time_budget(SearchConfig(cpu_timeout=0), cpu) == 0.0
    assert "no new trial after 6 min" in plan(cpu, SearchConfig(), 60000)
    # The line reader's minutes are in the estimate (8 x 15,000 strips at ~225/s: about 9 more minutes).
    alone, with_reader = plan(cpu, SearchConfig(), 60000), plan(cpu, SearchConfig(), 60000, ReaderConfig(device="cpu"))
    minutes = [int(re.search(r"roughly (\d+) minutes", text)[1]) for text in (alone, with_reader)]
    assert "the line reader: 8 epoch(s) of 15,000 strips" in with_reader and 8 <= minutes[1] - minutes[0] <= 11
    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("cuda"))
    assert search_mod.time_budget(SearchConfig(), TrainConfig()) == 0.0  # the full search on a GPU
    assert search_mod.time_budget(SearchConfig(timeout=100), TrainConfig()) == 100.0
    assert "no new trial" not in plan(TrainConfig(), SearchConfig(), 60000)


@pytest.mark.unit
def test_a_study_with_other_fixed_settings_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    data = SimpleNamespace(digest="abc")
    study = study_mod.open_study(TrainConfig(), SearchConfig(trial_epochs=2), data, storage)
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # the untuned base, enqueued once
    assert study.trials[0].user_attrs["base"] is True
    assert study.metric_names == ["val_score"]  # what optuna-dashboard labels the value with
    again = study_mod.open_study(
        TrainConfig(lr=0.2, device="cpu", threads=1), SearchConfig(trial_epochs=2, n_trials=1), data, storage
    )
    assert len(again.trials) == 1  # searched values, the machine and n_trials may change; nothing is enqueued again
    with pytest.raises(study_mod.StudyMismatchError, match=r"trial_epochs=2 \(this run: trial_epochs=3\)"):
        study_mod.open_study(TrainConfig(), SearchConfig(trial_epochs=3), data, storage)
    with pytest.raises(study_mod.StudyMismatchError, match="subset"):
        study_mod.open_study(TrainConfig(subset=5000), SearchConfig(trial_epochs=2), data, storage)


@pytest.mark.data
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() by hand
def test_zombies_of_dead_workers_fail_and_are_retried_once_but_a_live_workers_trial_is_left_alone(tmp_path):
    storage = search_mod.connect(SearchConfig(storage=f"sqlite:///{tmp_path / 'z.db'}"))
    study = optuna.create_study(storage=storage, study_name="z", direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        zombie, alive, other_host = study.ask(), study.ask(), study.ask()
        zombie.suggest_float("lr", 0.01, 0.3)
        zombie.set_user_attr("worker", {"host": host, "pid": dead.pid, "started": None, "trial": zombie.number})
        alive.set_user_attr(
            "worker",
            {"host": host, "pid": live.pid, "started": liveness._process_start(live.pid), "trial": alive.number},
        )
        other_host.set_user_attr(
            "worker", {"host": "elsewhere", "pid": 1, "started": None, "trial": other_host.number}
        )  # heartbeat only
        assert liveness.fail_zombies(study, storage) == [zombie.number]
        states = {t.number: t.state for t in study.trials}
        retry = len(states) - 1
        assert states == {
            zombie.number: TrialState.FAIL,
            alive.number: TrialState.RUNNING,
            other_host.number: TrialState.RUNNING,
            retry: TrialState.WAITING,
        }
        assert "died" in study.trials[zombie.number].user_attrs["fail_reason"]
        # The retry is the same configuration, waiting for the next worker; its inherited worker is not its own.
        assert (
            study.trials[retry].params == zombie.params
            and study.trials[retry].system_attrs["failed_trial"] == zombie.number
        )
        assert "fail_reason" not in study.trials[retry].user_attrs
        taken = study.ask()
        assert (
            taken.number == retry and liveness.fail_zombies(study, storage) == []
        )  # RUNNING, with the dead worker's attrs
        # A trial that kills its worker twice is not tried a third time.
        taken.set_user_attr("worker", {"host": host, "pid": dead.pid, "started": None, "trial": taken.number})
        assert liveness.fail_zombies(study, storage) == [taken.number]
        assert TrialState.WAITING not in {t.state for t in study.trials}
    finally:
        live.kill()
        live.wait()


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() by hand
def test_an_interrupted_worker_fails_its_own_running_trials_only(tmp_path):
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path / 'i.db'}"), study_name="i", direction="maximize"
    )
    mine, another = study.ask(), study.ask()
    mine.set_user_attr("worker", liveness.this_worker(mine.number))
    another.set_user_attr("worker", {**liveness.this_worker(another.number), "pid": os.getpid() + 1})
    liveness.fail_own_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]


@pytest.mark.unit
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_space_suggest_config_and_the_stored_setup_are_one_declaration(optimizer):
    base = TrainConfig(optimizer=optimizer)
    trial = optuna.create_study(direction="maximize").ask()
    config = suggest_config(trial, base)
    # Every declared parameter is suggested under its own name, with the declared range, and lands in its field.
    assert tuple(trial.distributions) == SEARCHED == tuple(p.name for p in SPACE)
    for param in SPACE:
        distribution = trial.distributions[param.name]
        bounds = param.bounds_for(optimizer)
        if param.kind == "categorical":
            assert tuple(distribution.choices) == tuple(bounds)
        else:
            assert (distribution.low, distribution.high) == tuple(bounds[:2])
            assert getattr(distribution, "log", False) == param.log and getattr(distribution, "step", None) == (
                bounds[2] if param.kind == "int" else None
            )
        assert getattr(config, param.name) == trial.params[param.name]
    # The study stores exactly these ranges, and no searched field among its fixed settings.
    setup = study_mod.study_setup(base, SearchConfig(), SimpleNamespace(digest="d"))
    assert setup["space"] == json.loads(json.dumps(space_of(optimizer)))
    assert not set(SEARCHED) & set(setup)


@pytest.mark.data
def test_search_runs_of_dead_workers_end_killed_with_their_parent_and_nothing_else_does(stores):
    # A worker SIGKILLed between two trials leaves no RUNNING trial behind, only its search run (and the run above).
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    experiment = mlflow.set_experiment("kill-dead-search-runs").experiment_id
    client = mlflow.MlflowClient()

    def search_run(worker: str, study: str = "s", storage: str = "sqlite:///x.db", parent: str | None = None) -> str:
        tags = {
            "pipeline_step": "search",
            "optuna_study_name": study,
            "optuna_storage": storage,
            liveness.WORKER_TAG: worker,
        }
        if parent:
            tags["mlflow.parentRunId"] = parent
        return client.create_run(experiment, tags=tags).info.run_id

    gone = json.dumps({"host": host, "pid": dead.pid, "started": None})
    parent = client.create_run(experiment, tags={"pipeline_step": "tune"}).info.run_id
    orphan = search_run(gone, parent=parent)
    alive = search_run(json.dumps(liveness.this_worker()))
    elsewhere = search_run(json.dumps({"host": "another-host", "pid": dead.pid, "started": None}))
    other_study = search_run(gone, study="t")
    mine = search_run(gone)
    assert liveness.kill_dead_search_runs(experiment, "s", "sqlite:///x.db", keep=mine) == [orphan]
    status = {
        run_id: client.get_run(run_id).info.status for run_id in (parent, orphan, alive, elsewhere, other_study, mine)
    }
    assert status == {
        parent: "KILLED",
        orphan: "KILLED",
        alive: "RUNNING",
        elsewhere: "RUNNING",
        other_study: "RUNNING",
        mine: "RUNNING",
    }
    assert "died between trials" in client.get_run(orphan).data.tags["end_reason"]


@pytest.mark.unit
def test_pruner_replay_prunes_bad_curves_and_fits_more_trials_in_the_budget():
    from tuning.pruner_replay import candidates, replay

    # Curves whose first epoch predicts the second: pruning saves time and keeps the best.
    curves = [([0.90 + i / 100, 0.95 + i / 100], 1.0) for i in range(5)]
    order = np.random.default_rng(0).integers(len(curves), size=100)
    make = candidates(2)
    best_none, n_none = replay(curves, make["none"], budget=20.0, order=order)
    best_sha, n_sha = replay(curves, make["hyperband rf=3"], budget=20.0, order=order)
    assert n_none == 10 and n_sha > n_none
    assert best_sha == best_none == pytest.approx(0.99)


# --- data: the search in-process ----------------------------------------------------------------------------------


@pytest.mark.data
def test_search_nests_trial_runs_logs_the_summary_and_resumes(mnist, stores):
    from digits.mlops import tracking

    base = TrainConfig(epochs=5, **TINY)
    split = tiny_split(mnist)
    with tracking.run("main", tags={"pipeline_step": "main"}) as main:
        best = search_once(base, SearchConfig(n_trials=3, trial_epochs=1, storage=stores.optuna), mnist, split)
    assert best.epochs == 5 and (best.subset, best.val_size) == (1000, 500)  # the final length, the base's data

    study = load(stores.optuna)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.trials[0].params == base_params(base) and study.trials[0].user_attrs["base"]
    assert best == suggest_config(optuna.trial.FixedTrial(study.best_trial.params), base)

    (search_run,) = children(main)
    assert search_run.info.run_name == "search" and search_run.info.status == "FINISHED"
    assert search_run.data.tags["pipeline_step"] == "search" and search_run.data.tags["model_family"] == "cnn"
    trials = children(search_run)
    assert [r.info.run_name for r in trials] == ["trial-0", "trial-1", "trial-2"]
    client = mlflow.MlflowClient()
    for run, trial in zip(trials, study.trials):
        assert run.data.tags["optuna_state"] == trial.state.name == "COMPLETE" and run.info.status == "FINISHED"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"]) and run.data.params["epochs"] == "1"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        # The value: the blend of clean and corrupted validation accuracy (robust_weight 0.5 by default).
        clean, robust = run.data.metrics["val_accuracy"], run.data.metrics["val_robust_mean_accuracy"]
        assert trial.user_attrs["val_accuracy"] == pytest.approx(clean) and 0 < robust < 1
        assert run.data.metrics["val_score"] == pytest.approx(trial.value) == pytest.approx((clean + robust) / 2)
    metrics, params = search_run.data.metrics, search_run.data.params
    assert (
        metrics["n_complete"] == 3
        and metrics["n_pruned"] == 0
        and metrics["n_failed"] == 0
        and metrics["n_trials"] == 3
    )
    assert metrics["best_val_score"] == pytest.approx(study.best_value)
    assert metrics["default_val_score"] == pytest.approx(study.trials[0].value)
    assert metrics["best_val_accuracy"] == pytest.approx(study.best_trial.user_attrs["val_accuracy"])
    assert metrics["best_val_robust_mean_accuracy"] == pytest.approx(
        study.best_trial.user_attrs["val_robust_mean_accuracy"]
    )
    assert {f"best_{p}" for p in SEARCHED} <= set(params) and params["best_width"] == str(study.best_params["width"])
    figures = {a.path for a in client.list_artifacts(search_run.info.run_id, "figures")}
    assert {
        f"figures/{n}.png" for n in ("optimization_history", "param_importances", "parallel_coordinate", "slice")
    } <= figures

    # A second run continues the study: trials add up, finished ones are not redone.
    with tracking.run("main"):
        search_once(base, SearchConfig(n_trials=2, trial_epochs=1, storage=stores.optuna), mnist, split)
    study = load(stores.optuna)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 5
    assert sum(1 for t in study.trials if t.user_attrs.get("base")) == 1


@pytest.mark.data
def test_pruned_trials_end_killed_and_tagged_not_failed(mnist, stores, monkeypatch):
    from digits.mlops import tracking

    monkeypatch.setattr(study_mod, "make_pruner", lambda trial_epochs: AlwaysPrune())
    with tracking.run("main") as main:
        search_once(
            TrainConfig(**TINY),
            SearchConfig(n_trials=3, trial_epochs=2, storage=stores.optuna),
            mnist,
            tiny_split(mnist),
        )
    study = load(stores.optuna)
    # The untuned reference is never pruned; every other trial is, after its first epoch.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert all(list(t.intermediate_values) == [1] for t in study.trials[1:])
    (search_run,) = children(main)
    runs = children(search_run)
    assert [(r.info.status, r.data.tags["optuna_state"]) for r in runs] == [
        ("FINISHED", "COMPLETE"),
        ("KILLED", "PRUNED"),
        ("KILLED", "PRUNED"),
    ]
    assert "after epoch 1 of 2" in runs[1].data.tags["prune_reason"]
    assert search_run.data.metrics["n_pruned"] == 2 and search_run.data.metrics["n_failed"] == 0
    assert search_run.info.status == "FINISHED"


@pytest.mark.data
def test_a_diverging_trial_fails_with_a_reason_and_the_search_goes_on(mnist, stores):
    from digits.mlops import tracking

    # Without batch norm, lr=10 turns the loss into NaN in the first epoch; the base is trial 0.
    base = TrainConfig(lr=10.0, batch_norm=False, batch_size=64, **TINY)
    with tracking.run("main") as main:
        best = search_once(
            base, SearchConfig(n_trials=2, trial_epochs=1, storage=stores.optuna), mnist, tiny_split(mnist)
        )
    study = load(stores.optuna)
    assert len(study.trials) == 2 and study.trials[0].state == TrialState.FAIL
    assert "nan" in study.trials[0].user_attrs["fail_reason"].lower()
    assert study.trials[1].state == TrialState.COMPLETE  # the search went on
    assert best.lr == study.trials[1].params["lr"]
    (search_run,) = children(main)
    failed = children(search_run)[0]
    assert (
        failed.info.status == "FAILED"
        and failed.data.tags["optuna_state"] == "FAIL"
        and "nan" in failed.data.tags["fail_reason"].lower()
    )
    assert search_run.info.status == "FINISHED" and search_run.data.metrics["n_failed"] == 1


# --- e2e: digits tune in subprocesses -----------------------------------------------------------------------------


def wait_mid_trial(process: subprocess.Popen, storage: str, min_finished: int = 1, timeout: float = 120) -> int:
    """Wait until a trial is RUNNING past its first epoch with ``min_finished`` finished before it; its number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            trials = load(storage).trials
        except Exception:  # the study is not created yet
            trials = []
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING and t.intermediate_values and "mlflow_run_id" in t.user_attrs
        ]
        if running and sum(t.state.is_finished() for t in trials) >= min_finished:
            return running[0].number
        time.sleep(0.2)
    process.kill()
    raise AssertionError("no trial reached its second epoch in time")


def start_tune(stores, data_dir: Path, n_trials: int = 20) -> subprocess.Popen:
    """A ``digits tune`` process with 2-epoch trials on 2,000 images (long enough to be caught mid-trial).

    Its SIGINT is reset to the default: a shell that starts the test suite in the background (``make test &``)
    makes its children ignore SIGINT, and the CLI rightly leaves an ignored SIGINT ignored.
    """
    command = tune(stores.optuna, data_dir, n_trials=n_trials, trial_epochs=2, subset=2000)
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 - runs in the child before exec
    return subprocess.Popen(
        command, cwd=stores.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=reset
    )


def assert_no_running_runs() -> dict:
    runs = {r.info.run_id: r for r in all_runs()}
    assert "RUNNING" not in {r.info.status for r in runs.values()}
    return runs


@pytest.mark.e2e
def test_interrupted_then_killed_then_resumed_search_keeps_the_study_consistent(mnist_dir, stores):
    # 1. Ctrl-C (SIGINT) mid-trial: the trial fails as interrupted, the runs end KILLED, exit code 130.
    process = start_tune(stores, mnist_dir)
    number = wait_mid_trial(process, stores.optuna, min_finished=0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    study = load(stores.optuna)
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    # The trial seen mid-epoch, or (had it just finished) the next one: the only failure, marked as interrupted.
    (interrupted,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert interrupted.number >= number and "interrupted" in interrupted.user_attrs["fail_reason"]
    runs = assert_no_running_runs()
    trial_run = runs[interrupted.user_attrs["mlflow_run_id"]]
    assert trial_run.info.status == "KILLED" and trial_run.data.tags["optuna_state"] == "FAIL"
    assert runs[interrupted.user_attrs["mlflow_search_run_id"]].info.status == "KILLED"

    # 2. SIGKILL mid-trial: no clean-up can run, the trial is left RUNNING (a zombie)...
    for _attempt in range(
        3
    ):  # a pruned trial can end between the poll and the kill: then there is no zombie, try again
        process = start_tune(stores, mnist_dir)
        wait_mid_trial(process, stores.optuna, min_finished=len(study.trials))
        process.kill()
        process.communicate(timeout=60)
        study = load(stores.optuna)
        zombies = [t.number for t in study.trials if t.state == TrialState.RUNNING]
        if zombies:
            break
    (zombie,) = zombies
    count = len(study.trials)

    # 3. ...until the next start marks it failed, before adding its own trial.
    rerun = subprocess.run(
        tune(stores.optuna, mnist_dir, n_trials=1, trial_epochs=2, subset=2000),
        cwd=stores.dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(stores.optuna)
    assert [t.number for t in study.trials] == list(range(count + 1))
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert study.trials[zombie].state == TrialState.FAIL and "died" in study.trials[zombie].user_attrs["fail_reason"]
    assert study.trials[-1].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # A worker killed between two trials (a retried kill above) left only its search run RUNNING: ended too.
    runs = assert_no_running_runs()
    assert runs[study.trials[zombie].user_attrs["mlflow_run_id"]].info.status == "KILLED"
    assert runs[study.trials[zombie].user_attrs["mlflow_search_run_id"]].info.status == "KILLED"


@pytest.mark.e2e
def test_sigterm_mid_trial_fails_the_trial_and_ends_the_runs_killed(mnist_dir, stores):
    # SIGTERM arrives as RunInterrupted, a BaseException that Optuna itself does not turn into a failed trial.
    process = start_tune(stores, mnist_dir)
    wait_mid_trial(process, stores.optuna, min_finished=0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    study = load(stores.optuna)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert "RunInterrupted" in study.trials[0].user_attrs["fail_reason"]
    runs = assert_no_running_runs()
    assert {r.info.status for r in runs.values()} == {"KILLED"}


@pytest.fixture(scope="module")
def two_workers(mnist_dir, mlflow_db_template, tmp_path_factory) -> SimpleNamespace:
    """Two ``digits tune`` processes started together on one new study, 3 trials each (run once for two tests)."""
    directory = tmp_path_factory.mktemp("two-workers")
    shutil.copy(mlflow_db_template, directory / "mlflow.db")
    stores = SimpleNamespace(
        tracking=f"sqlite:///{directory / 'mlflow.db'}", optuna=f"sqlite:///{directory / 'optuna.db'}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = stores.tracking
    workers = [
        subprocess.Popen(
            tune(stores.optuna, mnist_dir, n_trials=3),
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-3000:]
    return stores


@pytest.mark.e2e
def test_two_parallel_workers_lose_and_duplicate_no_trial(two_workers):
    study = load(two_workers.optuna)
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert sum(1 for t in study.trials if t.user_attrs.get("base")) == 1
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 6  # no config drawn twice
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    client = mlflow.MlflowClient(tracking_uri=two_workers.tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    searches = [r for r in runs if r.info.run_name == "search"]
    assert len(searches) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for search_run in searches:
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search_run.info.run_id]
        assert len(trials) == 3 and search_run.data.metrics["n_trials_added"] == 3


@pytest.mark.e2e
def test_the_stored_study_opens_in_a_fresh_process_and_in_optuna_dashboard(two_workers):
    code = textwrap.dedent(
        f"""
        import json, optuna, optuna_dashboard
        from wsgiref.util import setup_testing_defaults
        storage = {two_workers.optuna!r}
        study = optuna.load_study(study_name="digits-cnn", storage=storage)
        app = optuna_dashboard.wsgi(storage)  # what `optuna-dashboard STORAGE` serves

        def get(path):
            environ = {{"PATH_INFO": path, "REQUEST_METHOD": "GET"}}
            setup_testing_defaults(environ)
            status = []
            body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
            assert status[0].startswith("200"), (path, status)
            return json.loads(body)

        (summary,) = get("/api/studies")["study_summaries"]
        detail = get(f"/api/studies/{{summary['study_id']}}")
        print(json.dumps({{
            "optuna": [t.state.name for t in study.trials],
            "dashboard_name": summary["study_name"],
            "dashboard": [t["state"] for t in detail["trials"]],
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(seen["optuna"]) == 6 and set(seen["optuna"]) <= {"COMPLETE", "PRUNED"}
    assert seen["dashboard_name"] == "digits-cnn"
    assert [s.upper() for s in seen["dashboard"]] == seen["optuna"]


@pytest.mark.e2e
def test_mlflow_run_tune_nests_the_search_under_its_run(mnist_dir, stores):
    args = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local", "-e", "tune"]
    params = {
        "n_trials": 2,
        "trial_epochs": 1,
        "subset": 1000,
        "timeout": 0,
        "data_dir": mnist_dir,
        "storage": stores.optuna,
    }
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    parents = [r for r in all_runs() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    (top,) = parents
    # The run `mlflow run` made holds its -P values; the search is its child, as under main; the trials below that.
    assert top.info.status == "FINISHED" and top.data.tags["pipeline_step"] == "tune"
    assert top.data.params["n_trials"] == "2" and top.data.params["timeout"] == "0"
    (search_run,) = children(top)
    assert search_run.info.run_name == "search" and search_run.info.status == "FINISHED"
    assert search_run.data.metrics["n_trials"] == 2 and [r.info.run_name for r in children(search_run)] == [
        "trial-0",
        "trial-1",
    ]
    assert len(load(stores.optuna).trials) == 2

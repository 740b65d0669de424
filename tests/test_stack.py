"""The scale-out path with the real parts: ``digits stack`` (PostgreSQL + an MLflow tracking server), parallel workers.

The ``scale`` tests start one stack for the module (``digits stack up --dir <tmp>`` on free ports; ``down --purge`` at
the end, which must leave no process behind) and run ``digits tune`` workers on it with a tiny config: 1,000
training and 500 validation images, one thread each. They need Debian's ``postgresql`` package (``.ci/run`` installs
it). The ``scale`` tests are of the ``e2e`` tier; the ``unit`` tests at the top need neither.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from digits.core.config import SearchConfig, TrainConfig
from digits.ops import processes
from digits.ops import stack as stack_mod
from tests.conftest import ROOT, digits_command, tiny_reader_flags
from tuning import workers
from workflow.cli import build_parser

TINY = ["--subset", "1000", "--val_size", "500", "--threads", "1", "--trial_epochs", "1"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --- unit: no server ----------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_missing_postgresql_binaries_are_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_mod.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(stack_mod.shutil, "which", lambda name: None)
    with pytest.raises(stack_mod.StackError) as info:
        stack_mod.up(stack_mod.open_stack(tmp_path / "s"))
    assert "apt-get install postgresql" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()  # said before anything was created


@pytest.mark.unit
def test_status_of_a_stopped_stack_exits_3_and_prints_what_to_export(tmp_path):
    result = subprocess.run(
        digits_command("stack", "status", "--dir", str(tmp_path), "--pg_port", "6543", "--mlflow_port", "6544"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "stopped" in result.stdout
    assert f"export PGPASSFILE={tmp_path / 'pgpass'}" in result.stdout
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:6544" in result.stdout
    assert "--storage postgresql://digits@127.0.0.1:6543/optuna" in result.stdout


@pytest.mark.unit
def test_trials_and_cores_are_shared_between_workers(monkeypatch):
    assert workers.shares(12, 3) == [4, 4, 4] and workers.shares(5, 2) == [3, 2] and workers.shares(1, 4) == [1]
    monkeypatch.setattr(workers, "cores", lambda: 16)
    assert workers.threads_per_worker(TrainConfig(), 4) == 4
    assert workers.threads_per_worker(TrainConfig(threads=3), 4) == 3  # given: kept
    monkeypatch.setattr(workers, "cores", lambda: 2)
    assert workers.threads_per_worker(TrainConfig(), 3) == 1


@pytest.mark.unit
def test_a_worker_command_carries_every_setting_of_the_study():
    base = TrainConfig(optimizer="adamw", batch_norm=False, subset=1000, lr=0.003)
    search = SearchConfig(
        n_trials=12, trial_epochs=1, storage="postgresql://digits@127.0.0.1:1/optuna", study_name="s", workers=3
    )
    command = workers.worker_command(base, search, 4, 1, "abc123")
    assert command[:4] == [sys.executable, "-m", "digits", "tune"]
    args = build_parser().parse_args(command[3:])
    assert args.parent_run_id == "abc123" and args.n_trials == 4 and args.threads == 1 and args.workers == 1
    for name, value in {**base.to_dict(), **search.to_dict()}.items():
        if name not in ("epochs", "n_trials", "threads", "workers"):
            assert getattr(args, name) == value, name


# --- the real stack -----------------------------------------------------------------------------------------------


def _stack(directory: Path, action: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        digits_command("stack", action, "--dir", str(directory), *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def _processes_of(directory: Path) -> list[str]:
    """Live processes whose command line names the stack's folder or its data directory."""
    needles = {str(directory)} | ({str((directory / "pgdata").resolve())} if (directory / "pgdata").exists() else set())
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        pid = stat.split("/")[2]
        try:
            if Path(stat).read_text().rsplit(")", 1)[1].split()[0] == "Z" or int(pid) == os.getpid():
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if any(n in cmdline for n in needles) and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A stack for this module's tests: ``digits stack up`` on free ports, ``stack down --purge`` at the end."""
    try:
        stack_mod.pg_bin()
    except stack_mod.StackError as exc:
        pytest.fail(f"the scale tests need PostgreSQL: {exc}")
    directory = tmp_path_factory.mktemp("stack") / "stack"
    pg_port, mlflow_port = processes.free_port(), processes.free_port()
    started = _stack(directory, "up", "--pg_port", str(pg_port), "--mlflow_port", str(mlflow_port))
    pgdata = (directory / "pgdata").resolve()
    server = processes.read_pid(directory / "mlflow.pid")
    try:
        assert started.returncode == 0, started.stderr[-3000:] + started.stdout[-3000:]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
        env.update(PGPASSFILE=str(directory / "pgpass"), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}")
        yield SimpleNamespace(
            dir=directory,
            env=env,
            tracking=env["MLFLOW_TRACKING_URI"],
            storage=f"postgresql://digits@127.0.0.1:{pg_port}/optuna",
            password=(directory / "pgpass").read_text().strip().rsplit(":", 1)[1],
            pg_port=pg_port,
            work=tmp_path_factory.mktemp("work"),
        )
    finally:
        stopped = _stack(directory, "down", "--purge")
        left = _processes_of(directory) + _processes_of(pgdata)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not left, f"left running after stack down: {left}"
        assert not (server and processes.group_alive(server)), (
            "processes of the mlflow server's group outlived stack down"
        )
        assert not pgdata.exists() and not directory.exists()


def _tune(
    live, data_dir: Path, study: str, n_trials: int, *extra: str, storage: str | None = None, env: dict | None = None
) -> subprocess.Popen:
    command = digits_command(
        "tune",
        "--data_dir",
        str(data_dir),
        *TINY,
        "--n_trials",
        str(n_trials),
        "--storage",
        storage or live.storage,
        "--study_name",
        study,
        *extra,
    )
    # Output to a file, not a pipe: a pipe nobody reads while the worker runs could fill and block it.
    log = live.work / f"{study}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=live.work, env=env or live.env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    process.log = log
    return process


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a worker; its output."""
    process.wait(timeout=timeout)
    return process.log.read_text()


def _client(live) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=live.tracking)


def _runs(live) -> list:
    client = _client(live)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def _study(live, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=live.storage.replace("digits@", f"digits:{live.password}@"))


@pytest.fixture(scope="module")
def three_workers(live, mnist_dir):
    """3 ``digits tune`` workers x 4 trials started together on one new study; one gives its password in the URL."""
    inline = live.storage.replace("digits@", f"digits:{live.password}@")
    no_pgpass = {k: v for k, v in live.env.items() if k != "PGPASSFILE"}
    processes = [
        _tune(live, mnist_dir, "three", 4),
        _tune(live, mnist_dir, "three", 4),
        _tune(live, mnist_dir, "three", 4, storage=inline, env=no_pgpass),
    ]
    outputs = [_finish(p) for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return SimpleNamespace(outputs=outputs)


@pytest.mark.scale
@pytest.mark.e2e
def test_three_workers_fill_one_study_with_twelve_trials_and_runs_on_the_server(live, three_workers, tmp_path):
    study = _study(live, "three")
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert all(t.state in FINISHED for t in study.trials)
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 3
    runs = _runs(live)
    searches = [
        r
        for r in runs
        if r.data.tags.get("pipeline_step") == "search" and r.data.tags.get("optuna_study_name") == "three"
    ]
    trials = [
        r
        for r in runs
        if r.data.tags.get("pipeline_step") == "trial" and r.data.tags.get("optuna_study_name") == "three"
    ]
    assert len(searches) == 3 and len(trials) == 12
    assert sorted(int(r.data.tags["optuna_trial_number"]) for r in trials) == list(range(12))
    search_ids = {r.info.run_id for r in searches}
    assert all(r.data.tags["mlflow.parentRunId"] in search_ids and r.info.status == "FINISHED" for r in trials)
    for search in searches:  # each trial under its own worker's search run
        assert sum(r.data.tags["mlflow.parentRunId"] == search.info.run_id for r in trials) == 4
    # Artifacts go through the server (proxied) into the stack's artifacts folder.
    trial = trials[0]
    assert trial.info.artifact_uri.startswith("mlflow-artifacts:")
    local = mlflow.artifacts.download_artifacts(
        run_id=trial.info.run_id, artifact_path="config.json", dst_path=str(tmp_path), tracking_uri=live.tracking
    )
    assert json.loads(Path(local).read_text())["subset"] == 1000
    assert list(live.dir.glob(f"artifacts/*/{trial.info.run_id}/artifacts/config.json"))


@pytest.mark.scale
@pytest.mark.e2e
def test_optuna_dashboard_shows_the_shared_study(live, three_workers):
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    app = optuna_dashboard.wsgi(
        live.storage.replace("digits@", f"digits:{live.password}@")
    )  # what `optuna-dashboard URL` serves

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), (path, status)
        return json.loads(body)

    (summary,) = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == "three"]
    assert len(get(f"/api/studies/{summary['study_id']}")["trials"]) == 12


@pytest.mark.scale
@pytest.mark.e2e
def test_the_password_reaches_no_log_tag_or_param(live, three_workers):
    for run in _runs(live):
        assert live.password not in json.dumps({**run.data.params, **run.data.tags})
    for output in three_workers.outputs:
        assert live.password not in output
    for log in ("mlflow.log", "postgres.log"):
        assert live.password not in (live.dir / log).read_text()
    assert (live.dir / "pgpass").stat().st_mode & 0o777 == 0o600


def _running_trials(live, study: str, pid: int) -> list[int]:
    """The trials worker ``pid`` is running (their MLflow runs started)."""
    try:
        trials = _study(live, study).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is not created yet
        return []
    return [
        t.number for t in trials if t.user_attrs.get("worker", {}).get("pid") == pid and "mlflow_run_id" in t.user_attrs
    ]


def _wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


@pytest.mark.scale
@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_a_worker_killed_mid_trial_has_its_trial_failed_by_the_heartbeat_and_retried(live, mnist_dir):
    # As on another machine: the survivor was running already, so only the storage's heartbeat can tell
    # (grace_period 6 instead of 60 s, for the test's sake).
    longer = ("--trial_epochs", "2", "--subset", "2000", "--grace_period", "6")
    victim, survivor = (_tune(live, mnist_dir, "kill", n, *longer) for n in (6, 8))
    _wait_for(lambda: _running_trials(live, "kill", survivor.pid), "the survivor runs a trial")
    _wait_for(lambda: _running_trials(live, "kill", victim.pid), "the victim runs a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    (number,) = _running_trials(live, "kill", victim.pid)  # left RUNNING: no clean-up ran
    output = _finish(survivor)
    assert survivor.returncode == 0, output[-3000:]
    study = _study(live, "kill")
    trials = {t.number: t for t in study.trials}
    killed = trials[number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == number]
    assert len(retries) == 1 and retries[0].state in FINISHED and retries[0].params == killed.params
    assert TrialState.RUNNING not in {t.state for t in study.trials} and TrialState.WAITING not in {
        t.state for t in study.trials
    }
    runs = {r.info.run_id: r for r in _runs(live)}
    assert "RUNNING" not in {r.info.status for r in runs.values()}
    killed_run = runs[killed.user_attrs["mlflow_run_id"]]
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["optuna_state"] == "FAIL"
    assert runs[killed.user_attrs["mlflow_search_run_id"]].info.status == "KILLED"


@pytest.mark.scale
@pytest.mark.e2e
def test_a_restarted_stack_keeps_the_study_the_runs_and_the_artifacts(live, three_workers, tmp_path):
    before = {r.info.run_id: r.info.status for r in _runs(live)}
    stopped = _stack(live.dir, "down")
    assert stopped.returncode == 0 and "postgresql" in stopped.stdout, stopped.stderr
    assert not _processes_of(live.dir) and not _processes_of((live.dir / "pgdata").resolve())
    assert _stack(live.dir, "status").returncode == 3
    again = _stack(live.dir, "up")  # the ports of the last up
    assert again.returncode == 0, again.stderr[-3000:]
    assert _stack(live.dir, "up").returncode == 0  # idempotent: both already running
    assert {r.info.run_id: r.info.status for r in _runs(live)} == before
    assert len(_study(live, "three").trials) == 12
    trial = next(r for r in _runs(live) if r.data.tags.get("pipeline_step") == "trial")
    assert Path(
        mlflow.artifacts.download_artifacts(
            run_id=trial.info.run_id, artifact_path="config.json", dst_path=str(tmp_path), tracking_uri=live.tracking
        )
    ).is_file()


@pytest.mark.scale
@pytest.mark.e2e
def test_main_with_two_workers_retrains_the_best_trial_once(live, mnist_dir):
    command = digits_command(
        "main",
        *tiny_reader_flags(),
        "--robust_size",
        "300",
        "--data_dir",
        str(mnist_dir),
        *TINY,
        "--epochs",
        "1",
        "--n_trials",
        "4",
        "--workers",
        "2",
        "--storage",
        live.storage,
        "--study_name",
        "main2",
        "--model_name",
        "digits-cnn-scale-test",
    )
    result = subprocess.run(command, cwd=live.work, env=live.env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(live)
    (top,) = [r for r in runs if r.data.tags.get("pipeline_step") == "main"]
    assert top.info.status == "FINISHED" and top.data.tags["search_workers"] == "2"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    searches = [r for r in children if r.info.run_name == "search"]
    assert len(searches) == 2 and len({json.loads(r.data.tags["optuna_worker"])["pid"] for r in searches}) == 2
    assert [r.info.run_name for r in children if r.info.run_name == "cnn-final"] == ["cnn-final"]
    trials = [
        r
        for r in runs
        if r.data.tags.get("pipeline_step") == "trial" and r.data.tags.get("optuna_study_name") == "main2"
    ]
    assert len(trials) == 4 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {r.info.run_id for r in searches}
    study = _study(live, "main2")
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    (final,) = [r for r in children if r.info.run_name == "cnn-final"]
    assert float(final.data.params["lr"]) == pytest.approx(best.params["lr"])

"""Workers that die: their RUNNING trials failed (and retried once), their MLflow runs ended KILLED.

A worker is a process running trials of a study. Two ways tell a dead one:

- Optuna's heartbeat (``tuning.storage``): a RUNNING trial whose worker has been silent for ``GRACE_PERIOD``
  seconds is failed by ``optuna.storages.fail_stale_trials``, which Optuna also runs before each new trial; the
  storage's stale-trial callback (``on_stale_trial``) ends its MLflow runs and retries it once
  (``RetryHeartbeatStaleTrialCallback``). This is what works across machines.
- On this host, the worker's process itself: every trial records its worker (host, pid, process start time), so
  a trial whose process is gone is failed at once. Kept because it is the common case (a ``mlflow run`` stopped
  with kill -9, then run again on the same machine): without it, the rerun's dashboard shows the dead trial
  RUNNING for another minute and its retry waits for that minute. About 40 lines.

A worker killed between two trials leaves no RUNNING trial, only its ``search`` run: ``kill_dead_search_runs``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import warnings
from typing import Any

import mlflow
import optuna
from mlflow.entities import RunStatus
from optuna.trial import FrozenTrial, TrialState

from digits.core.errors import first_line
from tuning.storage import GRACE_PERIOD

log = logging.getLogger(__name__)

# Set by tuning.workers on the run of a pipeline that started worker processes (tuning.workers imports this module).
ORCHESTRATOR_TAG = "search_workers"
WORKER_TAG = "optuna_worker"  # the search run's worker, as JSON: the same host/pid/started as a trial's "worker"
# A trial is retried once when its worker dies; a trial that kills its worker twice is not tried a third time.
MAX_RETRY = 1


def this_worker(trial_number: int | None = None) -> dict[str, Any]:
    """This process as a worker: host, pid, process start time, and the trial it runs (for a trial's attribute).

    The trial number matters because a retried trial inherits its dead predecessor's user attributes: an
    inherited ``worker`` (another trial's) is not taken for this trial's.
    """
    worker: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}
    if trial_number is not None:
        worker["trial"] = trial_number
    return worker


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so that a recycled pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # The command name (field 2) may hold spaces, so count fields from its closing parenthesis.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return started is None or _process_start(pid) in (None, started)


def died_here(worker: dict[str, Any]) -> bool:
    """Whether the worker that ``this_worker()`` described ran on this host and its process is gone."""
    return worker.get("host") == socket.gethostname() and not _process_alive(int(worker["pid"]), worker.get("started"))


def _worker_of(trial: FrozenTrial) -> dict[str, Any] | None:
    worker = trial.user_attrs.get("worker")
    # Without "trial": recorded by an older version, before retries existed.
    return worker if worker and worker.get("trial", trial.number) == trial.number else None


def fail_zombies(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone (retrying each once); return their numbers.

    On this host a trial's worker is checked directly (pid and process start time); a worker on another host is
    judged by the heartbeat (silent for ``GRACE_PERIOD`` seconds). A live worker's trial is never touched.
    ``storage`` is the study's (as opened by ``tuning.storage.open_storage``): it records why a trial failed.
    """
    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = _worker_of(trial)
        if worker is None:
            # A trial gets its worker within milliseconds of starting; one without, older than the grace period,
            # was left by a worker killed between asking for the trial and starting it.
            silent = (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
            dead = silent > (getattr(storage, "grace_period", None) or GRACE_PERIOD)  # RDBStorage keeps it
            reason = "its worker died before the trial started"
        elif worker["host"] == host:
            dead, reason = died_here(worker), f"its worker (pid {worker['pid']}) died"
        else:
            continue  # another host's worker: the heartbeat check below decides
        if dead and _fail_trial(study, storage, trial, reason):
            failed.append(trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        stale_before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)  # calls on_stale_trial for each
    failed += sorted(
        t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in stale_before
    )
    if failed:
        log.warning(
            "study %s: marked %d trial(s) of dead workers failed (each retried once): %s",
            study.study_name,
            len(failed),
            failed,
        )
    return failed


def _fail_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial, reason: str) -> bool:
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=False)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False  # another worker cleaned it up first
    on_stale_trial(study, trial, reason)
    return True


def on_stale_trial(
    study: optuna.Study, trial: FrozenTrial, reason: str = "its worker stopped sending heartbeats"
) -> None:
    """For a trial failed because its worker died: end its MLflow runs KILLED and enqueue it once more.

    The storage's ``heartbeat_stale_trial_callback`` (then the trial is finished already, so ``reason`` goes to
    its MLflow run only). The retry is a WAITING copy of the trial that the next free worker takes.
    """
    _kill_mlflow_runs(trial, reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def fail_own_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials of this process: the clean-up of an interrupted ``study.optimize``.

    Optuna fails the trial for an exception or Ctrl-C, but not for SIGTERM's ``RunInterrupted`` (a
    BaseException). A trial asked for but stopped before its objective recorded the worker is left to
    ``fail_zombies`` of the next start (after the grace period).
    """
    me = this_worker()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = _worker_of(trial)
        if worker and (worker["host"], worker["pid"], worker["started"]) == (me["host"], me["pid"], me["started"]):
            try:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as exc:  # the clean-up must not mask the interruption
                log.warning("could not mark trial %d failed: %s", trial.number, first_line(exc))


def _kill_mlflow_runs(trial: FrozenTrial, reason: str) -> None:
    """End a dead worker's trial run and the runs above it KILLED (they would otherwise show RUNNING forever)."""
    client = mlflow.MlflowClient()
    run_id = (
        trial.user_attrs.get("mlflow_run_id") if _worker_of(trial) else None
    )  # an inherited id is the dead predecessor's
    try:
        if run_id:
            client.set_tag(run_id, "optuna_state", "FAIL")
            client.set_tag(run_id, "fail_reason", reason)
        _end_killed(client, run_id)
    except Exception as exc:  # the runs may live on another tracking server; the study is what must be consistent
        log.warning("could not end the MLflow runs of trial %d: %s", trial.number, first_line(exc))


def _end_killed(client: mlflow.MlflowClient, run_id: str | None) -> None:
    for _ in range(4):  # trial, search, pipeline: a few levels at most
        if not run_id:
            break
        run = client.get_run(run_id)
        if ORCHESTRATOR_TAG in run.data.tags:  # a pipeline that started workers: alive, it ends its own run
            break
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        run_id = run.data.tags.get("mlflow.parentRunId")


def kill_dead_search_runs(experiment_id: str, study_name: str, storage: str, keep: str = "") -> list[str]:
    """End KILLED the RUNNING search runs of ``study_name`` (and the runs above them) whose worker on this host died.

    A worker killed between two trials leaves no RUNNING trial for ``fail_zombies`` to find, only its search run.
    Runs of workers on other hosts, of live workers, and ``keep`` are left alone. Returns the runs ended.
    """
    client = mlflow.MlflowClient()
    ended = []
    try:
        runs = client.search_runs(
            [experiment_id], "tags.pipeline_step = 'search' AND attributes.status = 'RUNNING'", max_results=1000
        )
        for run in runs:
            tags = run.data.tags
            if (
                run.info.run_id == keep
                or tags.get("optuna_study_name") != study_name
                or tags.get("optuna_storage") != storage
            ):
                continue
            worker = json.loads(tags.get(WORKER_TAG, "{}"))
            if not worker or not died_here(worker):
                continue
            client.set_tag(run.info.run_id, "end_reason", f"its worker (pid {worker['pid']}) died between trials")
            _end_killed(client, run.info.run_id)
            ended.append(run.info.run_id)
    except Exception as exc:  # a tracking server that cannot search: the new search goes on regardless
        log.warning("could not look for the search runs of dead workers: %s", first_line(exc))
    if ended:
        log.warning(
            "study %s: ended KILLED %d search run(s) of dead workers: %s", study_name, len(ended), ", ".join(ended)
        )
    return ended

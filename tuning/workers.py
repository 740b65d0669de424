"""Local worker processes: one search run by N ``digits tune`` processes on this machine, each with its share of cores.

``run_workers(base, search, parent_run_id)`` starts ``search.workers`` processes on the study (``search.n_trials``
split between them), each nesting its ``search`` run under ``parent_run_id``, waits for them, and returns how
many failed. The study itself (a database all of them open) is what they share: Optuna numbers the trials in one
transaction each, so none is lost or run twice, and a worker that dies has its trial failed and retried once by
another (``tuning.liveness``). Ctrl-C reaches the workers with the terminal's process group; SIGTERM to the caller
is passed on to them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import mlflow

from digits.core.config import SearchConfig, TrainConfig
from tuning.liveness import ORCHESTRATOR_TAG

log = logging.getLogger(__name__)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def shares(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` split between at most ``workers`` workers, as evenly as it goes (none gets 0)."""
    n = min(workers, n_trials)
    return [n_trials // n + (1 if i < n_trials % n else 0) for i in range(n)] if n else []


def threads_per_worker(base: TrainConfig, workers: int) -> int:
    """The given ``threads``, or (0: auto) this machine's cores divided between the workers: PyTorch's OpenMP
    threads spin while they wait, so oversubscribed cores slow every worker down (benchmarks/RESULTS.md)."""
    return base.threads or max(1, cores() // workers)


def worker_command(
    base: TrainConfig, search: SearchConfig, n_trials: int, threads: int, parent_run_id: str
) -> list[str]:
    """The ``python -m digits tune`` command line of one worker (every flag spelt out, as ``-e tune`` would)."""
    command = [sys.executable, "-m", "digits", "tune"]
    values = {**base.to_dict(), **search.to_dict(), "n_trials": n_trials, "threads": threads, "workers": 1}
    for name, value in values.items():
        if name != "epochs":  # a trial trains trial_epochs; tune refuses --epochs
            command += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return command + ["--parent_run_id", parent_run_id]


def run_workers(base: TrainConfig, search: SearchConfig, parent_run_id: str) -> int:
    """Run the search with ``search.workers`` local processes under ``parent_run_id``; return how many failed."""
    threads = threads_per_worker(base, search.workers)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # a worker must not resume the parent run
    env.update(
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
        MLFLOW_EXPERIMENT_ID=mlflow.get_run(parent_run_id).info.experiment_id,
    )
    plan = shares(search.n_trials, search.workers)
    # A worker that dies ends its own runs KILLED, not this one (its process is alive and ends it).
    mlflow.MlflowClient().set_tag(parent_run_id, ORCHESTRATOR_TAG, str(len(plan)))
    log.info("search: %d worker processes, %s trials, %d thread(s) each", len(plan), "+".join(map(str, plan)), threads)
    processes = [subprocess.Popen(worker_command(base, search, n, threads, parent_run_id), env=env) for n in plan]
    try:
        codes = [p.wait() for p in processes]
    except BaseException:  # interrupted: stop the workers (they fail their running trials and end their runs)
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait()
        raise
    failed = [f"pid {p.pid}: exit code {c}" for p, c in zip(processes, codes) if c != 0]
    if failed:
        log.warning(
            "search: %d of %d workers failed (%s); their trials were failed and retried by the others where possible",
            len(failed),
            len(plan),
            "; ".join(failed),
        )
    return len(failed)

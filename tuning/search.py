"""The Optuna search: a resumable study in a database, one MLflow run per trial, pruning through ``fit``'s callbacks.

``run_search(base, search, mnist, split)`` adds ``search.n_trials`` trials to the study ``search.study_name`` in
``search.storage`` and returns the best configuration found in the whole study. MLflow layout::

    <active run: main, or tune>      (the entry point's run; under `mlflow run`, the run it made)
      └─ search                      tags pipeline_step=search, model_family=cnn; best params, counts, figures
           ├─ trial-0                params, per-epoch metrics, tag optuna_state=COMPLETE|PRUNED|FAIL
           └─ trial-1 ...            PRUNED and interrupted trials end KILLED, failed ones FAILED

Crash safety: every trial records its worker (host, pid, process start time) and, through the storage's
heartbeat, when it was last alive. At start, RUNNING trials whose worker is gone are marked FAIL (and their MLflow
runs KILLED), so the study never carries zombies while a live worker's trial is left alone.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
import numpy as np
import optuna
from mlflow.entities import RunStatus
from optuna.trial import FrozenTrial, TrialState

from digits import tracking
from digits.config import SearchConfig, TrainConfig
from digits.data import MNIST, Split
from digits.errors import DigitsError
from digits.train import NonFiniteLossError, fit
from tuning.space import AUGMENT_RANGE, BATCH_SIZES, DROPOUT_RANGE, LABEL_SMOOTHING_RANGE, LR_RANGE, SEARCHED, WEIGHT_DECAY_RANGE, WIDTH_RANGE
from tuning.space import base_params, suggest_config
from digits.errors import first_line
from tuning.storage import GRACE_PERIOD, StorageError, open_storage, redact  # noqa: F401 (StorageError: re-exported)

log = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"
TPE_STARTUP_TRIALS = 5
# TrainConfig fields that neither define the trials' results nor are searched: they may differ between runs
# of one study (data_dir is replaced by the data's digest).
_MACHINE_FIELDS = ("data_dir", "epochs", "device", "threads", "compile")


class StudyMismatchError(DigitsError):
    """The study in storage was run with other fixed settings, so its values are not comparable with this run's."""

    exit_code = 2


# --- storage and study --------------------------------------------------------------------------------------------


def study_setup(base: TrainConfig, search: SearchConfig, mnist: MNIST) -> dict[str, Any]:
    """What makes two trials' values comparable: the fixed training settings, the data and the search space."""
    fixed = {k: v for k, v in base.to_dict().items() if k not in SEARCHED and k not in _MACHINE_FIELDS}
    space = {
        "lr": LR_RANGE[base.optimizer], "weight_decay": WEIGHT_DECAY_RANGE[base.optimizer], "width": WIDTH_RANGE,
        "dropout": DROPOUT_RANGE, "batch_size": BATCH_SIZES, "label_smoothing": LABEL_SMOOTHING_RANGE, "augment": AUGMENT_RANGE,
    }
    # Through JSON so that a fresh dict and one read back from storage compare equal (tuples become lists).
    return json.loads(json.dumps({**fixed, "trial_epochs": search.trial_epochs, "data_digest": mnist.digest, "space": space}))


def open_study(base: TrainConfig, search: SearchConfig, mnist: MNIST, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it if it exists and was run with the same setup (else ``StudyMismatchError``).

    A new study gets the untuned ``base`` enqueued as its first trial: the reference the tuned trials must beat.
    """
    sampler, pruner = make_sampler(base.seed), make_pruner(search.trial_epochs)
    setup = study_setup(base, search, mnist)
    try:
        study = optuna.create_study(storage=storage, study_name=search.study_name, direction="maximize", sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        # Exactly one of several workers starting together creates the study; the others land here.
        study = optuna.load_study(study_name=search.study_name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise StudyMismatchError(f"study {search.study_name!r} in {redact(search.storage)} minimises; this search maximises {OBJECTIVE}: pass another study_name")
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
        study.set_user_attr("objective", OBJECTIVE)
    elif stored != setup:
        diff = sorted(k for k in set(stored) | set(setup) if stored.get(k) != setup.get(k))
        was = ", ".join(f"{k}={_short(stored.get(k))}" for k in diff)
        now = ", ".join(f"{k}={_short(setup.get(k))}" for k in diff)
        raise StudyMismatchError(
            f"study {search.study_name!r} in {redact(search.storage)} was run with {was} (this run: {now}), "
            "so its values are not comparable: pass another study_name, or the study's settings"
        )
    if created:
        study.enqueue_trial(base_params(base), user_attrs={"base": True})
    return study


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Seeded multivariate TPE whose random draws for trial n depend on (seed, n) only.

    Re-seeding per trial number keeps a resumed study from re-drawing the first run's random start-up configs, and
    two parallel workers (which get different trial numbers) from drawing the same ones.
    """
    return _TrialSeededTPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)


class _TrialSeededTPESampler(optuna.samplers.TPESampler):
    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed
        self.started: list[int] = []  # numbers of the trials this process began, to fail them if it is stopped

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.started.append(trial.number)
        state = int(np.random.SeedSequence([self._base_seed, trial.number]).generate_state(1)[0])
        # TPESampler has no public per-trial seeding; these are its (and its start-up RandomSampler's) generators.
        self._rng.rng.seed(state)
        self._random_sampler._rng.rng.seed(state)
        super().before_trial(study, trial)


def make_pruner(trial_epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs 1..``trial_epochs``, reduction factor 3.

    Chosen by replaying recorded learning curves (``python -m tuning.pruner_replay``): within the same time budget
    it found a better best trial than no pruning, the median pruner, percentile pruners and successive halving with
    factor 2. With 2-epoch trials it is successive halving: a trial goes on to epoch 2 only if its epoch-1 accuracy
    is in the top third of the trials so far (the best, while there are fewer than three); with longer trials its
    brackets hedge against pruning too early.
    """
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=trial_epochs, reduction_factor=3)


# --- zombies: RUNNING trials of dead workers ----------------------------------------------------------------------


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


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


def _died_here(worker: dict[str, Any]) -> bool:
    """Whether the worker that ``_worker()`` described ran on this host and its process is gone."""
    return worker.get("host") == socket.gethostname() and not _process_alive(int(worker["pid"]), worker.get("started"))


def fail_zombies(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    On this host a trial's worker is checked directly (pid and process start time); a worker on another host is
    judged by the heartbeat (silent for ``GRACE_PERIOD`` seconds). A live worker's trial is never touched.
    """
    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and worker.get("host") == host:
            dead = _died_here(worker)
            reason = f"its worker (pid {worker['pid']}) died"
        elif not worker:
            # A trial gets its worker within milliseconds of starting; one without, older than the grace period,
            # was left by a worker killed between asking for the trial and starting it.
            dead = trial.datetime_start is not None and (now - trial.datetime_start).total_seconds() > GRACE_PERIOD
            reason = "its worker died before the trial started"
        else:
            continue  # another host's worker: the heartbeat check below decides
        if dead and _fail_trial(study, trial, reason):
            failed.append(trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        stale_before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
    failed += sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in stale_before)
    if failed:
        log.warning("study %s: marked %d trial(s) of dead workers failed: %s", study.study_name, len(failed), failed)
    return failed


def _fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    try:
        # FrozenTrial has no public id; the storage's user-attribute setter needs it.
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker cleaned it up first
    _kill_mlflow_runs(trial, reason)
    return True


def _on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    _kill_mlflow_runs(trial, "its worker stopped sending heartbeats")


def _kill_mlflow_runs(trial: FrozenTrial, reason: str) -> None:
    """End a dead worker's trial run and the runs above it KILLED (they would otherwise show RUNNING forever)."""
    client = mlflow.MlflowClient()
    run_id = trial.user_attrs.get("mlflow_run_id")
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
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        run_id = run.data.tags.get("mlflow.parentRunId")


WORKER_TAG = "optuna_worker"  # the search run's worker, as JSON: the same host/pid/started as a trial's "worker"


def kill_dead_search_runs(experiment_id: str, study_name: str, storage: str, keep: str = "") -> list[str]:
    """End KILLED the RUNNING search runs of ``study_name`` (and the runs above them) whose worker on this host died.

    A worker killed between two trials leaves no RUNNING trial for ``fail_zombies`` to find, only its search run.
    Runs of workers on other hosts, of live workers, and ``keep`` are left alone. Returns the runs ended.
    """
    client = mlflow.MlflowClient()
    ended = []
    try:
        runs = client.search_runs([experiment_id], "tags.pipeline_step = 'search' AND attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            tags = run.data.tags
            if run.info.run_id == keep or tags.get("optuna_study_name") != study_name or tags.get("optuna_storage") != storage:
                continue
            worker = json.loads(tags.get(WORKER_TAG, "{}"))
            if not worker or not _died_here(worker):
                continue
            client.set_tag(run.info.run_id, "end_reason", f"its worker (pid {worker['pid']}) died between trials")
            _end_killed(client, run.info.run_id)
            ended.append(run.info.run_id)
    except Exception as exc:  # a tracking server that cannot search: the new search goes on regardless
        log.warning("could not look for the search runs of dead workers: %s", first_line(exc))
    if ended:
        log.warning("study %s: ended KILLED %d search run(s) of dead workers: %s", study_name, len(ended), ", ".join(ended))
    return ended


# --- the objective ------------------------------------------------------------------------------------------------


@dataclass
class _Objective:
    base: TrainConfig
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    study_name: str
    search_run_id: str

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        config = suggest_config(trial, self.base)
        with _trial_run(trial, self.study_name, self.search_run_id) as outcome:
            tracking.log_config(config)
            reference = bool(trial.user_attrs.get("base"))
            try:
                result = fit(config, self.train, self.val, callbacks=[tracking.epoch_logger(), _pruning_callback(trial, config.epochs, reference)])
            except NonFiniteLossError as exc:
                # A diverging config is a failed trial with a reason, not a crash of the search: NaN makes Optuna
                # mark it FAIL and go on to the next trial.
                trial.set_user_attr("fail_reason", str(exc))
                outcome.fail_reason = str(exc)
                log.warning("trial %d failed: %s", trial.number, exc)
                return math.nan
            mlflow.log_metric("trial_seconds", result.seconds)
            return result.history[-1][OBJECTIVE]


def _pruning_callback(trial: optuna.Trial, epochs: int, reference: bool):
    def callback(epoch: int, metrics: dict) -> None:
        value = metrics[OBJECTIVE]
        trial.report(value, epoch)
        # Never prune after the last epoch: the work is done, and a complete result informs the sampler best.
        if epoch < epochs:
            # Ask even for the untuned reference, which always runs to the end: successive halving ranks a trial
            # only among the trials that asked at that epoch.
            prune = trial.should_prune()
            if prune and not reference:
                raise optuna.TrialPruned(f"{OBJECTIVE} {value:.4f} after epoch {epoch} of {epochs}")

    return callback


@dataclass
class _Outcome:
    fail_reason: str | None = None  # set by the objective when it returns NaN for a diverged trial


@contextlib.contextmanager
def _trial_run(trial: optuna.Trial, study_name: str, search_run_id: str) -> Iterator[_Outcome]:
    """The trial's child run: FINISHED when complete, KILLED when pruned or interrupted, FAILED on an error.

    (``tracking.run`` would end a pruned trial FAILED: ``TrialPruned`` is an exception like any other to it.)
    """
    tags = {
        "pipeline_step": "trial", "model_family": "cnn", "optuna_study_name": study_name,
        "optuna_trial_number": str(trial.number), "optuna_state": "RUNNING",
    }
    active = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags)
    trial.set_user_attr("mlflow_run_id", active.info.run_id)
    trial.set_user_attr("mlflow_search_run_id", search_run_id)
    outcome = _Outcome()
    try:
        yield outcome
    except optuna.TrialPruned as exc:
        mlflow.set_tags({"optuna_state": "PRUNED", "prune_reason": str(exc)})
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except (KeyboardInterrupt, tracking.RunInterrupted) as exc:
        reason = f"interrupted ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
        _set_quietly(trial, "fail_reason", reason)
        mlflow.set_tags({"optuna_state": "FAIL", "fail_reason": reason})
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        _set_quietly(trial, "fail_reason", first_line(exc))
        mlflow.set_tags({"optuna_state": "FAIL", "fail_reason": first_line(exc)[:500]})
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        if outcome.fail_reason is None:
            mlflow.set_tag("optuna_state", "COMPLETE")
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
        else:
            mlflow.set_tags({"optuna_state": "FAIL", "fail_reason": outcome.fail_reason[:500]})
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _set_quietly(trial: optuna.Trial, key: str, value: Any) -> None:
    with contextlib.suppress(Exception):  # recording the reason must not mask the interruption itself
        trial.set_user_attr(key, value)


# --- the search ---------------------------------------------------------------------------------------------------


def run_search(base: TrainConfig, search: SearchConfig, mnist: MNIST, split: Split) -> TrainConfig:
    """Add ``search.n_trials`` trials to the study and return the study's best config, with ``epochs=base.epochs``.

    Trials train for ``search.trial_epochs`` epochs on ``split.train`` and are scored by ``val_accuracy`` on
    ``split.val`` (the test set is never looked at). The search's MLflow run ``search`` is a child of the active
    run (the pipeline's), the trials' runs its children. Ctrl-C/SIGTERM mark the running trial FAIL and end the
    runs KILLED; rerunning continues the study.
    """
    search.validate()
    storage = open_storage(search.storage, on_stale_trial=_on_stale_trial)
    study = open_study(base, search, mnist, storage)
    fail_zombies(study)
    before = len([t for t in study.trials if t.state != TrialState.WAITING])  # an enqueued trial is not run yet
    trial_base = base.replace(epochs=search.trial_epochs)
    with tracking.model_run("search", nested=True, model_family="cnn", pipeline_step="search") as active:
        run_id = active.info.run_id
        mlflow.set_tags({
            "optuna_study_name": search.study_name, "optuna_storage": redact(search.storage),
            "optuna_sampler": type(study.sampler).__name__, "optuna_pruner": type(study.pruner).__name__,
            WORKER_TAG: json.dumps(_worker()),
        })
        kill_dead_search_runs(active.info.experiment_id, search.study_name, redact(search.storage), keep=run_id)
        _log_params_once({**search.to_dict(), "storage": redact(search.storage), **{k: v for k, v in base.to_dict().items() if k not in SEARCHED and k != "epochs"}})
        tracking.log_dataset(mnist, "train", split.train, "training")
        tracking.log_dataset(mnist, "train", split.val, "validation")
        objective = _Objective(
            trial_base, (mnist.train_images[split.train], mnist.train_labels[split.train]),
            (mnist.train_images[split.val], mnist.train_labels[split.val]), search.study_name, run_id,
        )
        log.info(
            "search: study %s in %s holds %d trial(s); adding %d of %d epoch(s) on %d images%s",
            search.study_name, redact(search.storage), before, search.n_trials, search.trial_epochs, len(split.train),
            f" (timeout {search.timeout:g}s)" if search.timeout else "",
        )
        t0 = time.perf_counter()
        try:
            with _quiet_optuna():
                study.optimize(objective, n_trials=search.n_trials, timeout=search.timeout or None)
        except BaseException:
            # Optuna marks the trial FAIL for an exception or Ctrl-C, but not for SIGTERM's RunInterrupted (a
            # BaseException), nor a trial asked for but not yet started: do it here, so that no RUNNING trial
            # outlives this process.
            with contextlib.suppress(Exception):
                running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                for number in running.intersection(getattr(study.sampler, "started", ())):
                    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            raise
        mlflow.log_metric("search_seconds", time.perf_counter() - t0)
        best = _log_summary(study)
        log_figures(study)
    if best is None:
        log.warning("search: no trial of study %s completed; keeping the given config", search.study_name)
        return base
    return suggest_config(optuna.trial.FixedTrial(best.params), base)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    with warnings.catch_warnings():
        # Enqueued values outside the space (a base config the user chose) are intended, not worth a warning.
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        yield


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # matplotlib.category logs an INFO line per categorical axis of numbers-as-strings (the batch sizes).
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _log_params_once(params: dict[str, Any]) -> None:
    """Log params not yet on the active run (``mlflow run`` logged its own -P values, maybe spelt differently)."""
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state: complete, pruned, failed, running, waiting."""
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for trial in study.get_trials(deepcopy=False):
        counts[names[trial.state]] += 1
    return counts


def _log_summary(study: optuna.Study) -> FrozenTrial | None:
    counts = trial_counts(study)
    metrics = {f"n_{k}": v for k, v in counts.items() if k in ("complete", "pruned", "failed")}
    # Trials this process ran (a parallel worker's trials are in n_trials but not here).
    metrics.update(n_trials=len(study.trials), n_trials_added=len(getattr(study.sampler, "started", ())))
    reference = next((t for t in study.trials if t.user_attrs.get("base") and t.state == TrialState.COMPLETE), None)
    if reference is not None:
        metrics["default_" + OBJECTIVE] = reference.value  # the untuned config, scored like every trial
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        metrics["best_" + OBJECTIVE] = best.value
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.set_tag("best_trial_number", str(best.number))
        mlflow.log_dict({"number": best.number, "value": best.value, "params": best.params}, "best_trial.json")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    log.info(
        "search: %d trials (%d complete, %d pruned, %d failed); best trial %s %s=%s%s",
        len(study.trials), counts["complete"], counts["pruned"], counts["failed"],
        best.number if best else "-", OBJECTIVE, f"{best.value:.4f}" if best else "-",
        f" (default config {reference.value:.4f})" if reference is not None else "",
    )
    return best


def log_figures(study: optuna.Study, artifact_dir: str = "figures") -> list[str]:
    """Log the ``optuna.visualization.matplotlib`` figures that apply to ``study``; return their artifact paths."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    varied = [p for p in SEARCHED if len({json.dumps(t.params.get(p)) for t in complete}) > 1]
    plots = {
        "optimization_history": (ovm.plot_optimization_history, len(complete) >= 1),
        "intermediate_values": (ovm.plot_intermediate_values, any(t.intermediate_values for t in study.trials)),
        "param_importances": (ovm.plot_param_importances, len(complete) >= 2 and bool(varied)),
        "parallel_coordinate": (ovm.plot_parallel_coordinate, len(complete) >= 2),
        "slice": (ovm.plot_slice, len(complete) >= 1),
        "timeline": (ovm.plot_timeline, len(study.trials) >= 1),
    }
    logged = []
    for name, (plot, applies) in plots.items():
        if not applies:
            continue
        # Optuna's plots switch the global style to ggplot: keep that inside this block.
        with matplotlib.rc_context(), warnings.catch_warnings(), _quiet_logger("matplotlib.category"):
            warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend, fANOVA's chatter
            try:
                axes = plot(study)
                figure = np.ravel(axes)[0].figure
                path = f"{artifact_dir}/{name}.png"
                # Not tight_layout: it would move the colour bars Optuna placed; a tight bounding box keeps the labels.
                mlflow.log_figure(figure, path, save_kwargs={"bbox_inches": "tight", "dpi": 120})
                logged.append(path)
            except Exception as exc:  # a figure is a nicety; the search's result must not depend on it
                log.warning("search: figure %s skipped: %s", name, first_line(exc))
            finally:
                plt.close("all")
    return logged

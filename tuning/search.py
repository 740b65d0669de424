"""The Optuna search: a resumable study in a database, one MLflow run per trial, pruning through ``fit``'s callbacks.

One worker's search, in three calls, each failing with one line before any work it would waste::

    storage = connect(search)                           # the storage URL, before the data is loaded
    study = open_search(base, search, mnist, storage)   # the study's setup, before any MLflow run
    best = run_search(study, base, search, mnist, split)

``run_search`` adds ``search.n_trials`` trials to the study and returns the best configuration found in the whole
study. MLflow layout::

    <active run: main, or tune>      (the entry point's run; under `mlflow run`, the run it made)
      └─ search                      tags pipeline_step=search, model_family=cnn; best params, counts, figures
           ├─ trial-0                params, per-epoch metrics, tag optuna_state=COMPLETE|PRUNED|FAIL
           └─ trial-1 ...            PRUNED and interrupted trials end KILLED, failed ones FAILED

The parts: ``tuning.space`` (what is searched), ``tuning.study`` (sampler, pruner, the study's identity),
``tuning.objective`` (a trial), ``tuning.liveness`` (workers that die), ``tuning.storage`` (the database).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator

import mlflow
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from digits.core import interrupts
from digits.core.config import SearchConfig, TrainConfig
from digits.core.errors import first_line, quiet_loggers
from digits.learn.data import MNIST, Split
from digits.mlops import tracking
from tuning.liveness import (
    WORKER_TAG,
    fail_own_trials,
    fail_zombies,
    kill_dead_search_runs,
    on_stale_trial,
    this_worker,
)
from tuning.objective import ROBUST, Objective
from tuning.space import SEARCHED, suggest_config
from tuning.storage import open_storage, redact
from tuning.study import OBJECTIVE, SCORE, open_study

log = logging.getLogger(__name__)


def connect(search: SearchConfig) -> optuna.storages.RDBStorage:
    """Check ``search`` and open its storage (with the dead-worker callback); ``StorageError`` in one line."""
    search.validate()
    return open_storage(search.storage, on_stale_trial=on_stale_trial, grace_period=search.grace_period)


def open_search(
    base: TrainConfig, search: SearchConfig, mnist: MNIST, storage: optuna.storages.RDBStorage
) -> optuna.Study:
    """The study this search adds to, created or checked (``StudyMismatchError``), its dead workers' trials failed."""
    study = open_study(base, search, mnist, storage)
    fail_zombies(study, storage)
    return study


# --- the search ---------------------------------------------------------------------------------------------------


def run_search(
    study: optuna.Study,
    base: TrainConfig,
    search: SearchConfig,
    mnist: MNIST,
    split: Split,
    parent_run_id: str | None = None,
) -> TrainConfig:
    """Add ``search.n_trials`` trials to ``study`` and return the study's best config, with ``epochs=base.epochs``.

    Trials train for ``search.trial_epochs`` epochs on ``split.train`` and are scored by ``val_score`` on
    ``split.val``: (1 - ``robust_weight``) x clean accuracy + ``robust_weight`` x mean accuracy over the robustness
    table's corruptions of ``robust_val_size`` validation digits (the test set is never looked at). The rule that
    picks the final configuration: the study's complete trial with the highest ``val_score`` (the untuned default
    is trial 0, scored the same way, so a tuned config must beat it to be chosen). The search's MLflow run ``search`` is a child of the active
    run (the pipeline's), the trials' runs its children. Ctrl-C/SIGTERM mark the running trial FAIL and end the
    runs KILLED; rerunning continues the study. ``parent_run_id``: the search run's parent when it is not the
    active run (a worker process started by ``tuning.workers`` under its pipeline's run).
    """
    before = len([t for t in study.trials if t.state != TrialState.WAITING])  # an enqueued trial is not run yet
    with tracking.model_run(
        "search", nested=True, model_family="cnn", pipeline_step="search", parent_run_id=parent_run_id
    ) as active:
        run_id = active.info.run_id
        _describe_search_run(study, base, search, mnist, split, active)
        objective = Objective(
            base.replace(epochs=search.trial_epochs),
            (mnist.train_images[split.train], mnist.train_labels[split.train]),
            (mnist.train_images[split.val], mnist.train_labels[split.val]),
            search.study_name,
            run_id,
            robust_weight=search.robust_weight,
            robust_val_size=search.robust_val_size,
        )
        log.info(
            "search: study %s in %s holds %d trial(s); adding %d of %d epoch(s) on %d images%s",
            search.study_name,
            redact(search.storage),
            before,
            search.n_trials,
            search.trial_epochs,
            len(split.train),
            f" (no new trial after {time_budget(search, base):g}s)" if time_budget(search, base) else "",
        )
        _optimize(study, objective, search)
        _log_summary(study, run_id)
        log_figures(study)
    return best_config(study, base)


def _describe_search_run(
    study: optuna.Study, base: TrainConfig, search: SearchConfig, mnist: MNIST, split: Split, active
) -> None:
    """Tags, params and datasets of the search's MLflow run; end the runs of this study's dead searches."""
    mlflow.set_tags(
        {
            "optuna_study_name": search.study_name,
            "optuna_storage": redact(search.storage),
            "optuna_sampler": type(study.sampler).__name__,
            "optuna_pruner": type(study.pruner).__name__,
            WORKER_TAG: json.dumps(this_worker()),
        }
    )
    kill_dead_search_runs(active.info.experiment_id, search.study_name, redact(search.storage), keep=active.info.run_id)
    tracking.log_new_params(
        {
            **search.to_dict(),
            "storage": redact(search.storage),
            **{k: v for k, v in base.to_dict().items() if k not in SEARCHED and k != "epochs"},
        }
    )
    tracking.log_dataset(mnist, "train", split.train, "training")
    tracking.log_dataset(mnist, "train", split.val, "validation")


def time_budget(search: SearchConfig, base: TrainConfig) -> float:
    """Seconds after which the search starts no new trial (0: none): ``timeout``, and ``cpu_timeout`` without CUDA.

    The rule of the default pipeline's budget: on a GPU the full ``n_trials`` run; on a CPU the search stops
    starting trials after ``cpu_timeout`` seconds (a running trial finishes), whichever of the two comes first.
    """
    from digits.learn.train import resolve_device

    limits = [search.timeout] if search.timeout else []
    if search.cpu_timeout and resolve_device(base.device).type != "cuda":
        limits.append(search.cpu_timeout)
    return min(limits) if limits else 0.0


def _optimize(study: optuna.Study, objective: Objective, search: SearchConfig) -> None:
    """``study.optimize`` for ``search.n_trials`` trials within ``time_budget``; log ``search_seconds``."""
    t0 = time.perf_counter()
    budget = time_budget(search, objective.base)
    mlflow.log_metric("search_time_budget", budget)
    try:
        with _quiet_optuna(), interrupts.interrupts_held():  # a signal waits for a trial's body (objective.py)
            study.optimize(objective, n_trials=search.n_trials, timeout=budget or None)
    except BaseException:
        fail_own_trials(study)  # so that no RUNNING trial outlives this process
        raise
    mlflow.log_metric("search_seconds", time.perf_counter() - t0)


def best_config(study: optuna.Study, base: TrainConfig) -> TrainConfig:
    """The best complete trial's config of the whole study (``base`` with its params), or ``base`` if none completed."""
    best = _best_trial(study)
    if best is None:
        log.warning("search: no trial of study %s completed; keeping the given config", study.study_name)
        return base
    return suggest_config(optuna.trial.FixedTrial(best.params), base)


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    with warnings.catch_warnings():
        # Enqueued values outside the space (a base config the user chose) are intended, not worth a warning.
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        yield


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state: complete, pruned, failed, running, waiting."""
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }
    for trial in study.get_trials(deepcopy=False):
        counts[names[trial.state]] += 1
    return counts


def _log_summary(study: optuna.Study, search_run_id: str) -> None:
    counts = trial_counts(study)
    metrics = {f"n_{k}": v for k, v in counts.items() if k in ("complete", "pruned", "failed")}
    # Trials this search run ran (a parallel worker's trials are in n_trials but not here).
    added = sum(1 for t in study.trials if t.user_attrs.get("mlflow_search_run_id") == search_run_id)
    metrics.update(n_trials=len(study.trials), n_trials_added=added)
    reference = next((t for t in study.trials if t.user_attrs.get("base") and t.state == TrialState.COMPLETE), None)
    if reference is not None:
        metrics["default_" + SCORE] = reference.value  # the untuned config, scored like every trial
        metrics.update(
            {f"default_{k}": reference.user_attrs[k] for k in (OBJECTIVE, ROBUST) if k in reference.user_attrs}
        )
    best = _best_trial(study)
    if best is not None:
        metrics["best_" + SCORE] = best.value
        metrics.update({f"best_{k}": best.user_attrs[k] for k in (OBJECTIVE, ROBUST) if k in best.user_attrs})
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.set_tag("best_trial_number", str(best.number))
        mlflow.log_dict({"number": best.number, "value": best.value, "params": best.params}, "best_trial.json")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    log.info(
        "search: %d trials (%d complete, %d pruned, %d failed); best trial %s %s=%s%s",
        len(study.trials),
        counts["complete"],
        counts["pruned"],
        counts["failed"],
        best.number if best else "-",
        SCORE,
        f"{best.value:.4f}" if best else "-",
        f" (default config {reference.value:.4f})" if reference is not None else "",
    )


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
        with matplotlib.rc_context(), warnings.catch_warnings(), quiet_loggers("matplotlib.category"):
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

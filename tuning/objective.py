"""The objective: one trial is one ``fit`` in its own MLflow run, pruned through ``fit``'s epoch callbacks.

A trial's run ends FINISHED when the trial completes, KILLED when it is pruned or interrupted, FAILED on an error
(a diverging loss included), with the tag ``optuna_state`` saying which.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import optuna
from mlflow.entities import RunStatus

from digits.core import interrupts
from digits.core.config import TrainConfig
from digits.core.errors import first_line
from digits.evaluate import robustness
from digits.learn.train import NonFiniteLossError, fit
from digits.mlops import tracking
from digits.serve.model import predict_proba
from tuning.liveness import this_worker
from tuning.space import suggest_config
from tuning.study import OBJECTIVE, SCORE

ROBUST = "val_robust_mean_accuracy"

log = logging.getLogger(__name__)


@dataclass
class Objective:
    """Train ``suggest_config(trial, base)`` on ``train``, score it on ``val``: clean accuracy and, by
    ``robust_weight``, the mean accuracy over the robustness table's corruptions of ``robust_val_size`` of its digits."""

    base: TrainConfig
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    study_name: str
    search_run_id: str
    robust_weight: float = 0.0  # SearchConfig.robust_weight
    robust_val_size: int = 1000  # SearchConfig.robust_val_size

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", this_worker(trial.number))  # first: how a dead worker's trial is recognised
        config = suggest_config(trial, self.base)
        # A Ctrl-C or SIGTERM raises inside the body only (the one that arrived between trials, first), so the
        # trial and its run end as interrupted; elsewhere it waits (interrupts.interrupts_held in search.py).
        with trial_run(trial, self.study_name, self.search_run_id) as outcome, interrupts.interrupts_released():
            tracking.log_config(config)
            reference = bool(trial.user_attrs.get("base"))
            try:
                result = fit(
                    config,
                    self.train,
                    self.val,
                    callbacks=[tracking.epoch_logger(), pruning_callback(trial, config.epochs, reference)],
                )
            except NonFiniteLossError as exc:
                # A diverging config is a failed trial with a reason, not a crash of the search: NaN makes Optuna
                # mark it FAIL and go on to the next trial.
                trial.set_user_attr("fail_reason", str(exc))
                outcome.fail_reason = str(exc)
                log.warning("trial %d failed: %s", trial.number, exc)
                return math.nan
            mlflow.log_metric("trial_seconds", result.seconds)
            return self.score(trial, result.model, result.history[-1][OBJECTIVE])

    def score(self, trial: optuna.Trial, network, clean: float) -> float:
        """``val_score`` of a trained network (logged, with its parts, in the trial's run and user attributes)."""
        robust = robust_accuracy(network, self.val, self.robust_val_size) if self.robust_weight else clean
        score = (1 - self.robust_weight) * clean + self.robust_weight * robust
        mlflow.log_metrics({ROBUST: robust, SCORE: score})
        trial.set_user_attr(OBJECTIVE, clean)
        trial.set_user_attr(ROBUST, robust)
        return score


def robust_accuracy(network, val: tuple[np.ndarray, np.ndarray], size: int) -> float:
    """Mean accuracy over the robustness table's corruptions of ``size`` validation digits (stratified, seeded).

    The same corruption families as ``digits.evaluate.robustness`` measures on test digits, made from validation
    digits (once per process: ``corrupted_sets`` keeps them), so the search never sees a test digit.
    """
    images, labels = val
    table = robustness.robustness_table(
        functools.partial(predict_proba, network), images, labels, min(size, len(labels))
    )
    return float(table["accuracy"].mean())


def pruning_callback(trial: optuna.Trial, epochs: int, reference: bool):
    """A ``fit`` callback reporting each epoch's ``val_accuracy`` and raising ``TrialPruned`` when Optuna says so.

    ``reference`` (the untuned base) reports and asks like every trial but is never pruned.
    """

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
class Outcome:
    """Set by the objective when it returns NaN for a diverged trial."""

    fail_reason: str | None = None


@contextlib.contextmanager
def trial_run(trial: optuna.Trial, study_name: str, search_run_id: str) -> Iterator[Outcome]:
    """The trial's child run: FINISHED when complete, KILLED when pruned or interrupted, FAILED on an error.

    (``tracking.run`` would end a pruned trial FAILED: ``TrialPruned`` is an exception like any other to it.)
    """
    tags = {
        "pipeline_step": "trial",
        "model_family": "cnn",
        "optuna_study_name": study_name,
        "optuna_trial_number": str(trial.number),
        "optuna_state": "RUNNING",
    }
    active = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags)
    trial.set_user_attr("mlflow_run_id", active.info.run_id)
    trial.set_user_attr("mlflow_search_run_id", search_run_id)
    outcome = Outcome()
    try:
        yield outcome
    except optuna.TrialPruned as exc:
        mlflow.set_tags({"optuna_state": "PRUNED", "prune_reason": str(exc)})
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except (KeyboardInterrupt, interrupts.RunInterrupted) as exc:
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

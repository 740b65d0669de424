"""The line reader's search: trials of ``tuning.space.READER_SPACE``, each a ``fit_reader`` in its own MLflow run.

Its study is ``{study_name}-reader`` in the same storage as the CNN's (a CNN study's settings do not apply to it);
a trial is scored by the validation exact match of its last epoch, pruned by Optuna's median rule after each epoch.
"""

from __future__ import annotations

import logging

import mlflow
import optuna

from digits.core.config import ReaderConfig, SearchConfig
from digits.learn.data import MNIST, Split
from digits.learn.reader_train import fit_reader
from digits.mlops import tracking
from tuning.space import READER_SPACE, suggest_reader_config
from tuning.storage import open_storage

log = logging.getLogger(__name__)

OBJECTIVE = "val_exact_match"


def reader_study_name(search: SearchConfig) -> str:
    return f"{search.study_name}-reader"


def _objective(base: ReaderConfig, mnist: MNIST, split: Split):
    train = (mnist.train_images[split.train], mnist.train_labels[split.train])
    val = (mnist.train_images[split.val], mnist.train_labels[split.val])

    def objective(trial: optuna.Trial) -> float:
        config = suggest_reader_config(trial, base)

        def report(epoch: int, metrics: dict) -> None:
            trial.report(metrics[OBJECTIVE], epoch)
            if epoch < config.reader_epochs and trial.should_prune():
                raise optuna.TrialPruned(f"{OBJECTIVE} {metrics[OBJECTIVE]:.4f} after epoch {epoch}")

        with tracking.model_run(
            f"reader-trial-{trial.number}", nested=True, model_family="reader", pipeline_step="trial"
        ):
            tracking.log_new_params(config.to_dict())
            result = fit_reader(config, train, val, callbacks=[tracking.epoch_logger(), report])
            return result.history[-1][OBJECTIVE]

    return objective


def run_reader_search(base: ReaderConfig, search: SearchConfig, mnist: MNIST, split: Split) -> ReaderConfig:
    """Add ``search.n_trials`` reader trials (``base`` first, as the untuned reference) under the active run; the
    study's best config."""
    study = optuna.create_study(
        storage=open_storage(search.storage),
        study_name=reader_study_name(search),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
        load_if_exists=True,
    )
    if not study.trials:
        study.enqueue_trial({p.name: getattr(base, p.name) for p in READER_SPACE})
    study.optimize(_objective(base, mnist, split), n_trials=search.n_trials, timeout=search.timeout or None)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return base
    best = max(complete, key=lambda t: t.value)
    mlflow.log_metrics({f"best_{OBJECTIVE}": best.value, "reader_trials": float(len(study.trials))})
    log.info("reader search: best %s %.4f with %s", OBJECTIVE, best.value, best.params)
    return suggest_reader_config(optuna.trial.FixedTrial(best.params), base)

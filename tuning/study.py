"""The study's identity: sampler, pruner, and the setup that makes two runs' trials comparable.

``open_study(base, search, mnist, storage)`` creates the study or loads it, and refuses one that was run with
other fixed settings, other data or another search space (``StudyMismatchError``): their values would not be
comparable with this run's.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from digits.core.config import SearchConfig, TrainConfig
from digits.core.errors import DigitsError
from digits.learn.data import MNIST
from tuning.space import SEARCHED, base_params, space_of
from tuning.storage import redact

OBJECTIVE = "val_accuracy"  # what a trial reports after each epoch (pruning compares it)
# A trial's value: (1 - robust_weight) * val_accuracy + robust_weight * the mean accuracy over the robustness table's
# corruptions of validation digits (``tuning.objective``). The study's best value picks the final configuration.
SCORE = "val_score"
TPE_STARTUP_TRIALS = 5
# TrainConfig fields that neither define the trials' results nor are searched: they may differ between runs
# of one study (data_dir is replaced by the data's digest).
MACHINE_FIELDS = (
    "data_dir",
    "epochs",
    "device",
    "threads",
    "compile",
    "extra_data",
    "calibration_size",  # the final model's, after the search
    "robust_size",  # the test evaluation's; trials are scored on validation images only
)  # extra data: in data_digest


class StudyMismatchError(DigitsError):
    """The study in storage was run with other fixed settings, so its values are not comparable with this run's."""

    exit_code = 2


def study_setup(base: TrainConfig, search: SearchConfig, mnist: MNIST) -> dict[str, Any]:
    """What makes two trials' values comparable: the fixed training settings, the data and the search space."""
    fixed = {k: v for k, v in base.to_dict().items() if k not in SEARCHED and k not in MACHINE_FIELDS}
    setup = {
        **fixed,
        "trial_epochs": search.trial_epochs,
        "robust_weight": search.robust_weight,
        "robust_val_size": search.robust_val_size,
        "data_digest": mnist.digest,
        "space": space_of(base.optimizer),
    }
    # Through JSON so that a fresh dict and one read back from storage compare equal (tuples become lists).
    return json.loads(json.dumps(setup))


def open_study(
    base: TrainConfig, search: SearchConfig, mnist: MNIST, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """Create the study, or load it if it exists and was run with the same setup (else ``StudyMismatchError``).

    A new study gets the untuned ``base`` enqueued as its first trial: the reference the tuned trials must beat.
    """
    sampler, pruner = make_sampler(base.seed), make_pruner(search.trial_epochs)
    setup = study_setup(base, search, mnist)
    try:
        study = optuna.create_study(
            storage=storage, study_name=search.study_name, direction="maximize", sampler=sampler, pruner=pruner
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        # Exactly one of several workers starting together creates the study; the others land here.
        study = optuna.load_study(study_name=search.study_name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    where = f"study {search.study_name!r} in {redact(search.storage)}"
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise StudyMismatchError(f"{where} minimises; this search maximises {SCORE}: pass another study_name")
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
        study.set_user_attr("objective", SCORE)
    elif stored != setup:
        diff = sorted(k for k in set(stored) | set(setup) if stored.get(k) != setup.get(k))
        was = ", ".join(f"{k}={_short(stored.get(k))}" for k in diff)
        now = ", ".join(f"{k}={_short(setup.get(k))}" for k in diff)
        raise StudyMismatchError(
            f"{where} was run with {was} (this run: {now}), so its values are not comparable: pass another study_name, or the study's settings"
        )
    if study.metric_names is None:  # optuna-dashboard labels the value with it, not "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental since Optuna 3.2
            study.set_metric_names([SCORE])  # the value: validation accuracy blended with the robust score
    if created:
        study.enqueue_trial(base_params(base), user_attrs={"base": True})
    return study


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Seeded multivariate TPE whose random draws for trial n depend on (seed, n) only.

    Seeding per trial number keeps a resumed study from re-drawing the first run's random start-up configs, and
    two parallel workers (which get different trial numbers) from drawing the same ones.
    """
    return TrialSeededSampler(seed)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A multivariate ``TPESampler`` made afresh for each trial, seeded from (seed, trial number).

    TPE keeps no state between trials that matters (it refits on the study's trials each time), so a new one
    per trial costs nothing and needs no reseeding of its private generators.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}  # by trial number, while the trial runs

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        sampler = self._samplers.get(trial.number)
        if sampler is None:
            state = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate
                sampler = optuna.samplers.TPESampler(seed=state, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)
            self._samplers[trial.number] = sampler
        return sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def make_pruner(trial_epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs 1..``trial_epochs``, reduction factor 3.

    Chosen by replaying recorded learning curves (``python -m tuning.pruner_replay``): within the same time budget
    it found a better best trial than no pruning, the median pruner, percentile pruners and successive halving with
    factor 2. With 2-epoch trials it is successive halving: a trial goes on to epoch 2 only if its epoch-1 accuracy
    is in the top third of the trials so far (the best, while there are fewer than three); with longer trials its
    brackets hedge against pruning too early.
    """
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=trial_epochs, reduction_factor=3)

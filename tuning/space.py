"""The search space of the CNN, declared once: ``SPACE``; ``suggest_config(trial, base)`` fills a ``TrainConfig``.

Searched: learning rate and weight decay (log scale, ranges per optimizer), width, dropout, batch size, label
smoothing and augmentation strength. Everything else (epochs, optimizer, schedule, blocks, the data split, the
device) comes from ``base``: the trial length is the caller's choice, never a searched value.

``SEARCHED`` (the names), ``suggest_config`` (the Optuna calls) and ``space_of`` (the ranges stored with a study,
so a study searched over other ranges is refused) are all derived from ``SPACE``: adding a parameter is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from digits.core.config import ReaderConfig, TrainConfig

Bounds = tuple  # (low, high) for floats, (low, high, step) for ints, the choices for a categorical


@dataclass(frozen=True)
class Param:
    """One searched ``TrainConfig`` field and its Optuna distribution (per optimizer where its range depends on it)."""

    name: str
    kind: str  # "float", "int" or "categorical"
    bounds: Bounds | dict[str, Bounds]
    log: bool = False

    def bounds_for(self, optimizer: str) -> Bounds:
        """The range (or choices) of this parameter when ``optimizer`` trains."""
        return self.bounds[optimizer] if isinstance(self.bounds, dict) else self.bounds

    def suggest(self, trial: optuna.Trial, optimizer: str) -> Any:
        """Draw this parameter's value from ``trial``."""
        bounds = self.bounds_for(optimizer)
        if self.kind == "float":
            return trial.suggest_float(self.name, bounds[0], bounds[1], log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, bounds[0], bounds[1], step=bounds[2])
        return trial.suggest_categorical(self.name, bounds)


SPACE: tuple[Param, ...] = (
    # Peak learning rate and weight decay differ by orders of magnitude between the optimizers: torch's SGD adds
    # weight_decay * w to the gradient, AdamW shrinks w by lr * weight_decay per step.
    Param("lr", "float", {"sgd": (0.01, 0.3), "adamw": (3e-4, 1e-2)}, log=True),
    Param("weight_decay", "float", {"sgd": (1e-5, 5e-3), "adamw": (1e-3, 0.3)}, log=True),
    # Width 24 already costs 2.25x the default 16 per epoch (the cost grows with width squared); the final retrain
    # of the best config must still fit the default pipeline's time budget on 2 CPU cores.
    Param("width", "int", (12, 24, 4)),
    Param("dropout", "float", (0.0, 0.5)),
    Param("batch_size", "categorical", (64, 128, 256)),
    Param("label_smoothing", "float", (0.0, 0.2)),
    Param("augment", "float", (0.0, 1.0)),
)

SEARCHED: tuple[str, ...] = tuple(p.name for p in SPACE)


def space_of(optimizer: str) -> dict[str, list]:
    """The ranges searched with ``optimizer``, as stored with a study: ``{"lr": [0.01, 0.3], "width": [12, 24, 4], ...}``."""
    return {p.name: list(p.bounds_for(optimizer)) for p in SPACE}


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """``base`` with the searched fields (``SEARCHED``) drawn from ``trial``; ``epochs`` and the rest unchanged."""
    return base.replace(**{p.name: p.suggest(trial, base.optimizer) for p in SPACE})


def base_params(base: TrainConfig) -> dict[str, Any]:
    """The searched values of ``base``, to enqueue it as a trial (the untuned reference inside the study).

    A categorical value outside its choices (a batch size of 100) is left out: Optuna cannot enqueue it, the
    sampler picks one. Numeric values outside their ranges are kept; Optuna only warns.
    """
    return {
        p.name: getattr(base, p.name)
        for p in SPACE
        if p.kind != "categorical" or getattr(base, p.name) in p.bounds_for(base.optimizer)
    }


# The line reader's space (``digits reader``; ``digits tune --target reader`` searches it): AdamW always.
READER_SPACE: tuple[Param, ...] = (
    Param("reader_lr", "float", (1e-3, 1e-2), log=True),
    # Width 20 costs about 1.5x the default 16 per strip: the final reader must still train in the time budget.
    Param("reader_width", "int", (12, 20, 4)),
    Param("reader_dropout", "float", (0.0, 0.3)),
)


def suggest_reader_config(trial: optuna.Trial, base: ReaderConfig) -> ReaderConfig:
    """``base`` with the fields of ``READER_SPACE`` drawn from ``trial``."""
    return base.replace(**{p.name: p.suggest(trial, "adamw") for p in READER_SPACE})

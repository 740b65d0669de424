"""The search space of the CNN: ``suggest_config(trial, base)`` fills a ``TrainConfig`` from an Optuna trial.

Searched: learning rate and weight decay (log scale, ranges per optimizer), width, dropout, batch size, label
smoothing and augmentation strength. Everything else (epochs, optimizer, schedule, blocks, the data split, the
device) comes from ``base``: the trial length is the caller's choice, never a searched value.
"""

from __future__ import annotations

from typing import Any

import optuna

from digits.config import TrainConfig

# Peak learning rate and weight decay differ by orders of magnitude between the optimizers: torch's SGD adds
# weight_decay * w to the gradient, AdamW shrinks w by lr * weight_decay per step.
LR_RANGE = {"sgd": (0.01, 0.3), "adamw": (3e-4, 1e-2)}
WEIGHT_DECAY_RANGE = {"sgd": (1e-5, 5e-3), "adamw": (1e-3, 0.3)}
# Width 24 already costs 2.25x the default 16 per epoch (the cost grows with width squared); the final retrain
# of the best config must still fit the default pipeline's time budget on 2 CPU cores.
WIDTH_RANGE = (12, 24, 4)
BATCH_SIZES = (64, 128, 256)
DROPOUT_RANGE = (0.0, 0.5)
LABEL_SMOOTHING_RANGE = (0.0, 0.2)
AUGMENT_RANGE = (0.0, 1.0)

SEARCHED = ("lr", "weight_decay", "width", "dropout", "batch_size", "label_smoothing", "augment")


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """``base`` with the searched fields (``SEARCHED``) drawn from ``trial``; ``epochs`` and the rest unchanged."""
    lr_low, lr_high = LR_RANGE[base.optimizer]
    wd_low, wd_high = WEIGHT_DECAY_RANGE[base.optimizer]
    low, high, step = WIDTH_RANGE
    return base.replace(
        lr=trial.suggest_float("lr", lr_low, lr_high, log=True),
        weight_decay=trial.suggest_float("weight_decay", wd_low, wd_high, log=True),
        width=trial.suggest_int("width", low, high, step=step),
        dropout=trial.suggest_float("dropout", *DROPOUT_RANGE),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        label_smoothing=trial.suggest_float("label_smoothing", *LABEL_SMOOTHING_RANGE),
        augment=trial.suggest_float("augment", *AUGMENT_RANGE),
    )


def base_params(base: TrainConfig) -> dict[str, Any]:
    """The searched values of ``base``, to enqueue it as a trial (the untuned reference inside the study).

    A batch size outside ``BATCH_SIZES`` is left out (a categorical parameter cannot take a value outside its
    choices; the sampler picks one); numeric values outside their ranges are kept, Optuna only warns.
    """
    params = {name: getattr(base, name) for name in SEARCHED}
    if base.batch_size not in BATCH_SIZES:
        del params["batch_size"]
    return params

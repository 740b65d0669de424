"""Typed configuration of every job: one dataclass per job, one name per knob.

The field names are the MLproject parameter names and the CLI flag names (``--batch_size``), so a value
travels unchanged from ``mlflow run -P batch_size=256`` to ``TrainConfig.batch_size``. Optuna fills the
same dataclass (``tuning.space.suggest_config``). This module knows nothing of argparse, MLflow or Optuna.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from digits.core.errors import DigitsError

DEVICES = ("auto", "cpu", "cuda", "mps")
# Images per forward pass of batched inference (``model.batched_logits``), and the most one request to the served
# model may hold (the guard counts them, ``preprocess.to_mnist_batch`` is passed it), so a request is one forward
# pass. Here, not in model.py, so that the request guard and the torch-free ONNX model need no torch.
MAX_BATCH = 1000
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine")
AUGMENT_POLICIES = ("robust", "affine")  # digits.learn.augment.POLICIES; config imports no torch
PRECISIONS = ("auto", "bf16", "fp32")


class ConfigError(DigitsError, ValueError):
    """A configuration value is invalid; the message is one line meant for the user."""

    exit_code = 2  # the usage-error code, as argparse uses


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST comes from and how the 60,000 training images are split."""

    data_dir: str = field(
        default="",
        metadata={
            "help": "directory with the four MNIST IDX files (gzipped or not); empty: $DIGITS_DATA_DIR, else ~/.cache/digits/mnist, downloading there if empty"
        },
    )
    val_size: int = field(
        default=5000,
        metadata={"help": "images held out of the 60,000 training images for validation (stratified, seeded)"},
    )
    subset: int = field(
        default=0, metadata={"help": "train on the first N training images of a stratified order; 0 = all"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the split, the initialisation, the batch order and the augmentation"}
    )
    calibration_size: int = field(
        default=2000,
        metadata={
            "help": "validation images (a stratified, seeded part) that the final model, trained on train + validation, leaves out to fit its temperature on, at most half of val_size; a model with a validation split fits it on all of them; 0 = the final model is not calibrated"
        },
    )
    robust_size: int = field(
        default=2000,
        metadata={
            "help": "test digits (a stratified, seeded sample, the same for every model) corrupted for the robustness table and the robust_* metrics; 10000 = all of them"
        },
    )

    def validate(self) -> None:
        _check(self.val_size >= 10, f"val_size must be at least 10, got {self.val_size}")
        _check(
            10 <= self.robust_size <= 10000, f"robust_size must be an integer from 10 to 10000, got {self.robust_size}"
        )
        _check(
            0 <= self.calibration_size <= 30000,
            f"calibration_size must be an integer from 0 (no calibration) to 30000, got {self.calibration_size}",
        )
        _check(self.val_size <= 30000, f"val_size must be at most 30000, got {self.val_size}")
        _check(self.subset >= 0, f"subset must be 0 (all) or a positive number of images, got {self.subset}")
        _check(
            self.subset == 0 or self.subset >= 100, f"subset must be 0 (all) or at least 100 images, got {self.subset}"
        )
        _check(self.seed >= 0, f"seed must be a non-negative integer, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """Only this class's own fields (a subclass's ``to_dict`` has all of its own)."""
        return {f.name: getattr(self, f.name) for f in fields(DataConfig)}


_C = TypeVar("_C", bound="_Saved")


class _Saved:
    """What a config saved beside its weights needs: every field as a dict or JSON, and back (``TrainConfig`` in a
    checkpoint's ``config.json``, ``ReaderConfig`` in ``reader_config.json``). First among the bases, so that its
    ``to_dict`` (all fields) comes before ``DataConfig``'s (its own only)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[_C], values: dict[str, Any]) -> _C:
        """Build a config from a dict (a saved JSON file), ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self: _C, **changes: Any) -> _C:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig(_Saved, DataConfig):
    """Everything that defines one CNN training run: network shape, optimisation and the machine."""

    epochs: int = field(default=10, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=128, metadata={"help": "images per optimisation step"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (with Nesterov momentum) or adamw"})
    lr: float = field(default=0.05, metadata={"help": "peak learning rate of the schedule"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (AdamW: beta1)"})
    weight_decay: float = field(
        default=5e-4, metadata={"help": "decoupled weight decay (not applied to biases and norms)"}
    )
    schedule: str = field(
        default="onecycle", metadata={"help": "onecycle (linear warm-up, cosine decay) or cosine (decay only)"}
    )
    warmup: float = field(default=0.2, metadata={"help": "fraction of the steps spent warming up (onecycle only)"})
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing of the cross-entropy loss, in [0, 0.5)"}
    )
    width: int = field(default=16, metadata={"help": "channels of the first block; each later block doubles them"})
    blocks: int = field(
        default=3,
        metadata={
            "help": "convolutional blocks, 1 to 4: the first is one 3x3 convolution at 28x28, each later one two 3x3 convolutions at half the resolution of the one before"
        },
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout before the classifier, in [0, 0.9]"})
    batch_norm: bool = field(default=True, metadata={"help": "batch normalisation after each convolution"})
    augment: float = field(
        default=0.5,
        metadata={"help": "augmentation strength in [0, 1] (the ranges of augment_policy times this); 0 = off"},
    )
    augment_policy: str = field(
        default="robust",
        metadata={
            "help": "robust (rotation, shear, scale, shift, elastic distortion, stroke width, low contrast, noise, blur) or affine (shifts up to 3 px, rotations up to 15 degrees, scaling up to 15%: the recipe before robustness was measured)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu), cpu, cuda or mps"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "autocast of the training step: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), bf16 or fp32; evaluation is always fp32"
        },
    )
    threads: int = field(default=0, metadata={"help": "CPU threads for PyTorch; 0 = one per available core"})
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the network (CUDA only: it costs more than it saves on a short CPU run)"},
    )
    extra_data: str = field(
        default="",
        metadata={
            "help": "a feedback export (NAME.npz beside its manifest NAME.json, from `digits feedback export`) whose images join the training split, a seeded 20% of them (by image digest) held out for feedback_accuracy; empty: MNIST alone"
        },
    )

    def validate(self) -> None:
        super().validate()
        _check(1 <= self.epochs <= 1000, f"epochs must be an integer from 1 to 1000, got {self.epochs}")
        _check(1 <= self.batch_size <= 65536, f"batch_size must be an integer from 1 to 65536, got {self.batch_size}")
        _check(
            self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
        )
        _check(math.isfinite(self.lr) and 0 < self.lr <= 10, f"lr must be a number in (0, 10], got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(0 <= self.weight_decay < 1, f"weight_decay must be in [0, 1), got {self.weight_decay}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}")
        _check(0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        _check(1 <= self.width <= 512, f"width must be an integer from 1 to 512, got {self.width}")
        _check(1 <= self.blocks <= 4, f"blocks must be an integer from 1 to 4, got {self.blocks}")
        _check(0 <= self.dropout <= 0.9, f"dropout must be in [0, 0.9], got {self.dropout}")
        _check(0 <= self.augment <= 1, f"augment must be in [0, 1], got {self.augment}")
        _check(
            self.augment_policy in AUGMENT_POLICIES,
            f"augment_policy must be one of {', '.join(AUGMENT_POLICIES)}, got {self.augment_policy!r}",
        )
        _check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
        )
        _check(self.threads >= 0, f"threads must be 0 (auto) or a positive integer, got {self.threads}")
        _check(
            not self.extra_data or self.extra_data.endswith(".npz"),
            f"extra_data must be a feedback export NAME.npz (or empty), got {self.extra_data!r}",
        )


@dataclass(frozen=True)
class SearchConfig:
    """The Optuna search over ``TrainConfig`` (run by ``tuning``; this module does not import optuna)."""

    n_trials: int = field(
        default=24,
        metadata={
            "help": "trials to add to the study in this run (about half of them pruned after one epoch; on a CPU cpu_timeout usually ends the search first); 0 = no search, train the given config"
        },
    )
    timeout: float = field(
        default=0.0, metadata={"help": "stop starting new trials after this many seconds; 0 = no limit"}
    )
    trial_epochs: int = field(default=2, metadata={"help": "epochs of each trial (the final model trains for epochs)"})
    storage: str = field(
        default="sqlite:///optuna.db",
        metadata={
            "help": "Optuna storage URL; the study lives there so reruns continue it and optuna-dashboard can show it"
        },
    )
    study_name: str = field(default="digits-cnn", metadata={"help": "name of the Optuna study in storage"})
    workers: int = field(
        default=1,
        metadata={
            "help": "local worker processes sharing the search (n_trials split between them), each with threads = cores // workers unless threads is given; 1 = the search runs in this process"
        },
    )
    cpu_timeout: float = field(
        default=360.0,
        metadata={
            "help": "on a machine without CUDA, stop starting new trials after this many seconds (the time budget that keeps the default pipeline within about 15 minutes on 2 CPU cores); with a GPU the full n_trials run; 0 = no budget"
        },
    )
    robust_weight: float = field(
        default=0.5,
        metadata={
            "help": "weight of robustness in a trial's score val_score = (1 - w) * val_accuracy + w * val_robust_mean_accuracy (the robustness table's corruptions of robust_val_size validation digits, never test digits); the best val_score picks the final config; 0 = clean accuracy only"
        },
    )
    robust_val_size: int = field(
        default=1000,
        metadata={
            "help": "validation digits (stratified, seeded, at most the validation split) corrupted to score the trials' robustness"
        },
    )
    grace_period: int = field(
        default=60,
        metadata={
            "help": "seconds a RUNNING trial's worker may stay silent (no heartbeat) before its trial is failed as a dead worker's; generous because 2 busy CPU cores can starve the heartbeat thread"
        },
    )

    def validate(self) -> None:
        _check(
            math.isfinite(self.cpu_timeout) and self.cpu_timeout >= 0,
            f"cpu_timeout must be 0 (none) or a positive number of seconds, got {self.cpu_timeout}",
        )
        _check(0 <= self.robust_weight <= 1, f"robust_weight must be in [0, 1], got {self.robust_weight}")
        _check(
            10 <= self.robust_val_size <= 30000,
            f"robust_val_size must be an integer from 10 to 30000, got {self.robust_val_size}",
        )
        _check(
            3 <= self.grace_period <= 86400,
            f"grace_period must be a whole number of seconds from 3 to 86400, got {self.grace_period}",
        )
        _check(
            0 <= self.n_trials <= 10000, f"n_trials must be an integer from 0 (no search) to 10000, got {self.n_trials}"
        )
        _check(
            math.isfinite(self.timeout) and self.timeout >= 0,
            f"timeout must be 0 (none) or a positive number of seconds, got {self.timeout}",
        )
        _check(1 <= self.trial_epochs <= 100, f"trial_epochs must be an integer from 1 to 100, got {self.trial_epochs}")
        _check(bool(self.storage.strip()), "storage must be an Optuna storage URL such as sqlite:///optuna.db")
        _check(bool(self.study_name.strip()), "study_name must not be empty")
        _check(1 <= self.workers <= 256, f"workers must be an integer from 1 to 256, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReaderConfig(_Saved, DataConfig):
    """The line reader (``digits.serve.reader``): a CNN + CTC over synthetic number strips made from MNIST digits."""

    # 8 x 15,000 strips: about 9 minutes on 2 CPU cores; 5 x 10,000 read 75% of the validation strips exactly, 12 x 15,000
    # 84% (benchmarks/RESULTS.md).
    reader_epochs: int = field(default=8, metadata={"help": "epochs of the line reader, each on fresh strips"})
    reader_strips: int = field(
        default=15000, metadata={"help": "synthetic training strips per epoch, made on the fly from the training split"}
    )
    reader_val_strips: int = field(
        default=1000,
        metadata={
            "help": "validation strips (made once from the validation split), and as many test strips (test digits)"
        },
    )
    reader_batch_size: int = field(default=64, metadata={"help": "strips per optimisation step"})
    reader_lr: float = field(default=0.003, metadata={"help": "peak learning rate of AdamW's one-cycle schedule"})
    reader_width: int = field(
        default=16, metadata={"help": "channels of the reader's first convolution; later ones are 2-6 times this"}
    )
    reader_dropout: float = field(default=0.1, metadata={"help": "dropout before the reader's frame classifier"})
    reader_max_length: int = field(default=12, metadata={"help": "longest strip, in digits (lengths drawn from 1)"})
    reader_overlap: float = field(
        default=0.35, metadata={"help": "largest overlap of neighbouring digits, as a share of the narrower's width"}
    )
    # Canvas and photo strips cost 20-40x an ink strip to make (thinning, the served path's lighting fit): 10% of them
    # keeps the strip maker ahead of the trainer on 2 CPU cores.
    reader_render: float = field(
        default=0.1,
        metadata={"help": "share of strips drawn as canvas drawings or photos (half each); the rest are MNIST ink"},
    )
    reader_workers: int = field(
        default=1,
        metadata={"help": "processes making strips while the reader trains; 0 = made in the training process"},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu), cpu, cuda or mps"})
    # One thread: on a busy 2-core machine two threads trained the reader 5x slower than one (the strip maker has a core).
    reader_threads: int = field(
        default=1, metadata={"help": "CPU threads for PyTorch while the reader trains; 0 = one per available core"}
    )

    def validate(self) -> None:
        super().validate()
        _check(
            0 <= self.reader_workers <= 64, f"reader_workers must be an integer from 0 to 64, got {self.reader_workers}"
        )
        _check(
            1 <= self.reader_epochs <= 1000,
            f"reader_epochs must be an integer from 1 to 1000, got {self.reader_epochs}",
        )
        _check(
            16 <= self.reader_strips <= 10_000_000,
            f"reader_strips must be an integer from 16 to 10000000, got {self.reader_strips}",
        )
        _check(
            10 <= self.reader_val_strips <= 100_000,
            f"reader_val_strips must be an integer from 10 to 100000, got {self.reader_val_strips}",
        )
        _check(
            1 <= self.reader_batch_size <= 4096,
            f"reader_batch_size must be an integer from 1 to 4096, got {self.reader_batch_size}",
        )
        _check(
            math.isfinite(self.reader_lr) and 0 < self.reader_lr <= 1,
            f"reader_lr must be a number in (0, 1], got {self.reader_lr}",
        )
        _check(4 <= self.reader_width <= 256, f"reader_width must be an integer from 4 to 256, got {self.reader_width}")
        _check(0 <= self.reader_dropout <= 0.9, f"reader_dropout must be in [0, 0.9], got {self.reader_dropout}")
        _check(
            1 <= self.reader_max_length <= 12,
            f"reader_max_length must be an integer from 1 to 12, got {self.reader_max_length}",
        )
        _check(0 <= self.reader_overlap <= 0.6, f"reader_overlap must be in [0, 0.6], got {self.reader_overlap}")
        _check(0 <= self.reader_render <= 1, f"reader_render must be in [0, 1], got {self.reader_render}")
        _check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.reader_threads >= 0,
            f"reader_threads must be 0 (auto) or a positive integer, got {self.reader_threads}",
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_bool(text: str) -> bool:
    """Parse a CLI/MLproject boolean: true/false, 1/0, yes/no, on/off (any case)."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a boolean (true/false), got {text!r}")

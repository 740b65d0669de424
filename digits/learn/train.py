"""The CNN training loop: ``fit(config, train, val, callbacks)``. Needs torch and numpy only.

Tracking (MLflow) and pruning (Optuna) come in through callbacks: ``callback(epoch, metrics)`` is called after
each epoch with that epoch's metrics and may raise to stop training (the exception propagates to the caller).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digits.core.config import ConfigError, TrainConfig
from digits.core.errors import DigitsError
from digits.learn.augment import augment
from digits.learn.data import to_device
from digits.serve.model import batched_logits, build_model, to_channels_last, to_input

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict], None]


class NonFiniteLossError(DigitsError):
    """The training loss became NaN or infinite: the run is useless and stops."""


@dataclass
class FitResult:
    """The trained network (in eval mode, on the training device) and one metrics dict per epoch."""

    model: nn.Module
    device: torch.device
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not available is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError(f"device {name!r} was asked for but is not available here (use device=auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int) -> int:
    """Use ``threads`` CPU threads (0 = one per core this process may run on); return the number set."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def _prepare(config: TrainConfig) -> tuple[torch.device, torch.Generator]:
    """The training device (its CPU threads set), every seed set; the generator of the batch order and augmentation."""
    device = resolve_device(config.device)
    if device.type == "cpu":
        configure_threads(config.threads)
    seed_everything(config.seed)
    return device, torch.Generator(device=device).manual_seed(config.seed)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on conv/linear weights only: decaying BN scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """The schedule's multiplier of ``lr`` at ``step`` of ``total``: one-cycle (linear warm-up, cosine decay) or cosine."""
    warm = int(config.warmup * total) if config.schedule == "onecycle" else 0
    if step < warm:
        return 0.1 + 0.9 * step / warm  # start at lr/10 rather than 0, so the first steps are not wasted
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on uint8 images ``x`` and labels ``y`` (one host sync)."""
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    start = 0
    # Full precision (batched_logits): validation accuracy must not depend on the device's bf16 rounding.
    for logits in batched_logits(model, x):
        yb = y[start : start + len(logits)]
        start += len(logits)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    n = max(1, len(x))
    return loss_sum.item() / n, correct.item() / n


def _cpu_has_bf16() -> bool:
    try:  # oneDNN's own check: bf16 kernels that are faster than fp32, not emulated
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step: bf16 where the hardware runs it natively (``auto``), else none."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or (device.type == "cpu" and _cpu_has_bf16()):
        return torch.bfloat16
    return None


def fit(
    config: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Iterable[EpochCallback] = (),
    model: nn.Module | None = None,
) -> FitResult:
    """Train the CNN that ``config`` describes on uint8 ``train`` images/labels; validate on ``val`` after each epoch.

    Epoch metrics: ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` (when ``val`` is given),
    ``lr``, ``images_per_second``, ``epoch_seconds``. Raises ``NonFiniteLossError`` when the loss is NaN/inf.
    ``model``: train this network (built from ``config``, e.g. to keep a handle on it) instead of a new one.
    """
    config.validate()
    callbacks = list(callbacks)
    device, generator = _prepare(config)

    x_train, y_train = to_device(*train, device)
    x_val, y_val = to_device(*val, device) if val is not None else (None, None)
    n = len(x_train)
    # Drop the last partial batch (a 1-image batch breaks batch norm), unless the data is smaller than one batch.
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * config.epochs

    model = (model if model is not None else build_model(config)).to(device).to(memory_format=torch.channels_last)
    net = torch.compile(model) if config.compile and device.type == "cuda" else model
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    amp_dtype = autocast_dtype(config.precision, device)
    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    result = FitResult(model=model, device=device)
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = _train_epoch(
            net, optimizer, scheduler, x_train, y_train, batch_size, config, generator, autocast
        )
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"training loss became {train_loss} in epoch {epoch} (lr={config.lr:g}, optimizer={config.optimizer}): "
                "lower lr or check the data"
            )
        metrics = {"train_loss": train_loss, "train_accuracy": train_accuracy, "lr": lr}
        train_seconds = time.perf_counter() - t0
        if x_val is not None:
            metrics["val_loss"], metrics["val_accuracy"] = evaluate(model, x_val, y_val)
        metrics["images_per_second"] = steps_per_epoch * batch_size / train_seconds
        metrics["epoch_seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        _log_epoch(epoch, config.epochs, metrics, time.perf_counter() - start)
        for callback in callbacks:
            callback(epoch, metrics)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def _train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    config: TrainConfig,
    generator: torch.Generator,
    autocast: dict,
) -> tuple[float, float]:
    """One epoch: ``len(x) // batch_size`` optimisation steps over a fresh permutation of the uint8 images ``x``.

    Returns the mean training loss and the accuracy over the epoch's augmented batches (one host sync, at the end).
    """
    steps = len(x) // batch_size
    perm = torch.randperm(len(x), device=x.device, generator=generator)
    # Accumulate on the device: no .item() (host sync) inside the step loop.
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for step in range(steps):
        idx = perm[step * batch_size : (step + 1) * batch_size]
        xb = augment(to_input(x[idx]), config.augment, config.augment_policy, generator)
        yb = y[idx]
        with torch.autocast(**autocast):
            logits = net(to_channels_last(xb))
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == yb).sum()
    return loss_sum.item() / steps, correct.item() / (steps * batch_size)


def _log_epoch(epoch: int, epochs: int, m: dict, elapsed: float) -> None:
    eta = elapsed / epoch * (epochs - epoch)
    val = f" val_loss {m['val_loss']:.4f} val_acc {m['val_accuracy']:.2%}" if "val_accuracy" in m else ""
    log.info(
        "epoch %d/%d train_loss %.4f train_acc %.2f%%%s lr %.3g %.0f img/s %.1fs ETA %.0fs",
        epoch,
        epochs,
        m["train_loss"],
        100 * m["train_accuracy"],
        val,
        m["lr"],
        m["images_per_second"],
        m["epoch_seconds"],
        eta,
    )

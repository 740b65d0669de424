"""Training of the line reader: ``fit_reader(config, train, val, callbacks)``, CTC on strips made on the fly.

Every epoch draws ``reader_strips`` fresh strips from the training digits (``digits.learn.strips``), in chunks of a
few batches sorted by width, so that a batch pads little. The validation strips are made once, from the validation
digits. Tracking comes in through callbacks, as for the CNN: ``callback(epoch, metrics)``. Needs torch and numpy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from digits.core.config import ReaderConfig
from digits.learn.strips import Strips, make_strips
from digits.learn.train import EpochCallback, configure_threads, resolve_device, seed_everything
from digits.serve.reader import BLANK, ReaderNet, Reading, batch_tensor, build_reader, frames_for, read_strips

log = logging.getLogger(__name__)

_CHUNK = 8  # batches made together and sorted by width: a batch of similar lengths pads little


@dataclass
class ReaderResult:
    """The trained reader, its per-epoch metrics, the validation strips and their last readings."""

    model: ReaderNet
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    device: torch.device = torch.device("cpu")
    val: Strips | None = None
    val_readings: list[Reading] = field(default_factory=list)


def strip_kwargs(config: ReaderConfig) -> dict:
    """The generator's settings that ``config`` fixes."""
    return {
        "lengths": tuple(range(1, config.reader_max_length + 1)),
        "overlap": config.reader_overlap,
        "render_share": config.reader_render,
    }


def validation_strips(config: ReaderConfig, images: np.ndarray, labels: np.ndarray) -> Strips:
    """The ``reader_val_strips`` validation strips of ``config``'s seed, made once from the validation digits."""
    rng = np.random.default_rng([config.seed, 1])
    return make_strips(images, labels, config.reader_val_strips, rng, **strip_kwargs(config))


def strips_digest(source_digest: str, indices: np.ndarray, config: ReaderConfig, part: str) -> str:
    """What defines a run's strips: the MNIST files, the digits drawn from, the generator's settings and the seed."""
    settings = {**strip_kwargs(config), "seed": config.seed, "part": part}
    if part == "training":
        settings.update(strips=config.reader_strips, epochs=config.reader_epochs, batch=config.reader_batch_size)
    else:
        settings.update(strips=config.reader_val_strips)
    digest = hashlib.sha256(source_digest.encode() + json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def score(texts: Sequence[str], readings: Sequence[str]) -> dict[str, float]:
    """Exact match and character error rate (edit distance over the true digits) of ``readings`` against ``texts``."""
    errors = sum(edit_distance(t, r) for t, r in zip(texts, readings))
    return {
        "exact_match": float(np.mean([t == r for t, r in zip(texts, readings)])),
        "cer": errors / max(1, sum(len(t) for t in texts)),
    }


def _ctc_step(net: ReaderNet, batch: Strips, ctc: nn.CTCLoss, device: torch.device) -> torch.Tensor:
    x, widths = batch_tensor(batch.images)
    log_probs = net(x.to(device)).transpose(0, 1)  # (T, N, C), as CTCLoss wants
    targets = torch.tensor([int(c) + 1 for t in batch.texts for c in t], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in batch.texts], dtype=torch.long)
    input_lengths = torch.from_numpy(frames_for(widths).astype(np.int64))
    return ctc(log_probs, targets, input_lengths, target_lengths)


class _EpochStrips(torch.utils.data.IterableDataset):
    """One epoch's batches of fresh strips, made ``_CHUNK`` batches at a time (chunk k from its own seeded generator,
    so a worker process makes the same strips as this one), sorted by width, in shuffled order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: ReaderConfig, epoch: int):
        super().__init__()
        self.images, self.labels, self.config, self.epoch = images, labels, config, epoch

    def __iter__(self):
        size, chunk = self.config.reader_batch_size, self.config.reader_batch_size * _CHUNK
        for k, first in enumerate(range(0, self.config.reader_strips, chunk)):
            rng = np.random.default_rng([self.config.seed, 2, self.epoch, k])
            n = min(chunk, self.config.reader_strips - first)
            strips = make_strips(self.images, self.labels, n, rng, **strip_kwargs(self.config))
            order = np.argsort([s.shape[1] for s in strips.images], kind="stable")
            batches = [order[i : i + size] for i in range(0, n, size)]
            for b in rng.permutation(len(batches)):
                yield strips.subset(batches[b])


def _batches(images: np.ndarray, labels: np.ndarray, config: ReaderConfig, epoch: int):
    """The epoch's batches, made in a worker process while this one trains (the same strips either way)."""
    data = _EpochStrips(images, labels, config, epoch)
    if config.reader_workers == 0:
        return iter(data)
    return iter(
        torch.utils.data.DataLoader(data, batch_size=None, num_workers=config.reader_workers, prefetch_factor=4)
    )


def fit_reader(
    config: ReaderConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    callbacks: Iterable[EpochCallback] = (),
) -> ReaderResult:
    """Train the reader on strips of the ``train`` digits; validate on strips of the ``val`` digits every epoch."""
    configure_threads(config.reader_threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    val_strips = validation_strips(config, *val)
    net = build_reader(config).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.reader_lr, weight_decay=1e-4)
    steps = config.reader_epochs * math.ceil(config.reader_strips / config.reader_batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.reader_lr, total_steps=steps, pct_start=0.15
    )
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    result = ReaderResult(net, device=device, val=val_strips)
    start = time.perf_counter()
    for epoch in range(1, config.reader_epochs + 1):
        metrics = _train_epoch(net, optimizer, schedule, ctc, train, config, epoch, device)
        result.val_readings = read_strips(net.cpu() if device.type == "cpu" else net, val_strips.images)
        net.to(device)
        metrics.update(
            {f"val_{k}": v for k, v in score(val_strips.texts, [r.text for r in result.val_readings]).items()}
        )
        result.history.append({"epoch": epoch, **metrics})
        log.info(
            "reader epoch %d/%d: ctc %.4f, val exact %.2f%%, cer %.3f%% (%.0f strips/s, %.0fs)",
            epoch,
            config.reader_epochs,
            metrics["ctc_loss"],
            100 * metrics["val_exact_match"],
            100 * metrics["val_cer"],
            metrics["strips_per_second"],
            time.perf_counter() - start,
        )
        for callback in callbacks:
            callback(epoch, metrics)
    result.seconds = time.perf_counter() - start
    return result


def _train_epoch(net, optimizer, schedule, ctc, train, config: ReaderConfig, epoch: int, device) -> dict[str, float]:
    net.train()
    total, batches, made, t0 = 0.0, 0, 0.0, time.perf_counter()
    generated = _batches(*train, config, epoch)
    while True:
        t = time.perf_counter()
        batch = next(generated, None)
        made += time.perf_counter() - t
        if batch is None:
            break
        loss = _ctc_step(net, batch, ctc, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        total += float(loss.detach())
        batches += 1
    seconds = time.perf_counter() - t0
    return {
        "ctc_loss": total / max(1, batches),
        "lr": schedule.get_last_lr()[0],
        "strips_per_second": config.reader_strips / seconds,
        "generate_share": made / seconds,
    }

"""Seconds from the first training step to 99.0% and 99.5% MNIST test accuracy, against the classic recipe.

Runs with torch and numpy alone (no MLflow, no Optuna), so it runs on a bare GPU machine:

    python benchmarks/time_to_accuracy.py --data_dir ../shared/data/mnist [--device cuda] [--seeds 3]

Our recipe: ``digits.train.fit`` with the config below, the 60,000 training images resident on the device,
the test set evaluated after every epoch (the evaluation time counts). The reference, in the same invocation on
the same data: the classic PyTorch MNIST example (two conv layers, Adadelta lr 1.0 with StepLR 0.7, batch 64,
per-sample ToTensor+Normalize through a torch DataLoader), evaluated after each epoch the same way. The last line
of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.config import TrainConfig  # noqa: E402
from digits.data import load_mnist, to_device  # noqa: E402
from digits.model import build_model  # noqa: E402
from digits.train import configure_threads, evaluate, fit, resolve_device  # noqa: E402

THRESHOLDS = (0.990, 0.995)

# The fast recipe: the default network, a larger batch (fewer optimiser steps per image, better CPU kernels)
# and a short one-cycle schedule; no augmentation (it slows the first epochs' accuracy).
FAST = dict(epochs=4, batch_size=256, lr=0.1, warmup=0.15, label_smoothing=0.1, augment=0.0, dropout=0.0, width=16, blocks=3)


class _Timeline:
    """Records (seconds since the first step, test accuracy) after each epoch; evaluation time is included."""

    def __init__(self):
        self.points: list[tuple[float, float]] = []
        self.start = 0.0

    def first_reaching(self, threshold: float) -> float | None:
        return next((t for t, acc in self.points if acc >= threshold), None)


def run_ours(config: TrainConfig, mnist, device: torch.device) -> tuple[_Timeline, float]:
    x_test, y_test = to_device(mnist.test_images, mnist.test_labels, device)
    timeline = _Timeline()
    model = build_model(config)  # built here so the epoch callback can evaluate it

    def on_epoch(epoch: int, metrics: dict) -> None:
        _, acc = evaluate(model, x_test, y_test)
        timeline.points.append((time.perf_counter() - timeline.start, acc))
        logging.info("ours epoch %d: test accuracy %.2f%% at %.1fs", epoch, 100 * acc, timeline.points[-1][0])

    timeline.start = time.perf_counter()
    result = fit(config, (mnist.train_images, mnist.train_labels), callbacks=[on_epoch], model=model)
    return timeline, statistics.mean(h["images_per_second"] for h in result.history)


class _ClassicNet(nn.Module):
    # pytorch/examples mnist/main.py
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class _PerSampleMNIST(torch.utils.data.Dataset):
    """What torchvision's MNIST + ToTensor + Normalize does: one PIL-free tensor per sample, in Python."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)
        return (x - 0.1307) / 0.3081, int(self.labels[i])


def run_reference(mnist, device: torch.device, epochs: int, seed: int) -> _Timeline:
    torch.manual_seed(seed)
    model = _ClassicNet().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    loader = torch.utils.data.DataLoader(_PerSampleMNIST(mnist.train_images, mnist.train_labels), batch_size=64, shuffle=True)
    x_test = torch.from_numpy(mnist.test_images).float().div(255).sub(0.1307).div(0.3081).unsqueeze(1).to(device)
    y_test = torch.from_numpy(mnist.test_labels.astype(np.int64)).to(device)
    timeline = _Timeline()
    timeline.start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.nll_loss(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x_test[i : i + 1000]).argmax(1) == y_test[i : i + 1000]).sum().item() for i in range(0, len(y_test), 1000))
        timeline.points.append((time.perf_counter() - timeline.start, correct / len(y_test)))
        logging.info("reference epoch %d: test accuracy %.2f%% at %.1fs", epoch, 100 * timeline.points[-1][1], timeline.points[-1][0])
        if timeline.points[-1][1] >= THRESHOLDS[0]:
            break  # the reference only has to reach 99.0%
    return timeline


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder (default: $DIGITS_DATA_DIR)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of our recipe; mean ± std over them (default: 1)")
    parser.add_argument("--epochs", type=int, default=FAST["epochs"], help=f"epochs of our recipe (default: {FAST['epochs']})")
    parser.add_argument("--reference_epochs", type=int, default=6, help="most epochs of the classic recipe; it stops at the first to reach 99.0%% (default: 6)")
    parser.add_argument("--skip_reference", action="store_true", help="do not run the classic recipe (default: run it)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our network (CUDA only; default: off)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    device = resolve_device(args.device)
    configure_threads(0)
    mnist = load_mnist(args.data_dir or None)
    runs = []
    for seed in range(args.seeds):
        config = TrainConfig(**{**FAST, "epochs": args.epochs}, seed=seed, device=str(device.type), compile=args.compile)
        timeline, ips = run_ours(config, mnist, device)
        runs.append({"seed": seed, "timeline": timeline.points, "ips": ips, **{f"t{t}": timeline.first_reaching(t) for t in THRESHOLDS}})

    def summary(key):
        values = [r[key] for r in runs if r[key] is not None]
        return (statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0) if len(values) == len(runs) else (None, None)

    t99, t99_sd = summary(f"t{THRESHOLDS[0]}")
    t995, t995_sd = summary(f"t{THRESHOLDS[1]}")
    final = [r["timeline"][-1][1] for r in runs]
    reference = None
    if not args.skip_reference:
        reference = run_reference(mnist, device, args.reference_epochs, seed=0).first_reaching(THRESHOLDS[0])
    result = {
        "seconds_to_99_0": t99,
        "seconds_to_99_0_std": t99_sd,
        "seconds_to_99_5": t995,
        "seconds_to_99_5_std": t995_sd,
        "final_test_accuracy": statistics.mean(final),
        "final_test_accuracy_std": statistics.pstdev(final) if len(final) > 1 else 0.0,
        "images_per_second": statistics.mean(r["ips"] for r in runs),
        "reference_seconds_to_99_0": reference,
        "speedup": reference / t99 if reference and t99 else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "seeds": args.seeds,
        "epochs": args.epochs,
        "config": {**FAST, "epochs": args.epochs},
        "machine": machine(device),
    }
    print(f"ours: 99.0% at {t99}s, 99.5% at {t995}s, final {result['final_test_accuracy']:.4f}, {result['images_per_second']:.0f} img/s; "
          f"reference: 99.0% at {reference}s; speedup {result['speedup']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

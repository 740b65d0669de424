"""Training-step throughput of the default CNN by memory layout and precision (synthetic batches, no data needed).

    python benchmarks/throughput.py [--batch_size 128] [--steps 12]

Shows what channels_last and bf16 autocast buy on this machine's CPU (or GPU with --device cuda).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digits.core.config import TrainConfig  # noqa: E402
from digits.learn.train import configure_threads, resolve_device  # noqa: E402
from digits.serve.model import build_model  # noqa: E402


def images_per_second(device: torch.device, channels_last: bool, bf16: bool, batch_size: int, steps: int) -> float:
    model = build_model(TrainConfig()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: kernel selection, allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (default: 12)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, {configure_threads(0)} threads, batch {args.batch_size}")
    for channels_last in (False, True):
        for bf16 in (False, True):
            ips = images_per_second(device, channels_last, bf16, args.batch_size, args.steps)
            print(f"channels_last={channels_last!s:5} bf16={bf16!s:5} {ips:8.0f} images/s")


if __name__ == "__main__":
    main()

"""Test accuracy of the final model recipe over several seeds: mean ± std (torch and numpy only).

    python benchmarks/final_accuracy.py --data_dir ../shared/data/mnist --seeds 3 [--set lr=0.08 --set width=24 ...]

Trains ``TrainConfig`` (defaults, or the tuned values given with ``--set``) for ``epochs`` on the 60,000 training
images (train + validation, as ``main``'s final retrain does) and evaluates once on the 10,000 test images per
seed. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.core.config import ConfigError, TrainConfig  # noqa: E402
from digits.learn.data import load_mnist  # noqa: E402
from digits.learn.train import fit, resolve_device  # noqa: E402
from digits.serve.model import predict_proba  # noqa: E402
from workflow.flags import parse_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder (default: $DIGITS_DATA_DIR)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field (default: none)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        overrides = parse_overrides(TrainConfig, args.set)
        TrainConfig(**overrides).validate()
        resolve_device(overrides.get("device", "auto"))
    except ConfigError as exc:
        parser.error(str(exc))
    mnist = load_mnist(args.data_dir or None)
    accuracies, seconds = [], []
    for seed in range(args.seeds):
        config = TrainConfig(**{**overrides, "seed": seed})
        t0 = time.perf_counter()
        result = fit(config, (mnist.train_images, mnist.train_labels))
        seconds.append(time.perf_counter() - t0)
        accuracies.append(float((predict_proba(result.model, mnist.test_images).argmax(1) == mnist.test_labels).mean()))
        logging.info("seed %d: test accuracy %.4f (%.0fs)", seed, accuracies[-1], seconds[-1])
    out = {
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "test_accuracies": accuracies,
        "train_seconds_mean": statistics.mean(seconds),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": TrainConfig(**overrides).to_dict(),
    }
    print(
        f"test accuracy {100 * out['test_accuracy_mean']:.2f}% ± {100 * out['test_accuracy_std']:.2f} over {args.seeds} seeds"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Temperature scaling of the CNN: test ECE and log loss before and after, and the reject option's coverage at 99.9%.

    python benchmarks/calibration.py --data_dir ../shared/data/mnist --seeds 3 --epochs 10 [--set FIELD=VALUE ...]

Per seed, as ``main``'s final model: the default recipe (with ``--set`` overrides) trains on train + validation
except ``calibration_size`` validation digits (``workflow.cnn_run.training_split``), the temperature is fitted on
those (``digits.evaluate.calibration``), and the test set is read before and after. Prints one line per seed, the
mean ± std, the targets of issue 28 checked (ECE <= 0.010, log loss no worse, argmax unchanged, coverage_at_99_9
>= 97%), and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.core.config import TrainConfig  # noqa: E402
from digits.evaluate import coverage, metrics  # noqa: E402
from digits.evaluate.calibration import calibrate_network  # noqa: E402
from digits.learn.data import load_mnist, split_train_val  # noqa: E402
from digits.learn.train import fit  # noqa: E402
from digits.serve.model import predict_proba  # noqa: E402
from workflow.cnn_run import training_split  # noqa: E402
from workflow.flags import parse_overrides  # noqa: E402

KEYS = ("temperature", "accuracy", "ece_before", "ece_after", "log_loss_before", "log_loss_after", "coverage_at_99_9")


def one_seed(config: TrainConfig, mnist) -> dict[str, float]:
    """Train as the final model does, calibrate on its held-out digits, and measure the test set before and after."""
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    train_idx, held_out = training_split(config, mnist, split, final=True)
    network = fit(config, (mnist.train_images[train_idx], mnist.train_labels[train_idx])).model
    before = predict_proba(network, mnist.test_images)
    summary = calibrate_network(
        network, mnist.train_images[held_out], mnist.train_labels[held_out], f"{len(held_out)} validation digits"
    )
    after = predict_proba(network, mnist.test_images)
    m_before = metrics.classification_metrics(mnist.test_labels, before)
    m_after = metrics.classification_metrics(mnist.test_labels, after)
    return {
        "temperature": summary["temperature"],
        "accuracy": m_after["accuracy"],
        "argmax_unchanged": float((before.argmax(1) == after.argmax(1)).all()),
        "ece_before": m_before["ece"],
        "ece_after": m_after["ece"],
        "log_loss_before": m_before["log_loss"],
        "log_loss_after": m_after["log_loss"],
        "coverage_at_99_9": coverage.coverage_metrics(mnist.test_labels, after)["coverage_at_99_9"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each model (default: 10, main's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    mnist = load_mnist(args.data_dir or None)
    overrides = parse_overrides(TrainConfig, args.set)
    rows = []
    for seed in range(args.seeds):
        row = one_seed(TrainConfig(**{**overrides, "epochs": args.epochs, "seed": seed}), mnist)
        print(f"seed {seed}: " + ", ".join(f"{k} {row[k]:.4f}" for k in KEYS), flush=True)
        rows.append(row)
    summary = {k: statistics.mean(r[k] for r in rows) for k in KEYS}
    spread = {k: statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in KEYS}
    print("mean: " + ", ".join(f"{k} {summary[k]:.4f} +/- {spread[k]:.4f}" for k in KEYS))
    checks = {
        "ece_after <= 0.010": summary["ece_after"] <= 0.010,
        "log loss no worse": all(r["log_loss_after"] <= r["log_loss_before"] for r in rows),
        "argmax unchanged": all(r["argmax_unchanged"] for r in rows),
        "coverage_at_99_9 >= 0.97": summary["coverage_at_99_9"] >= 0.97,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    print(json.dumps({"epochs": args.epochs, "seeds": args.seeds, "mean": summary, "std": spread, "checks": checks}))


if __name__ == "__main__":
    main()

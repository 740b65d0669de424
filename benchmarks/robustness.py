"""Accuracy under corruptions of the default recipe, today's augmentation against another, the same seeds side by side.

    python benchmarks/robustness.py --data_dir ../shared/data/mnist --seeds 3 [--size 10000] \
        [--recipe affine:augment_policy=affine --recipe robust:augment_policy=robust]

Each recipe is ``TrainConfig``'s defaults with its overrides, trained for ``epochs`` on the 60,000 training images
(as ``main``'s final retrain) per seed, then measured on the clean test set and on every corruption of
``digits.evaluate.corruptions`` (the same ``--size`` test digits for all, made once). Prints one table (mean over the
seeds, ± std) with a column per recipe, the targets of issue 12 checked, and a last line of JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.core.config import ConfigError, TrainConfig  # noqa: E402
from digits.evaluate import (
    corruptions,  # noqa: E402
    robustness,
)
from digits.learn.data import load_mnist  # noqa: E402
from digits.learn.train import fit  # noqa: E402
from digits.serve.model import predict_proba  # noqa: E402
from workflow.flags import parse_overrides  # noqa: E402

DEFAULT_RECIPES = ["affine:augment_policy=affine", "robust:augment_policy=robust"]


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition(":")
    return name, parse_overrides(TrainConfig, [s for s in sets.split(",") if s])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder (default: $DIGITS_DATA_DIR)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--size", type=int, default=10000, help="test digits corrupted (default: 10000, all)")
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help=f"a recipe to compare (default: {' and '.join(DEFAULT_RECIPES)})",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        recipes = dict(parse_recipe(r) for r in (args.recipe or DEFAULT_RECIPES))
        for overrides in recipes.values():
            TrainConfig(**overrides).validate()
    except ConfigError as exc:
        parser.error(str(exc))
    mnist = load_mnist(args.data_dir or None)
    robustness.corrupted_sets(
        mnist.test_images, mnist.test_labels, args.size
    )  # made once, before the clock of any model
    results: dict[str, dict[str, list[float]]] = {}
    for name, overrides in recipes.items():
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            model = fit(TrainConfig(**{**overrides, "seed": seed}), (mnist.train_images, mnist.train_labels)).model
            seconds = time.perf_counter() - t0
            predict = functools.partial(predict_proba, model)
            row = {
                "clean": float((predict(mnist.test_images).argmax(1) == mnist.test_labels).mean()),
                "train_seconds": seconds,
            }
            table = robustness.robustness_table(predict, mnist.test_images, mnist.test_labels, args.size)
            row.update({r.corruption: float(r.accuracy) for r in table.itertuples()})
            row["mean"] = float(table["accuracy"].mean())
            for key, value in row.items():
                results.setdefault(name, {}).setdefault(key, []).append(value)
            logging.info(
                "%s seed %d: clean %.2f%%, corruptions mean %.2f%% (train %.0fs)",
                name,
                seed,
                100 * row["clean"],
                100 * row["mean"],
                seconds,
            )
    print_table(results, args)
    print(
        json.dumps(
            {"size": args.size, "seeds": args.seeds, "recipes": {k: recipes[k] for k in recipes}, "results": results}
        )
    )


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):6.2f} ± {100 * sd:4.2f}"


def print_table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    names = list(results)
    print(f"\naccuracy (%) on {args.size:,} corrupted test digits, mean ± std over {args.seeds} seeds")
    print(f"| {'corruption':15s} | {'target':6s} | " + " | ".join(f"{n:15s}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    rows = ["clean"] + corruptions.names() + ["mean", "train_seconds"]
    for key in rows:
        c = corruptions.CORRUPTIONS.get(key)
        target = {"clean": "99.65", "mean": "96"}.get(
            key, "99" if c and c.family in ("canvas", "photo") else "98" if c and c.mild else ""
        )
        if key == "train_seconds":
            cells = [f"{statistics.mean(results[n][key]):6.1f} s" for n in names]
        else:
            cells = [_cell(results[n][key]) for n in names]
        print(f"| {key:15s} | {target:6s} | " + " | ".join(f"{cell:15s}" for cell in cells) + " |")


if __name__ == "__main__":
    main()

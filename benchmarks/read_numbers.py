"""Reading handwritten numbers (issue 14): exact match, per-digit accuracy and time per number on composed numbers.

    python benchmarks/read_numbers.py --data_dir ../shared/data/mnist                  # trains the default CNN for --epochs
    python benchmarks/read_numbers.py --data_dir ../shared/data/mnist --checkpoint DIR # a saved checkpoint instead

Numbers of ``--length`` digits (default 5) composed from MNIST *test* digits (``digits.evaluate.number_eval``: gap and
touching spacing, canvas and photo renderings, seeded), read by ``digits.serve.numbers`` with the served network
(``serving.inference_model``). Figures: exact match per spacing kind, per-digit accuracy (1 - edit distance /
length) against the single-digit accuracy of the same test digits (each rendered alone the same way and read
through ``preprocess.to_mnist``, and raw), and the time per number of the served answer (``answers.answer`` with
mode ``number`` on the base64 PNG, in-process: decoding, segmentation, network), p50 and mean. The last line of
output is one JSON object.

(Not ``benchmarks/numbers.py``: run as a script, that name would shadow the standard library's ``numbers``.)

Targets: exact match >= 95% with gaps, >= 85% touching; per-digit accuracy within 1 point of the single-digit
accuracy; <= 20 ms per 5-digit number served.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.serving import machine  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="", help="MNIST IDX files (default: $DIGITS_DATA_DIR or the cache)")
    parser.add_argument(
        "--checkpoint", default="", help="a checkpoint folder (weights.pt + config.json); default: train one"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs of the default CNN trained when no checkpoint is given (default: %(default)s)",
    )
    parser.add_argument(
        "--size", type=int, default=100, help="numbers per spacing kind and renderer (default: %(default)s)"
    )
    parser.add_argument("--length", type=int, default=5, help="digits per number (default: %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: %(default)s, as one served worker per core)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the composed numbers (default: %(default)s)")
    return parser.parse_args(argv)


def network(args, mnist):
    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit
    from digits.serve.model import load_checkpoint, save_checkpoint

    if args.checkpoint:
        net, config = load_checkpoint(args.checkpoint)
        return net, config
    config = TrainConfig(epochs=args.epochs, device="cpu", threads=args.threads)
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    net = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
    save_checkpoint(net, config, Path(tempfile.mkdtemp()) / "ckpt")
    return net, config


def single_digit_accuracy(samples, mnist, proba, seed: int) -> dict[str, float]:
    """Accuracy on the numbers' own test digits: raw 28x28, and each rendered alone as its number was."""
    from digits.evaluate.number_eval import RENDER_SCALE
    from digits.learn import render
    from digits.serve.preprocess import to_mnist

    rng = np.random.default_rng(seed + 1)
    idx = np.array([i for s in samples for i in s.indices])
    drawn = np.stack(
        [
            to_mnist(
                (render.canvas if s.renderer == "canvas" else render.photo)(
                    mnist.test_images[i], rng, scale=RENDER_SCALE
                )
            )
            for s in samples
            for i in s.indices
        ]
    )
    labels = mnist.test_labels[idx]
    return {
        "raw": float((proba(mnist.test_images[idx]).argmax(1) == labels).mean()),
        "rendered": float((proba(drawn).argmax(1) == labels).mean()),
    }


def served_ms(samples, proba) -> dict[str, float]:
    import pandas as pd
    from PIL import Image

    from digits.serve.answers import answer

    times = []
    for s in samples:
        buffer = io.BytesIO()
        Image.fromarray(s.picture).save(buffer, format="PNG")
        frame = pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]})
        start = time.perf_counter()
        answer(frame, proba, {"mode": "number"})
        times.append(1000 * (time.perf_counter() - start))
    return {"p50": float(np.median(times)), "mean": float(np.mean(times)), "p90": float(np.percentile(times, 90))}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from digits.evaluate.number_eval import number_metrics, number_set, read_all
    from digits.learn.data import load_mnist
    from digits.serve.model import predict_proba
    from digits.serve.serving import inference_model

    torch.set_num_threads(args.threads)
    mnist = load_mnist(args.data_dir or None)
    net, _ = network(args, mnist)
    net = inference_model(net)
    proba = lambda images: predict_proba(net, images)  # noqa: E731
    samples = number_set(mnist.test_images, mnist.test_labels, args.size, args.seed, lengths=(args.length,))
    readings = read_all(samples[:5], proba)  # warm-up
    start = time.perf_counter()
    readings = read_all(samples, proba)
    read_seconds = time.perf_counter() - start
    values = number_metrics(samples, readings)
    single = single_digit_accuracy(samples, mnist, proba, args.seed)
    served = served_ms(samples[: min(len(samples), 100)], proba)
    out = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": os.getloadavg()[0],
        "args": vars(args),
        "numbers": len(samples),
        "metrics": values,
        "single_digit_accuracy": single,
        "served_ms": served,
        "read_ms_mean": 1000 * read_seconds / len(samples),
    }
    for key in (
        "number_exact_match_gap",
        "number_exact_match_touching",
        "number_digit_accuracy",
        "number_digit_accuracy_gap",
        "number_digit_accuracy_touching",
    ):
        print(f"{key}: {100 * values[key]:.1f}%")
    print(
        f"single-digit accuracy on the same digits: rendered alone {100 * single['rendered']:.2f}%, raw {100 * single['raw']:.2f}%"
    )
    print(f"served, per {args.length}-digit number: p50 {served['p50']:.1f} ms, mean {served['mean']:.1f} ms")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""Reading handwritten numbers: today's cut-and-classify reader and the trained line reader, on the same numbers.

    python benchmarks/read_numbers.py --data_dir ../shared/data/mnist --reader DIR                  # trains a 2-epoch CNN
    python benchmarks/read_numbers.py --data_dir ../shared/data/mnist --reader DIR --checkpoint CNN --size 1000

Numbers composed from MNIST *test* digits only (``digits.learn.strips.layout``, spacing drawn per gap), in four cells:
5 digits with gaps (0.15-0.6 of a digit's width), 5 digits touching or overlapping up to 25% of the narrower digit's
width, 8-12 digits (mixed gaps and overlaps up to 25%), each drawn as a thin-pen canvas drawing and as a photo on grey
paper (``digits.learn.render``, scale 5, as the numbers evaluation); "photo 5" is the photographed 5-digit numbers of
the first two cells. Both readers read the same pictures: the cut-and-classify reader (``digits.serve.numbers``) with
a digit CNN (``--checkpoint``, else one trained for ``--epochs``), the line reader (``digits.serve.reader``) from
``--reader`` (a folder with weights.pt + reader_config.json, e.g. a reader run's ``reader`` artifact). Figures: exact
match per cell and renderer, per-digit accuracy (1 - character error rate), and in-process milliseconds per 5-digit
number from the picture array (p50, one torch thread). The last line of output is one JSON object.

(Not ``benchmarks/numbers.py``: run as a script, that name would shadow the standard library's ``numbers``.)

The line reader reads through the served path (``line_reader.read_lines`` with the folder's fitted temperature), so
its figures are the endpoint's; ``exact_at_95`` is the exact match of the 95% most confident numbers (the reject
option that refuses 5%), ``ece`` the calibration error of the number's confidence.

Targets (issues 29 and 30, line reader): gaps >= 98% exact, touching >= 97%, 8-12 digits >= 94%, photo 5 >= 97%,
per digit >= 99.5%, <= 10 ms p50 per 5-digit number; exact_at_95 >= 99.7%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.serving import machine  # noqa: E402

CELLS = {  # name: (lengths, gap range in the narrower digit's width; None: the generator's mixed spacing)
    "gap5": ((5,), (0.15, 0.6)),
    "touch5": ((5,), (-0.25, 0.0)),
    "long": (tuple(range(8, 13)), None),
}
RENDERERS = ("canvas", "photo")
SCALE = 5  # the numbers evaluation's rendering scale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="", help="MNIST IDX files (default: $DIGITS_DATA_DIR or the cache)")
    parser.add_argument("--reader", required=True, help="the line reader's folder (weights.pt + reader_config.json)")
    parser.add_argument(
        "--checkpoint", default="", help="a digit CNN's folder (weights.pt + config.json); default: train one"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs of the CNN trained without --checkpoint (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=1000, help="numbers per cell and renderer (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the composed numbers (default: %(default)s)")
    parser.add_argument(
        "--timing", type=int, default=100, help="5-digit numbers timed per reader (default: %(default)s)"
    )
    return parser.parse_args(argv)


def compose(images, labels, size: int, seed: int) -> list[dict]:
    """``size`` numbers per cell and renderer: the picture, its text, its cell and renderer."""
    from digits.learn import render
    from digits.learn.strips import layout

    rng = np.random.default_rng(seed)
    out = []
    for cell, (lengths, gap_range) in CELLS.items():
        for renderer in RENDERERS:
            for _ in range(size):
                idx = rng.integers(0, len(images), rng.choice(lengths))
                line, _, _ = layout(images[idx].astype(np.float32) / 255, rng, 0.25, gap_range)
                ink = np.rint(255 * line).astype(np.uint8)
                draw = render.canvas if renderer == "canvas" else render.photo
                text = "".join(str(int(labels[i])) for i in idx)
                out.append({"picture": draw(ink, rng, scale=SCALE), "text": text, "cell": cell, "renderer": renderer})
    return out


def cnn(args, mnist):
    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit
    from digits.serve.model import load_checkpoint, predict_proba
    from digits.serve.serving import inference_model

    if args.checkpoint:
        net, _ = load_checkpoint(args.checkpoint)
    else:
        config = TrainConfig(epochs=args.epochs, device="cpu", threads=1)
        split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
        net = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
    net = inference_model(net)
    return lambda images: predict_proba(net, images)


def cut_reader(proba):
    from digits.core.errors import DigitsError
    from digits.serve.numbers import read_number

    def read(picture) -> tuple[str, float]:
        try:
            reading = read_number(picture, proba)
            return reading.text, reading.confidence
        except DigitsError:
            return "", 0.0

    return read


def line_reader(directory: str):
    """The served path of mode=number (``line_reader.read_lines``: strip, frames, constrained decoding at the fitted
    temperature, boxes): what the endpoint runs, less the JSON."""
    from digits.core.errors import DigitsError
    from digits.serve.line_reader import read_lines
    from digits.serve.reader import line_reader as load

    reader = load(directory)

    def read(picture) -> tuple[str, float]:
        try:
            reading = read_lines([picture], reader)[0]
            return reading.text, reading.confidence
        except DigitsError:  # a blank picture, more than 12 digits
            return "", 0.0

    return read


def figures(samples: list[dict], answers: list[tuple[str, float]]) -> dict[str, float]:
    """Exact match per cell x renderer, photo 5, per-digit accuracy (1 - CER) overall, and the reject option: exact
    match of the 95% most confident numbers, and the confidence's ECE."""
    from digits.evaluate.reader_test import accuracy_at_coverage
    from digits.learn.reader_train import score
    from digits.serve.ctc_calibrate import expected_calibration_error

    readings = [text for text, _ in answers]

    out: dict[str, float] = {}
    for cell in CELLS:
        for renderer in RENDERERS:
            idx = [i for i, s in enumerate(samples) if s["cell"] == cell and s["renderer"] == renderer]
            out[f"{cell}_{renderer}"] = score([samples[i]["text"] for i in idx], [readings[i] for i in idx])[
                "exact_match"
            ]
        out[cell] = (out[f"{cell}_canvas"] + out[f"{cell}_photo"]) / 2
    out["photo5"] = (out["gap5_photo"] + out["touch5_photo"]) / 2
    out["per_digit"] = 1 - score([s["text"] for s in samples], readings)["cer"]
    correct = np.array([s["text"] == r for s, r in zip(samples, readings)])
    confidence = np.array([c for _, c in answers])
    out["exact_at_95"] = accuracy_at_coverage(confidence, correct, 0.95)
    out["ece"] = expected_calibration_error(confidence, correct)
    return out


def timed(read, pictures) -> dict[str, float]:
    read(pictures[0])  # warm-up
    times = []
    for picture in pictures:
        start = time.perf_counter()
        read(picture)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50": float(np.median(times)), "p90": float(np.percentile(times, 90))}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from digits.learn.data import load_mnist

    torch.set_num_threads(1)
    mnist = load_mnist(args.data_dir or None)
    t0 = time.perf_counter()
    samples = compose(mnist.test_images, mnist.test_labels, args.size, args.seed)
    print(f"composed {len(samples)} numbers in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    readers = {"cut": cut_reader(cnn(args, mnist)), "line": line_reader(args.reader)}
    five = [s["picture"] for s in samples if s["cell"] in ("gap5", "touch5")][: args.timing]
    results = {}
    for name, read in readers.items():
        readings = [read(s["picture"]) for s in samples]
        results[name] = {**figures(samples, readings), "ms_5digit": timed(read, five)}
    out = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": os.getloadavg()[0],
        "args": vars(args),
        "numbers": len(samples),
        "results": results,
    }
    keys = [f"{c}_{r}" for c in CELLS for r in RENDERERS] + list(CELLS) + ["photo5", "per_digit", "exact_at_95", "ece"]
    print(f"{'cell':<14}{'cut':>9}{'line':>9}")
    for key in keys:
        print(f"{key:<14}{100 * results['cut'][key]:>8.1f}%{100 * results['line'][key]:>8.1f}%")
    print(f"{'ms p50 (5 d)':<14}{results['cut']['ms_5digit']['p50']:>9.1f}{results['line']['ms_5digit']['p50']:>9.1f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

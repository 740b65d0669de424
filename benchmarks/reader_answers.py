"""The line reader's answers on composed strips (issue 30 targets): boxes, calibrated confidence, reject option.

A trained reader (``--reader``: weights.pt + reader_config.json) reads composed strips made from MNIST test digits
(``digits.learn.strips``, which knows every digit's true ink span); ``ctc_decode.read_frames`` decodes them. Figures:
- boxes: share of digits (readings held to the true length, right or wrong) whose box centre is within a quarter of the true digit's
  width of its true centre (target >= 99%);
- exact match unconstrained and held to the true length;
- the temperature fitted on the first half of the strips (NLL of the true strings), the string confidence's ECE on
  the second half at T=1 and at the fitted T, and the reject option there: accuracy of the accepted numbers at the
  threshold that refuses 5% (target >= 99.7%).
Ends with one JSON line.

    PYTHONPATH=$PWD python benchmarks/reader_answers.py --reader DIR --data_dir ../shared/data/mnist --strips 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def box_hits(boxes, spans: np.ndarray) -> list[bool]:
    """For each digit: is its box's centre within a quarter of the true digit's width of the true centre?"""
    return [abs((b[0] + b[2]) / 2 - (s0 + s1) / 2) <= (s1 - s0) / 4 for b, (s0, s1) in zip(boxes, spans)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", required=True, help="folder with weights.pt + reader_config.json (required)")
    parser.add_argument("--data_dir", default="", help="MNIST folder (default: the package's data folder)")
    parser.add_argument("--strips", type=int, default=1000, help="strips composed from test digits (default 1000)")
    parser.add_argument("--lengths", default="5", help="comma-separated digit counts drawn from (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()

    from digits.evaluate.reader_test import accuracy_at_coverage
    from digits.learn.data import load_mnist
    from digits.learn.strips import make_strips
    from digits.serve.ctc_calibrate import expected_calibration_error, fit_temperature
    from digits.serve.ctc_decode import read_frames
    from digits.serve.reader import load_reader, strip_frames

    net, _ = load_reader(args.reader)
    mnist = load_mnist(args.data_dir or None)
    lengths = [int(n) for n in args.lengths.split(",")]
    strips = make_strips(
        mnist.test_images, mnist.test_labels, args.strips, np.random.default_rng(args.seed), lengths=lengths
    )
    frames = strip_frames(net, strips.images)
    half = len(frames) // 2
    temperature = fit_temperature(list(zip(frames[:half], strips.texts[:half])))
    rows = []
    for i in range(half, len(frames)):
        ink, lp, text = strips.images[i], frames[i], strips.texts[i]
        raw, cal = read_frames(lp, ink), read_frames(lp, ink, temperature=temperature)
        held = read_frames(lp, ink, length=len(text), temperature=temperature)  # the true length: a box per digit
        hits = box_hits(held.boxes, strips.spans[i])
        rows.append((raw.text == text, raw.confidence, cal.confidence, held.text == text, held.confidence, hits))
    exact, raw_conf, cal_conf, held_exact, held_conf, hits = (list(col) for col in zip(*rows))
    exact, held_exact = np.array(exact), np.array(held_exact)
    digit_hits = [h for hs in hits for h in hs]
    summary = {
        "strips": args.strips,
        "lengths": lengths,
        "temperature": round(temperature, 4),
        "exact": float(exact.mean()),
        "exact_length_held": float(held_exact.mean()),
        "box_centre_hits": float(np.mean(digit_hits)) if digit_hits else None,
        "ece_t1": expected_calibration_error(raw_conf, exact),
        "ece_fitted": expected_calibration_error(cal_conf, exact),
        "accepted_exact_at_5pct_refused": accuracy_at_coverage(np.array(cal_conf), exact, 0.95),
        "accepted_exact_at_5pct_refused_length_held": accuracy_at_coverage(np.array(held_conf), held_exact, 0.95),
    }
    for key, value in summary.items():
        print(f"{key:45s} {value}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

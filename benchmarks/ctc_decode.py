"""Time the line reader's numpy decoding per 5-digit strip: constrained Viterbi + boxes + confidences (issue 30).

Synthetic frames stand in for the reader's output (the decoder's cost depends on the frame count and the
constraint, not on the network): a strip of ``--digits`` ink blocks with gaps (``--pitch`` px per digit: 56 gives
60-100 frames for 5 digits, a widely spaced number; 24 gives MNIST-like digits at 28 px high), one frame per 4 px,
each digit emitted on two or three frames at its block, noisy log-probabilities elsewhere. Prints the p50 / p90 in
ms of each stage and of ``read_frames`` (everything the served reader answers), per constraint, then one JSON line
(read_frames p50 ms per constraint; target <= 3 ms).

    PYTHONPATH=$PWD python benchmarks/ctc_decode.py --strips 300 [--pitch 24]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.serve.ctc_boxes import STRIDE, digit_boxes  # noqa: E402
from digits.serve.ctc_decode import constrained_decode, digit_confidences, read_frames, tempered  # noqa: E402
from digits.serve.ctc_pattern import compile_constraint  # noqa: E402


def synthetic_strip(rng: np.random.Generator, digits: int, pitch: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A strip (32, W) of ink blocks, its frames' log-probabilities (W / 4, 11), and the digits it shows; blocks
    ``pitch`` * (0.55 to 0.85) pixels wide, gaps up to ``pitch`` / 2."""
    widths = rng.integers(int(0.55 * pitch), int(0.85 * pitch), digits)
    gaps = rng.integers(0, pitch // 2, digits + 1)
    width = int(widths.sum() + gaps.sum()) + 8
    width += -width % STRIDE
    ink = np.zeros((32, width), np.uint8)
    logits = rng.normal(0, 1.0, size=(width // STRIDE, 11))
    logits[:, 0] += 6  # blank wins where no digit is emitted
    text, x = "", 4 + int(gaps[0])
    for i in range(digits):
        d = int(rng.integers(10))
        text += str(d)
        ink[4:28, x : x + widths[i]] = 255
        mid = (x + widths[i] // 2) // STRIDE
        logits[mid - 1 : mid + 1 + int(rng.integers(2)), d + 1] += 10
        x += int(widths[i] + gaps[i + 1])
    return ink, tempered(logits), text


def _p(times: list[float]) -> str:
    ms = 1e3 * np.array(times)
    return f"p50 {np.median(ms):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strips", type=int, default=300, help="strips timed per constraint (default 300)")
    parser.add_argument("--digits", type=int, default=5, help="digits per strip (default 5)")
    parser.add_argument("--pitch", type=int, default=56, help="pixels per digit and gap, about (default 56)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    strips = [synthetic_strip(rng, args.digits, args.pitch) for _ in range(args.strips)]
    frames = [len(lp) for _, lp, _ in strips]
    summary = {
        "strips": args.strips,
        "digits": args.digits,
        "frames_p50": float(np.median(frames)),
        "cpus": os.cpu_count(),
    }
    print(
        f"{args.strips} strips of {args.digits} digits, frames per strip: median {np.median(frames):.0f} ({min(frames)}-{max(frames)})"
    )
    for constraint in ({}, {"length": args.digits}, {"pattern": r"[0-9]\d{3,4}"}):
        automaton = compile_constraint(**constraint)
        read_frames(strips[0][1], strips[0][0], **constraint)  # warm the automaton's tables
        stages: dict[str, list[float]] = {"decode": [], "confidences": [], "boxes": [], "read_frames": []}
        exact = 0
        for ink, lp, text in strips:
            t0 = time.perf_counter()
            decoded = constrained_decode(lp, automaton)
            t1 = time.perf_counter()
            digit_confidences(lp, decoded.text)
            t2 = time.perf_counter()
            digit_boxes(ink, decoded.spans)
            t3 = time.perf_counter()
            reading = read_frames(lp, ink, **constraint)
            t4 = time.perf_counter()
            for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[name].append(dt)
            exact += reading.text == text
        print(f"constraint {constraint or 'none'}: read {exact}/{len(strips)} exactly")
        for name, times in stages.items():
            print(f"  {name:12s} {_p(times)}")
        key = "_".join(f"{k}={v}" for k, v in constraint.items()) or "none"
        summary[f"read_frames_p50_ms[{key}]"] = round(1e3 * float(np.median(stages["read_frames"])), 3)
        summary[f"exact[{key}]"] = exact / len(strips)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

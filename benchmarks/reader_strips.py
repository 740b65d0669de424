"""A saved line reader judged as the reader step judges it: calibrated on validation strips, read once on test strips.

    python benchmarks/reader_strips.py --data_dir ../shared/data/mnist --reader tests/assets/reader
    python benchmarks/reader_strips.py --data_dir ../shared/data/mnist --reader DIR --strips 1000 --write

The strips are those a ``reader`` run makes with the reader's own config (``reader_val_strips`` strips of the
validation digits, as many of the test digits, seeded): the temperature of the number confidence and the emission
offset are fitted on the validation strips (``workflow.reader_run._calibrate_and_test``), then every strip is read
with the served decoding. ``--write`` stores the calibration in the folder's ``reader_calibration.json`` (what a run
since issue 30 writes itself). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.serving import machine  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="", help="MNIST IDX files (default: $DIGITS_DATA_DIR or the cache)")
    parser.add_argument("--reader", required=True, help="the reader's folder (weights.pt + reader_config.json)")
    parser.add_argument("--strips", type=int, default=0, help="strips of each split (default: the reader's config)")
    parser.add_argument("--write", action="store_true", help="write the fitted reader_calibration.json into --reader")
    args = parser.parse_args(argv)

    from digits.learn.data import load_mnist, split_train_val
    from digits.learn.reader_train import validation_strips
    from digits.serve.line_reader import write_calibration
    from digits.serve.reader import load_reader
    from workflow.reader_run import _calibrate_and_test

    net, config = load_reader(args.reader)
    if args.strips:
        config = config.replace(reader_val_strips=args.strips)
    mnist = load_mnist(args.data_dir or None)
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    val = validation_strips(config, mnist.train_images[split.val], mnist.train_labels[split.val])  # fit_reader's
    start = time.perf_counter()
    calibration, metrics = _calibrate_and_test(net, config, mnist, val)
    if args.write:
        write_calibration(args.reader, calibration)
    out = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average": os.getloadavg()[0],
        "args": vars(args),
        "seconds": time.perf_counter() - start,
        "calibration": calibration,
        "metrics": metrics,
    }
    for key, value in metrics.items():
        print(f"{key:32s} {value:.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

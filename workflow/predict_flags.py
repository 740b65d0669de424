"""The flags of the jobs on a trained model's answers: ``digits predict`` and ``digits evaluate --number``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from digits.core.names import CHAMPION_URI
from workflow.commands import cmd_predict
from workflow.flags import float_flag, int_flag


def add_number_flags(p: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]) -> None:
    """Set ``handler`` and add ``--number`` to predict (read each file as a number) or evaluate (the numbers evaluation)."""
    p.set_defaults(handler=handler)
    if handler is cmd_predict:
        p.add_argument(
            "--number",
            action="store_true",
            help="read each file as a handwritten number of 1 to 12 digits on one line (default: off, one digit per file)",
        )
        return
    p.add_argument(
        "--number",
        action="store_true",
        help="evaluate on handwritten numbers composed from MNIST test digits instead, in a run evaluate-numbers (default: off)",
    )
    p.add_argument(
        "--number_size",
        "--number-size",
        type=int_flag,
        default=20,
        help="with --number: numbers per length (3-8), spacing and renderer (default: 20, 480 numbers)",
    )
    p.add_argument(
        "--number_seed",
        "--number-seed",
        type=int_flag,
        default=0,
        help="with --number: seed of the composed numbers (default: 0)",
    )


def add_predict_parser(sub: Any) -> None:
    """``digits predict``: image files through a registered model, as the served model reads them."""
    p = sub.add_parser(
        "predict",
        help="predict the digit in image files (PNG/JPEG) with a registered model and the endpoint's own preprocessing, without a server",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG or JPEG files: any size, dark ink on light or light on dark"
    )
    p.add_argument(
        "--model_uri",
        "--model-uri",
        default=CHAMPION_URI,
        help=f"model to load: models:/NAME@ALIAS or models:/NAME/VERSION (default: {CHAMPION_URI})",
    )
    p.add_argument(
        "--min_confidence",
        "--min-confidence",
        type=float_flag,
        default=0.0,
        help="answer 'unsure' instead of a digit (or number) whose calibrated confidence is below this, 0 to 1 (default: 0.0, answer everything)",
    )
    p.add_argument(
        "--length",
        type=int_flag,
        default=0,
        help="with --number: read exactly this many digits, 1 to 12 (default: 0, any length; needs the line reader)",
    )
    p.add_argument(
        "--pattern",
        default="",
        help=r"with --number: a regular expression over digits the reading must match, e.g. '\d{5}' (default: '', none)",
    )
    add_number_flags(p, cmd_predict)

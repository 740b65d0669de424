"""``digits`` command line: parse and validate flags, run a job, turn errors into one line and an exit code.

Flags are generated from the config dataclasses, so a flag, its MLproject parameter and its config field share
one name (``--batch_size``, also spelt ``--batch-size``). Every flag's help states its default.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from digits.core.config import DataConfig, ReaderConfig, SearchConfig, TrainConfig
from digits.core.errors import DigitsError, first_line
from digits.core.interrupts import RunInterrupted, interrupt
from digits.core.names import CHAMPION, CHAMPION_URI, CNN_MODEL_NAME
from workflow.commands import (
    cmd_app,
    cmd_baseline,
    cmd_doctor,
    cmd_evaluate,
    cmd_export,
    cmd_feedback,
    cmd_main,
    cmd_reader,
    cmd_register,
    cmd_stack,
    cmd_train,
    cmd_tune,
)
from workflow.flags import Parser, add_config_flags, int_flag
from workflow.predict_flags import add_number_flags, add_predict_parser

PROG = "digits"


def _add_feedback_parsers(sub: Any, app_parser: argparse.ArgumentParser) -> None:
    """``digits feedback list|export|import`` and the app's feedback flags."""
    where = "folder of the feedback store (default: empty, a feedback/ folder beside the sqlite file of MLFLOW_TRACKING_URI, else ~/.cache/digits/feedback)"
    app_parser.add_argument("--feedback_dir", "--feedback-dir", default="", help=where)
    app_parser.add_argument(
        "--no_feedback",
        "--no-feedback",
        action="store_true",
        help="no Right/Wrong buttons: nothing is stored (default: off, the buttons are shown)",
    )
    p = sub.add_parser(
        "feedback",
        help="the app's feedback: list counts, export a versioned dataset (.npz + manifest .json), import someone else's export",
    )
    p.add_argument(
        "action",
        choices=("list", "export", "import"),
        help="list: counts per label and per model, conflicts; export: write PATH (.npz) and its manifest; import: add the export PATH to the store",
    )
    p.add_argument(
        "path",
        nargs="?",
        default="",
        help="export: the .npz to write (default: feedback.npz); import: the .npz to read, its manifest beside it (default: empty)",
    )
    p.add_argument("--feedback_dir", "--feedback-dir", default="", help=where)
    p.set_defaults(handler=cmd_feedback)


def _add_stack_parser(sub: Any) -> None:
    p = sub.add_parser(
        "stack",
        help="a PostgreSQL server (databases optuna, mlflow) and an MLflow tracking server on this machine, for parallel workers: up, down, status",
    )
    p.add_argument(
        "action",
        choices=("up", "down", "status"),
        help="up: start what is not running (idempotent); down: stop both by pid, keep the data; status: state and the lines to export (exit code 3 when not running)",
    )
    p.add_argument(
        "--dir",
        default="",
        help="the stack's folder: data, artifacts, password file, logs, pids (default: ~/.cache/digits/stack)",
    )
    p.add_argument(
        "--pg_port",
        "--pg-port",
        type=int_flag,
        default=0,
        help="PostgreSQL's port on 127.0.0.1 (default: 0, the last up's, else 5432)",
    )
    p.add_argument(
        "--mlflow_port",
        "--mlflow-port",
        type=int_flag,
        default=0,
        help="the tracking server's port on 127.0.0.1 (default: 0, the last up's, else 5000)",
    )
    p.add_argument(
        "--mlflow_workers",
        "--mlflow-workers",
        type=int_flag,
        default=2,
        help="worker processes of the tracking server (default: 2)",
    )
    p.add_argument(
        "--purge",
        action="store_true",
        help="with down: also delete the folder and the data directory, every study, run and artifact in them (default: off, keep them)",
    )
    p.set_defaults(handler=cmd_stack)


def build_parser() -> argparse.ArgumentParser:
    """The ``digits`` parser with every subcommand."""
    parser = Parser(
        prog=PROG,
        description="MNIST digit recognition tracked in MLflow: baseline, CNN, Optuna search, registry, serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    _add_pipeline_parsers(sub)
    _add_model_parsers(sub)
    _add_export_parser(sub)
    app_parser = _add_app_parser(sub)
    _add_stack_parser(sub)
    _add_feedback_parsers(sub, app_parser=app_parser)
    p = sub.add_parser(
        "doctor",
        help="print the versions, stores, data folder, serving guard and champion this environment sees; exit 1 with one line per problem",
    )
    p.add_argument(
        "--data_dir",
        "--data-dir",
        default="",
        help="MNIST folder to check (default: empty, $DIGITS_DATA_DIR, else ~/.cache/digits/mnist)",
    )
    p.set_defaults(handler=cmd_doctor)
    return parser


def _add_pipeline_parsers(sub: Any) -> None:
    """The jobs that train: main (the MLproject's pipeline), train, baseline, tune."""
    p = sub.add_parser(
        "main",
        help="the whole pipeline: baseline, Optuna search, final CNN, test evaluation, registry (the MLproject's main entry point)",
    )
    add_config_flags(p, TrainConfig)
    add_config_flags(p, SearchConfig)
    _add_reader_flags(p, in_main=True)
    p.add_argument(
        "--model_name",
        "--model-name",
        default=CNN_MODEL_NAME,
        help=f"registered model name of the final CNN (default: {CNN_MODEL_NAME})",
    )
    p.set_defaults(handler=cmd_main)

    p = sub.add_parser("train", help="train and evaluate one CNN with the given config")
    add_config_flags(p, TrainConfig)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "reader", help="train the line reader (CNN + CTC) on synthetic number strips of MNIST digits, in a run reader"
    )
    _add_reader_flags(p, in_main=False)

    p = sub.add_parser("baseline", help="fit and evaluate the logistic-regression baseline")
    add_config_flags(p, DataConfig)
    p.set_defaults(handler=cmd_baseline)

    p = sub.add_parser(
        "tune",
        help="add trials to the Optuna study alone (resumable; optuna-dashboard can show it); the training flags are the fixed base of the trials",
    )
    add_config_flags(p, TrainConfig, skip=("epochs",))  # a trial trains for --trial_epochs
    add_config_flags(p, SearchConfig)
    p.add_argument(
        "--target",
        choices=("cnn", "reader"),
        default="cnn",
        help="what to search: the CNN, or the line reader (tuning.space.READER_SPACE, study STUDY_NAME-reader, a trial trains for reader_epochs) (default: cnn)",
    )
    _add_reader_flags(p, in_main=True)
    p.add_argument(
        "--parent_run_id",
        "--parent-run-id",
        default="",
        help="nest this worker's search run under that MLflow run instead of a new tune run, as main --workers starts its workers (default: empty)",
    )
    p.set_defaults(handler=cmd_tune)


def _add_reader_flags(p: argparse.ArgumentParser, *, in_main: bool) -> None:
    """The reader's flags; in ``main`` only its own (the data and device flags are the CNN's, shared)."""
    if in_main:
        add_config_flags(p, ReaderConfig, skip=tuple(f.name for f in fields(DataConfig)) + ("device",))
        return
    add_config_flags(p, ReaderConfig)
    p.set_defaults(handler=cmd_reader)


def _add_model_parsers(sub: Any) -> None:
    """The jobs on a trained model: register (alias moves), predict, evaluate."""
    p = sub.add_parser(
        "register", help="point an alias of a registered model at a version: explicit promotion or roll-back"
    )
    p.add_argument(
        "--model_name", "--model-name", default=CNN_MODEL_NAME, help=f"registered model (default: {CNN_MODEL_NAME})"
    )
    p.add_argument("--alias", default=CHAMPION, help=f"alias to move (default: {CHAMPION})")
    p.add_argument(
        "--version",
        type=int_flag,
        default=0,
        help="model version the alias should point at; must be given (default: 0, refused)",
    )
    p.set_defaults(handler=cmd_register)

    add_predict_parser(sub)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a registered model or a run's model on the test set and log an evaluation run with every metric and figure",
    )
    p.add_argument(
        "--model_uri",
        "--model-uri",
        default=CHAMPION_URI,
        help=f"model to evaluate: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or runs:/RUN_ID for a run's CNN checkpoint (default: {CHAMPION_URI})",
    )
    # The test set is the same whatever the split; calibration is the training's.
    add_config_flags(p, DataConfig, skip=("val_size", "subset", "seed", "calibration_size"))
    add_number_flags(p, cmd_evaluate)


def _add_export_parser(sub: Any) -> None:
    """``digits export``: a registered CNN to ONNX."""
    p = sub.add_parser(
        "export",
        help="export a registered CNN to ONNX (raw 0-255 pixels in, ten probabilities out), checked against PyTorch",
    )
    p.add_argument(
        "--model_uri",
        "--model-uri",
        default=CHAMPION_URI,
        help=f"CNN to export: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a checkpoint folder (default: {CHAMPION_URI})",
    )
    p.add_argument("--format", default="onnx", help="export format; onnx is the only one (default: onnx)")
    p.add_argument("--out", default="export", help="folder to write model.onnx and config.json into (default: export)")
    p.add_argument(
        "--data_dir",
        "--data-dir",
        default="",
        help="MNIST IDX files: check parity on the whole test set and also write an int8 graph (model.int8.onnx) if it loses at most 0.05 points of test accuracy (default: empty, check on 512 random images, no int8)",
    )
    p.set_defaults(handler=cmd_export)


def _add_app_parser(sub: Any) -> argparse.ArgumentParser:
    """The drawing app; returned, since the feedback flags join it."""
    p = sub.add_parser(
        "app",
        help="the drawing app: draw or upload a digit in the browser, see the model's top three and the 28x28 image it saw",
    )
    p.add_argument(
        "--model_uri",
        "--model-uri",
        default=CHAMPION_URI,
        help=f"registered model to load once at start, unless --endpoint is given (default: {CHAMPION_URI})",
    )
    p.add_argument(
        "--endpoint",
        default="",
        help="URL of a running `mlflow models serve` endpoint to ask instead, e.g. http://127.0.0.1:5001 (default: empty, use --model_uri)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 opens the app to the network (default: 127.0.0.1)",
    )
    p.add_argument("--port", type=int_flag, default=7860, help="port to listen on (default: 7860)")
    p.add_argument(
        "--share",
        action="store_true",
        help="also publish a temporary public *.gradio.live link through Gradio's servers (default: off)",
    )
    p.set_defaults(handler=cmd_app)
    return p


def _raise_interrupt(signum: int, frame: Any) -> None:

    _ignore_interrupts()
    interrupt(RunInterrupted(f"received signal {signum}"))  # at once, or after Optuna's bookkeeping


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:

    _ignore_interrupts()
    interrupt(KeyboardInterrupt())


def _ignore_interrupts() -> None:
    # The process is stopping: a second signal (`mlflow run` follows a Ctrl-C with SIGTERM at once) must not cut
    # short the clean-up that ends the runs KILLED and marks the running Optuna trial failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``digits`` console script and ``python -m digits``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C: runs end KILLED, trials are marked failed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the caller made us ignore it
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        return args.handler(args)
    except DigitsError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, RunInterrupted):
            print(f"{PROG} {args.command}: stopped by {exc}", file=sys.stderr)
            return 143
        if isinstance(exc, MlflowException):  # a bad tracking URI, an unknown model: the user's to fix
            print(f"{PROG} {args.command}: error: MLflow: {first_line(exc)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

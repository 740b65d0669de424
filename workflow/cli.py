"""``digits`` command line: parse and validate flags, run a job, turn errors into one line and an exit code.

Flags are generated from the config dataclasses, so a flag, its MLproject parameter and its config field share
one name (``--batch_size``, also spelt ``--batch-size``). Every flag's help states its default.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

from digits.core.config import ConfigError, DataConfig, SearchConfig, TrainConfig, parse_bool
from digits.core.errors import DigitsError, first_line
from digits.core.names import CHAMPION, CHAMPION_URI, CNN_MODEL_NAME

PROG = "digits"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int(text: str) -> int:
    try:
        value = float(text)
        if value != int(value):
            raise ValueError
        return int(value)  # accept "10" and "10.0" (MLflow may pass either), not "10.5"
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: _int,
    float: _float,
    bool: _bool,
    str: str,
    "int": _int,
    "float": _float,
    "bool": _bool,
    "str": str,
}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (name, type, default and help from the field)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default if f.default is not MISSING else None
        shown = "empty" if default == "" else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        parser.add_argument(
            *names,
            dest=f.name,
            type=_PARSERS[f.type],
            default=default,
            help=help_text,
            metavar=str(f.type).upper() if isinstance(f.type, str) else f.type.__name__.upper(),
        )


def config_from_args(cls: type, args: argparse.Namespace):
    """Build and validate the dataclass ``cls`` from parsed flags (a field without a flag keeps its default)."""
    config = cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
    config.validate()
    return config


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.08", "width=24"]`` -> ``{"lr": 0.08, "width": 24}``, typed by the fields of dataclass ``cls``.

    For scripts that take ``--set FIELD=VALUE``; a bad item raises ``ConfigError`` with one line.
    """
    types = {f.name: f.type for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"expected FIELD=VALUE with FIELD one of {', '.join(types)}, got {item!r}")
        try:
            out[key] = _PARSERS[types[key]](text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return out


# --- the subcommands ----------------------------------------------------------------------------------------------


def cmd_main(args: argparse.Namespace) -> int:
    config, search = config_from_args(TrainConfig, args), config_from_args(SearchConfig, args)
    from workflow import pipeline  # after validation: a typo is reported without waiting for torch and MLflow

    pipeline.run_main(config, search, args.model_name)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(TrainConfig, args)
    from workflow import pipeline

    mnist, split = pipeline.load_data(config)
    pipeline.run_cnn(config, mnist, split, nested=False)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    config = config_from_args(DataConfig, args)
    from workflow import pipeline

    mnist, split = pipeline.load_data(config)
    pipeline.run_baseline(config, mnist, split, nested=False)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    config, search = config_from_args(TrainConfig, args), config_from_args(SearchConfig, args)
    from workflow import pipeline

    pipeline.run_tune(config, search, parent_run_id=args.parent_run_id)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import importlib.util

    from digits.app import page as app  # gradio is an optional extra: imported only when the app is asked for

    if importlib.util.find_spec("gradio") is None:
        raise DigitsError("the app needs Gradio: pip install 'digits[app]'")
    app.serve(
        model_uri=args.model_uri,
        endpoint=args.endpoint,
        host=args.host,
        port=args.port,
        share=args.share,
        feedback=_feedback_store(args),
    )
    return 0


def _feedback_store(args: argparse.Namespace):
    """The app's feedback store (``--feedback_dir``, else beside the tracking store), or None with ``--no_feedback``."""
    if getattr(args, "no_feedback", False):
        return None
    from digits.feedback.store import Store, default_dir

    return Store(args.feedback_dir or default_dir())


def cmd_feedback(args: argparse.Namespace) -> int:
    from digits.feedback import store as feedback

    store = _feedback_store(args)
    if args.action == "import":
        if not args.path:
            raise ConfigError("feedback import needs the export to read: digits feedback import NAME.npz")
        added, known = feedback.import_export(store, feedback.load_export(args.path))
        print(f"imported {added} entries into {store.root} ({known} already there with the same label)")
        return 0
    curated = feedback.curate(*store.entries())
    if args.action == "list":
        print(f"{store.root}:\n{feedback.describe(curated)}")
        return 0
    if not curated.digests:
        raise DigitsError(f"nothing to export: the feedback store {store.root} holds no image without a conflict")
    manifest = feedback.export(curated, args.path or "feedback.npz")
    print(
        f"{args.path or 'feedback.npz'}: {manifest['count']} images, version {manifest['version']}, sha256 {manifest['sha256']} "
        f"(manifest {feedback.manifest_path(args.path or 'feedback.npz')}; {manifest['conflicts_excluded']} conflicting images left out)"
    )
    return 0


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digits.learn.data import load_mnist
    from digits.mlops.evaluate_job import evaluate_model, load_model

    if args.number:
        from digits.mlops.evaluate_job import evaluate_numbers

        mnist = load_mnist(args.data_dir or None)
        evaluate_numbers(args.model_uri, mnist.test_images, mnist.test_labels, args.number_size, args.number_seed)
        return 0
    model = load_model(args.model_uri)  # first: a wrong URI is reported without waiting for the data
    evaluate_model(args.model_uri, load_mnist(args.data_dir or None), model=model)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from digits.mlops.registry import set_alias

    if args.version < 1:  # MLproject parameters all have defaults: 0 stands for "not given"
        raise ConfigError(f"--version must be the number of a registered version (1, 2, ...), got {args.version}")
    previous = set_alias(args.model_name, args.alias, args.version)
    was = f"version {previous}" if previous is not None else "no version"
    print(f"{args.model_name}@{args.alias} -> version {args.version} (it was on {was})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from digits.serve.serving import predict_files

    for row in predict_files(args.images, args.model_uri, number=args.number).itertuples():
        print(f"{row.path}: {row.text if args.number else row.digit} (confidence {row.confidence:.3f})")
    return 0


def _add_number_flags(p: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]) -> None:
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
        type=_int,
        default=20,
        help="with --number: numbers per length (3-8), spacing and renderer (default: 20, 480 numbers)",
    )
    p.add_argument(
        "--number_seed",
        "--number-seed",
        type=_int,
        default=0,
        help="with --number: seed of the composed numbers (default: 0)",
    )


def cmd_stack(args: argparse.Namespace) -> int:
    from digits.ops import stack

    where = stack.open_stack(args.dir or None, args.pg_port, args.mlflow_port)
    if args.action == "up":
        stack.up(where, mlflow_workers=args.mlflow_workers)
    elif args.action == "down":
        stopped = stack.down(where)
        if args.purge:
            stack.purge(where)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return 0
    print(stack.describe(where))
    return 0 if all(stack.running(where).values()) else 3  # like pg_ctl status: 3 = not running


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
        type=_int,
        default=0,
        help="PostgreSQL's port on 127.0.0.1 (default: 0, the last up's, else 5432)",
    )
    p.add_argument(
        "--mlflow_port",
        "--mlflow-port",
        type=_int,
        default=0,
        help="the tracking server's port on 127.0.0.1 (default: 0, the last up's, else 5000)",
    )
    p.add_argument(
        "--mlflow_workers",
        "--mlflow-workers",
        type=_int,
        default=2,
        help="worker processes of the tracking server (default: 2)",
    )
    p.add_argument(
        "--purge",
        action="store_true",
        help="with down: also delete the folder and the data directory, every study, run and artifact in them (default: off, keep them)",
    )
    p.set_defaults(handler=cmd_stack)


def cmd_export(args: argparse.Namespace) -> int:
    from digits.mlops.export import INT8_MAX_DROP, OPSET, export_model

    if args.format != "onnx":  # MLproject parameters are not checked by MLflow: this is the only place
        raise ConfigError(f"--format must be onnx, got {args.format!r}")
    mnist = None
    if args.data_dir:
        from digits.learn.data import load_mnist

        mnist = load_mnist(args.data_dir)
    done = export_model(args.model_uri, args.out, mnist)
    print(
        f"{done.path}: ONNX opset {OPSET}, input pixels uint8 (N, 28, 28) 0-255, output probabilities (N, 10); "
        f"matches PyTorch on {done.parity.images:,} images (max |dp| {done.parity.max_abs_diff:.1e}, same digits)"
    )
    if done.accuracy:
        acc = done.accuracy
        kept = (
            f"written to {done.int8_path}"
            if done.int8_path
            else f"not kept: it loses more than {100 * INT8_MAX_DROP:.2f} points"
        )
        print(
            f"test accuracy: torch {100 * acc['torch']:.2f}%, onnx {100 * acc['onnx']:.2f}%, int8 {100 * acc['int8']:.2f}% ({kept})"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``digits`` parser with every subcommand."""
    parser = _Parser(
        prog=PROG,
        description="MNIST digit recognition tracked in MLflow: baseline, CNN, Optuna search, registry, serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    p = sub.add_parser(
        "main",
        help="the whole pipeline: baseline, Optuna search, final CNN, test evaluation, registry (the MLproject's main entry point)",
    )
    add_config_flags(p, TrainConfig)
    add_config_flags(p, SearchConfig)
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

    p = sub.add_parser("baseline", help="fit and evaluate the logistic-regression baseline")
    add_config_flags(p, DataConfig)
    p.set_defaults(handler=cmd_baseline)

    p = sub.add_parser(
        "register", help="point an alias of a registered model at a version: explicit promotion or roll-back"
    )
    p.add_argument(
        "--model_name", "--model-name", default=CNN_MODEL_NAME, help=f"registered model (default: {CNN_MODEL_NAME})"
    )
    p.add_argument("--alias", default=CHAMPION, help=f"alias to move (default: {CHAMPION})")
    p.add_argument(
        "--version",
        type=_int,
        default=0,
        help="model version the alias should point at; must be given (default: 0, refused)",
    )
    p.set_defaults(handler=cmd_register)

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
    _add_number_flags(p, cmd_predict)

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
    add_config_flags(p, DataConfig, skip=("val_size", "subset", "seed"))  # the test set is the same whatever the split
    _add_number_flags(p, cmd_evaluate)

    p = sub.add_parser(
        "tune",
        help="add trials to the Optuna study alone (resumable; optuna-dashboard can show it); the training flags are the fixed base of the trials",
    )
    add_config_flags(p, TrainConfig, skip=("epochs",))  # a trial trains for --trial_epochs
    add_config_flags(p, SearchConfig)
    p.add_argument(
        "--parent_run_id",
        "--parent-run-id",
        default="",
        help="nest this worker's search run under that MLflow run instead of a new tune run, as main --workers starts its workers (default: empty)",
    )
    p.set_defaults(handler=cmd_tune)

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
    p.add_argument("--port", type=_int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument(
        "--share",
        action="store_true",
        help="also publish a temporary public *.gradio.live link through Gradio's servers (default: off)",
    )
    p.set_defaults(handler=cmd_app)

    _add_stack_parser(sub)
    _add_feedback_parsers(sub, app_parser=p)  # p: the app parser, made just above
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    from digits.mlops.tracking import RunInterrupted, interrupt

    _ignore_interrupts()
    interrupt(RunInterrupted(f"received signal {signum}"))  # at once, or after Optuna's bookkeeping


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    from digits.mlops.tracking import interrupt

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

        from digits.mlops.tracking import RunInterrupted

        if isinstance(exc, RunInterrupted):
            print(f"{PROG} {args.command}: stopped by {exc}", file=sys.stderr)
            return 143
        if isinstance(exc, MlflowException):  # a bad tracking URI, an unknown model: the user's to fix
            print(f"{PROG} {args.command}: error: MLflow: {first_line(exc)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

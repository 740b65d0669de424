"""The handlers of the ``digits`` subcommands: validate the config, then hand the job to the pipeline or a library
module; heavy imports (torch, MLflow, gradio) only once the flags are known to be good."""

from __future__ import annotations

import argparse

from digits.core.config import ConfigError, DataConfig, ReaderConfig, SearchConfig, TrainConfig
from digits.core.errors import DigitsError
from workflow.flags import config_from_args


def cmd_doctor(args: argparse.Namespace) -> int:
    from workflow import doctor

    return doctor.report(doctor.diagnose(args.data_dir))


def cmd_main(args: argparse.Namespace) -> int:
    config, search = config_from_args(TrainConfig, args), config_from_args(SearchConfig, args)
    reader = config_from_args(ReaderConfig, args)
    from workflow import pipeline  # after validation: a typo is reported without waiting for torch and MLflow

    pipeline.run_main(config, search, args.model_name, reader=reader)
    return 0


def cmd_reader(args: argparse.Namespace) -> int:
    config = config_from_args(ReaderConfig, args)
    from workflow import pipeline

    pipeline.run_reader_entry(config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(TrainConfig, args)
    from workflow import cnn_run, pipeline

    mnist, split = pipeline.load_data(config)
    cnn_run.run_cnn(config, mnist, split, nested=False)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    config = config_from_args(DataConfig, args)
    from workflow import pipeline

    mnist, split = pipeline.load_data(config)
    pipeline.run_baseline(config, mnist, split, nested=False)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    config, search = config_from_args(TrainConfig, args), config_from_args(SearchConfig, args)
    if args.target == "reader":
        reader = config_from_args(ReaderConfig, args)
        from workflow import pipeline

        pipeline.run_tune_reader(reader, search)
        return 0
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digits.learn.data import load_mnist
    from digits.mlops.evaluate_job import evaluate_model, load_model

    if args.number:
        from digits.mlops.evaluate_job import evaluate_numbers

        mnist = load_mnist(args.data_dir or None)
        evaluate_numbers(args.model_uri, mnist.test_images, mnist.test_labels, args.number_size, args.number_seed)
        return 0
    model = load_model(args.model_uri)  # first: a wrong URI is reported without waiting for the data
    evaluate_model(args.model_uri, load_mnist(args.data_dir or None), model=model, robust_size=args.robust_size)
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

    if not 0.0 <= args.min_confidence <= 1.0:
        raise ConfigError(f"--min_confidence must be a number from 0 to 1, got {args.min_confidence}")
    if (args.length or args.pattern) and not args.number:
        raise ConfigError("--length and --pattern apply to numbers: add --number")
    if not 0 <= args.length <= 12:
        raise ConfigError(f"--length must be a whole number from 1 to 12 (0: any), got {args.length}")
    rows = predict_files(
        args.images,
        args.model_uri,
        number=args.number,
        min_confidence=args.min_confidence,
        length=args.length,
        pattern=args.pattern,
    )
    for row in rows.itertuples():
        answer = "unsure" if getattr(row, "unsure", False) else (row.text if args.number else row.digit)
        print(f"{row.path}: {answer} (confidence {row.confidence:.3f})")
    return 0


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

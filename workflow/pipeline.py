"""The jobs behind the MLproject entry points: each model in its own MLflow run, the steps in order.

This is the top layer: it may call into ``tuning`` (the library modules below it never do).
"""

from __future__ import annotations

import logging
import tempfile
import time

import mlflow

from digits.core.config import DataConfig, ReaderConfig, SearchConfig, TrainConfig
from digits.core.errors import DigitsError
from digits.core.names import CNN_MODEL_NAME, ONNX_SUFFIX
from digits.evaluate import calibration, report
from digits.evaluate.eda import log_eda_once
from digits.evaluate.evaluation import log_test_evaluation
from digits.evaluate.metrics import top_confusions
from digits.learn import baseline
from digits.learn.data import MNIST, Split, load_mnist, split_train_val
from digits.mlops import registry, tracking
from digits.mlops.feedback_data import with_extra_data
from workflow.cnn_run import ModelOutcome, run_cnn
from workflow.reader_run import run_reader

log = logging.getLogger(__name__)


def load_data(config: DataConfig) -> tuple[MNIST, Split]:
    """Load MNIST (``config.data_dir`` or the cache) and split it as ``config`` says."""
    t0 = time.perf_counter()
    mnist = load_mnist(config.data_dir or None)
    split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
    mnist, split = with_extra_data(
        mnist, split, getattr(config, "extra_data", ""), config.seed
    )  # feedback joins training
    log.info(
        "MNIST from %s (digest %s): %d train, %d validation, %d test images (%.1fs)",
        mnist.source,
        mnist.digest,
        len(split.train),
        len(split.val),
        len(mnist.test_labels),
        time.perf_counter() - t0,
    )
    return mnist, split


def run_baseline(config: DataConfig, mnist: MNIST, split: Split, *, nested: bool) -> ModelOutcome:
    """Fit the logistic-regression baseline on the training split, evaluate it on test, log it as ``baseline-logreg``."""
    with tracking.model_run(
        "baseline-logreg", nested=nested, model_family="logreg", pipeline_step="baseline"
    ) as active:
        tracking.log_dataset(mnist, "train", split.train, "training")
        tracking.log_dataset(mnist, "test", None, "testing")
        # Fitted in blocks of lbfgs iterations, so the baseline has training curves (step = iterations) like the CNN.
        model, history, fit_seconds = baseline.fit_baseline_with_history(
            mnist.train_images[split.train],
            mnist.train_labels[split.train],
            (mnist.train_images[split.val], mnist.train_labels[split.val]),
            seed=config.seed,
            callback=tracking.epoch_logger(),
        )
        # Once, from the fitted model (MLflow refuses a parameter logged again with another value).
        mlflow.log_params({**baseline.params(model), **DataConfig.to_dict(config)})
        proba = baseline.predict_proba(model, mnist.test_images)
        metrics = log_test_evaluation(
            mnist.test_labels,
            proba,
            images=mnist.test_images,
            history=history,
            family="logreg",
            predict=lambda images: baseline.predict_proba(model, images),
            robust_size=config.robust_size,
        )
        mlflow.log_metric("fit_seconds", fit_seconds)
        # Fitted by log loss, the baseline is calibrated already: its temperature on the validation split is logged
        # (temperature, calibration_*) to show it, not applied (the served scikit-learn model stays as fitted).
        val_labels = mnist.train_labels[split.val]
        val_proba = baseline.predict_proba(model, mnist.train_images[split.val])
        summary = calibration.calibration_summary(
            val_labels, val_proba, calibration.fit_temperature(val_proba, val_labels)
        )
        mlflow.log_metrics(summary)
        mlflow.set_tag("calibration", "temperature fitted on the validation split, not applied")
        example = baseline.features(mnist.test_images[:2])
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=mlflow.models.infer_signature(example, proba[:2]),
            input_example=example,
            pip_requirements=baseline.requirements(),  # inferring them costs ~10 s of import tracing per run
        )
        log.info("baseline: test accuracy %.2f%% (fit %.1fs)", 100 * metrics["test_accuracy"], fit_seconds)
        confusions = top_confusions(mnist.test_labels, proba.argmax(axis=1), k=10)
        return ModelOutcome(active.info.run_id, metrics, info.model_uri, confusions=confusions)


def run_main(
    config: TrainConfig, search: SearchConfig, model_name: str = CNN_MODEL_NAME, reader: ReaderConfig | None = None
) -> None:
    """The ``main`` entry point: baseline, Optuna search, the best config retrained on train+validation, test.

    Every step is a child of the pipeline's run (the one ``mlflow run`` created, or a new ``main`` run).
    ``reader``: also train the line reader (``run_reader``). ``search.n_trials == 0`` skips the search and retrains
    ``config`` itself; ``search.workers > 1`` runs it in
    that many local processes (``search_in_workers``).
    """
    from tuning import search as tuning_search  # the top layer is the only one that knows the search

    storage = tuning_search.connect(search) if search.n_trials else None  # a bad storage URL: before the data is loaded
    mnist, split = load_data(config)
    log.info("plan: %s", plan(config, search, len(split.train) + len(split.val), reader))
    # A study run with other settings: refused before any MLflow run.
    study = tuning_search.open_search(config, search, mnist, storage) if storage is not None else None
    with tracking.run("main", tags={"pipeline_step": "main"}):
        tracking.log_config(config)
        tracking.log_new_params(
            {**search.to_dict(), "storage": tuning_search.redact(search.storage), "model_name": model_name}
        )
        log_eda_once(mnist)  # once per data digest: a later pipeline run on the same data points to these figures
        base = run_baseline(config, mnist, split, nested=True)
        if study is None:
            best = config
        elif search.workers > 1:
            best = search_in_workers(study, config, search)
        else:
            best = tuning_search.run_search(study, config, search, mnist, split)
        with tempfile.TemporaryDirectory(prefix="digits-reader-") as workdir:
            # The line reader first: the served CNN (torch and ONNX) carries it for mode=number.
            lines = run_reader(reader, mnist, split, nested=True, workdir=workdir) if reader is not None else None
            cnn = run_cnn(best, mnist, split, nested=True, final=True, reference=base, reader=lines)
        mlflow.log_metrics(
            {"baseline_test_accuracy": base.metrics["test_accuracy"], "cnn_test_accuracy": cnn.metrics["test_accuracy"]}
        )
        # The card goes into the CNN run and this one; it is also the registered version's description.
        card = report.log_model_card(mnist, split, best, base, cnn, model_name=model_name, n_trials=search.n_trials)
        # Register only after every step succeeded: a failed or interrupted run leaves the registry untouched.
        register(base, cnn, mnist.digest, model_name, card)


def register(base: ModelOutcome, cnn: ModelOutcome, digest: str, model_name: str, card: str) -> None:
    """Register the baseline, the ONNX model and the CNN (``champion`` moves by the promotion rule); tag the run."""
    registry.register_baseline(
        base.model_uri, test_accuracy=base.metrics["test_accuracy"], run_id=base.run_id, data_digest=digest
    )
    if cnn.onnx_model_uri:  # first, so that the CNN run's promotion tags end up being the torch model's
        onnx = registry.register_model(
            cnn.onnx_model_uri,
            model_name=model_name + ONNX_SUFFIX,
            test_accuracy=cnn.metrics["test_accuracy"],
            number_exact_match=cnn.metrics.get("test_number_exact_match"),
            run_id=cnn.run_id,
            data_digest=digest,
            description=card,
        )
        log.info("registry: %s version %s -> %s", model_name + ONNX_SUFFIX, onnx.version, onnx.alias)
    promotion = registry.register_model(
        cnn.model_uri,
        model_name=model_name,
        test_accuracy=cnn.metrics["test_accuracy"],
        number_exact_match=cnn.metrics.get("test_number_exact_match"),
        run_id=cnn.run_id,
        data_digest=digest,
        description=card,
    )
    mlflow.set_tag("promotion", promotion.reason)
    log.info("registry: %s version %s -> %s (%s)", model_name, promotion.version, promotion.alias, promotion.reason)


# Rough training speeds (images per second) of the default CNN (width 16), for the plan's estimate: 2 CPU cores
# without bf16 (benchmarks/RESULTS.md, 3,400 in fp32) and one GPU. A wider network costs about width^2.
_IMAGES_PER_SECOND = {"cpu": 3000.0, "cuda": 30000.0}
_OVERHEAD_SECONDS = 120.0  # data, EDA, baseline, robustness corruptions, ONNX export and checks, registry
# The line reader's strips per second while it trains (2 CPU cores: ~225 measured in the pipeline; one GPU: the
# strip maker's pace), and its test reading, calibration and ONNX export.
_STRIPS_PER_SECOND = {"cpu": 225.0, "cuda": 750.0}
_READER_OVERHEAD_SECONDS = 40.0


def plan(config: TrainConfig, search: SearchConfig, n_images: int, reader: ReaderConfig | None = None) -> str:
    """What ``main`` will do and roughly how long it will take, in one line (said at the start of the run)."""
    from digits.learn.train import resolve_device
    from tuning.search import time_budget

    device = resolve_device(config.device).type
    speed = _IMAGES_PER_SECOND.get(device, _IMAGES_PER_SECOND["cpu"]) * (16 / config.width) ** 2
    final = config.epochs * n_images / speed
    steps = ["baseline", f"the final model: {config.epochs} epoch(s) on {n_images:,} images, calibrated"]
    search_seconds = 0.0
    if search.n_trials:
        budget = time_budget(search, config)
        # About half the trials are pruned after their first epoch.
        search_seconds = search.n_trials * search.trial_epochs * 0.75 * n_images / speed
        search_seconds = (
            min(search_seconds, budget + search.trial_epochs * n_images / speed) if budget else search_seconds
        )
        limit = f", no new trial after {budget / 60:.0f} min" if budget else ""
        steps.insert(1, f"a search of up to {search.n_trials} trials of {search.trial_epochs} epoch(s){limit}")
    reader_seconds = 0.0
    if reader is not None:
        strips = reader.reader_epochs * reader.reader_strips
        reader_seconds = strips / _STRIPS_PER_SECOND.get(device, _STRIPS_PER_SECOND["cpu"]) + _READER_OVERHEAD_SECONDS
        steps.insert(-1, f"the line reader: {reader.reader_epochs} epoch(s) of {reader.reader_strips:,} strips")
    total = (final + search_seconds + reader_seconds + _OVERHEAD_SECONDS) / 60
    return f"{'; '.join(steps)}; test evaluation, ONNX, registry: roughly {total:.0f} minutes on {device}"


def search_in_workers(study, config: TrainConfig, search: SearchConfig) -> TrainConfig:
    """The search in ``search.workers`` local processes under the active run; the study's best config.

    Each worker is a ``digits tune`` process with its share of the trials and of the cores, its ``search`` run a
    child of this run. This run gets the figures of the whole study and its best ``val_accuracy``.
    """
    from tuning import search as tuning_search
    from tuning import workers

    t0 = time.perf_counter()
    failed = workers.run_workers(config, search, mlflow.active_run().info.run_id)
    mlflow.log_metrics({"search_seconds": time.perf_counter() - t0, "search_workers_failed": float(failed)})
    best = tuning_search.best_config(study, config)
    if best is config and failed:
        raise DigitsError(
            f"no trial of study {search.study_name!r} completed ({failed} of {search.workers} workers failed): see their search runs"
        )
    tuning_search.log_figures(study, "search_figures")
    return best


def run_tune(config: TrainConfig, search: SearchConfig, parent_run_id: str = "") -> None:
    """The ``tune`` entry point: add ``search.n_trials`` trials to the study, nothing else.

    The same layout as ``main``'s: the entry point's run (under ``mlflow run``, the run it made) > search > trials.
    ``parent_run_id`` (a worker started by ``search_in_workers``): no ``tune`` run, the search run is that run's
    child. ``search.workers > 1``: the trials in that many local processes, under the ``tune`` run.
    """
    from tuning import search as tuning_search

    storage = tuning_search.connect(search)  # a bad storage URL: before the data is loaded
    mnist, split = load_data(config)
    study = tuning_search.open_search(config, search, mnist, storage)  # a mismatched study: before any run
    if parent_run_id:
        tuning_search.run_search(study, config, search, mnist, split, parent_run_id=parent_run_id)
        return
    with tracking.run("tune", tags={"pipeline_step": "tune"}):
        if search.workers > 1:
            search_in_workers(study, config, search)
        else:
            tuning_search.run_search(study, config, search, mnist, split)


def run_reader_entry(config: ReaderConfig) -> None:
    """The ``reader`` entry point: MNIST split as ``config`` says, then ``run_reader`` in its own top-level run."""
    mnist, split = load_data(config)
    with tempfile.TemporaryDirectory(prefix="digits-reader-") as workdir:  # the folders are logged; nothing to keep
        run_reader(config, mnist, split, nested=False, workdir=workdir)


def run_tune_reader(reader: ReaderConfig, search: SearchConfig) -> None:
    """``tune --target reader``: add ``search.n_trials`` reader trials to the study ``STUDY_NAME-reader``, in a run
    ``tune-reader`` (its trials are its children)."""
    from tuning import reader_search

    mnist, split = load_data(reader)
    with tracking.run("tune-reader", tags={"pipeline_step": "tune"}):
        tracking.log_new_params({**search.to_dict(), "storage": "(see the study)", **reader.to_dict()})
        reader_search.run_reader_search(reader, search, mnist, split)

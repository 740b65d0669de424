"""MLflow glue: experiment choice, parent and child runs, config params, datasets, the per-epoch logging callback.

Knows nothing of Optuna. The training loop never imports this module: it reports epochs to callbacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Iterator

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from digits.core.config import TrainConfig
from digits.core.interrupts import RunInterrupted
from digits.learn.data import DATASET_NAME, MNIST

DEFAULT_EXPERIMENT = "digits"


def use_default_experiment() -> None:
    """Log into the experiment ``digits`` unless MLflow was told otherwise (``mlflow run``, MLFLOW_EXPERIMENT_*)."""
    if not any(os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")):
        mlflow.set_experiment(DEFAULT_EXPERIMENT)


@contextlib.contextmanager
def run(
    name: str | None = None,
    *,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) a run; end it FINISHED, KILLED on Ctrl-C/SIGTERM, else FAILED.

    A top-level run resumes ``MLFLOW_RUN_ID`` when ``mlflow run`` set it, so that run becomes the parent.
    ``parent_run_id``: a child of that run, made in another process (a search worker under its pipeline's run).
    """
    if not nested:
        use_default_experiment()
    resuming = not nested and bool(os.environ.get("MLFLOW_RUN_ID"))
    active = mlflow.start_run(
        run_name=None if resuming else name, nested=nested, tags=tags, parent_run_id=parent_run_id
    )
    if resuming and name:
        mlflow.set_tag("mlflow.runName", name)  # mlflow run names its run at random; the UI should say what it is
    try:
        yield active
    except (KeyboardInterrupt, RunInterrupted):
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def model_run(
    name: str, *, nested: bool, model_family: str, pipeline_step: str, parent_run_id: str | None = None, **tags: str
):
    """A model's run (a child of the pipeline's run when ``nested``), with the tags the MLflow UI compares by."""
    return run(
        name,
        nested=nested,
        tags={"model_family": model_family, "pipeline_step": pipeline_step, **tags},
        parent_run_id=parent_run_id,
    )


def log_config(config: TrainConfig) -> None:
    """Log every config field as a param and the whole config, in canonical values, as ``config.json``."""
    log_new_params(config.to_dict())
    mlflow.log_dict(config.to_dict(), "config.json")


def log_new_params(params: dict) -> None:
    """Log the params the active run does not hold yet.

    ``mlflow run`` logs each ``-P`` value as typed (``lr=0.10``, ``epochs=10.0``, ``timeout=0``) into the run it
    makes; logging the same value in canonical spelling (``0.1``, ``10``, ``0.0``) into that run would raise
    "Changing param values is not allowed". The canonical values are in ``config.json``.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def epoch_logger(prefix: str = ""):
    """A ``fit`` callback that logs each epoch's metrics with ``step`` = epoch."""

    def callback(epoch: int, metrics: dict) -> None:
        mlflow.log_metrics({prefix + k: float(v) for k, v in metrics.items()}, step=epoch)

    return callback


def log_dataset(mnist: MNIST, part: str, indices: np.ndarray | None, context: str) -> None:
    """Log one part of MNIST (``train``/``test``, optionally the rows ``indices``) as a run input.

    The digest covers the file content and the rows chosen, so two runs share a digest exactly when they
    saw the same images.
    """
    images = getattr(mnist, f"{part}_images")
    labels = getattr(mnist, f"{part}_labels")
    if indices is not None:
        images, labels = images[indices], labels[indices]
    source_digest = mnist.digest  # MNIST's own, unless these rows include appended feedback images
    if mnist.base_digest and (
        part == "test" or (indices is not None and not (np.asarray(indices) >= mnist.extra_start).any())
    ):
        source_digest = mnist.base_digest
    digest = hashlib.sha256(source_digest.encode() + part.encode())
    if indices is not None:
        digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    with warnings.catch_warnings():
        # MLflow registers two equivalent local-file source classes and warns that a path matches both.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            images,
            targets=labels,
            source=mnist.source,
            name=f"{DATASET_NAME}-{context}",
            digest=digest.hexdigest()[:16],
        )
    _log_input(dataset, context)


def log_array_dataset(
    images: np.ndarray, labels: np.ndarray, *, source: str, name: str, digest: str, context: str
) -> None:
    """Log images and labels that are not MNIST's (a feedback export's part) as a run input named ``name``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(images, targets=labels, source=source, name=name, digest=digest[:16])
    _log_input(dataset, context)


def _log_input(dataset, context: str) -> None:
    for attempt in range(4):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            # Workers starting together on one tracking server log the same dataset at once; MLflow's store checks
            # for it, then inserts it, so all but one fail on the dataset's primary key. Again, it is found.
            if attempt == 3 or not any(k in str(exc) for k in ("dataset_pk", "UniqueViolation", "UNIQUE constraint")):
                raise
            time.sleep(0.2 * (attempt + 1))

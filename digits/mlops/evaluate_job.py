"""The ``digits evaluate`` job: any registered model, logged model or run checkpoint, evaluated on the test set and
logged as its own run, with the training curves read from the run that trained it."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from digits.core.errors import first_line
from digits.evaluate import metrics
from digits.evaluate.eda import log_eda_once
from digits.evaluate.evaluation import CURVE_KEYS, EvaluationError, log_test_evaluation
from digits.evaluate.number_eval import LENGTHS, cutting, log_number_evaluation, number_set, read_all
from digits.learn.data import MNIST
from digits.mlops import tracking

log = logging.getLogger(__name__)


def history_from_run(run_id: str) -> list[dict]:
    """The curves (``CURVE_KEYS``) that run ``run_id`` logged, as one dict per step (with ``step``), in order."""
    client = mlflow.MlflowClient()
    steps: dict[int, dict] = {}
    for key in CURVE_KEYS:
        for m in client.get_metric_history(run_id, key):
            steps.setdefault(m.step, {"step": m.step})[key] = m.value
    return [steps[s] for s in sorted(steps)]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to give test-set probabilities, and where it came from."""

    predict_proba: Callable[[np.ndarray], np.ndarray]  # uint8 images (N, 28, 28) -> (N, 10)
    family: str  # model_family tag: cnn or logreg
    kind: str  # how it was loaded: pyfunc, sklearn or checkpoint
    source_run_id: str | None
    # A picture of a number to (text, confidence) as the served model answers mode=number (its line reader, or
    # cutting); None: cut with predict_proba (a checkpoint, the baseline).
    read_number: Callable[[np.ndarray], tuple[str, float]] | None = None


def load_model(model_uri: str) -> LoadedModel:
    """Load ``model_uri`` for evaluation: an MLflow model (``models:/``, ``runs:/.../model``, a path) or a CNN checkpoint.

    An MLflow model with the sklearn flavour (the baseline) predicts on pixels / 255 with ``predict_proba``; any
    other is loaded as a pyfunc whose output has a ``probabilities`` column (the served CNN). ``runs:/<id>``
    and ``runs:/<id>/checkpoint`` (or a local folder) holding ``weights.pt`` and ``config.json`` load the CNN
    from its checkpoint. Raises ``EvaluationError`` with one line when none of these work.
    """
    checkpoint = _checkpoint_dir(model_uri)
    if checkpoint is not None:
        from digits.serve.model import load_checkpoint, predict_proba

        network, _ = load_checkpoint(checkpoint)
        return LoadedModel(lambda images: predict_proba(network, images), "cnn", "checkpoint", _run_id_of(model_uri))
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:  # MlflowException, OSError for a bad path, ValueError for a malformed URI
        raise EvaluationError(f"cannot load model {model_uri!r}: {first_line(exc)}") from None
    source = info.run_id or _run_id_of(model_uri)
    try:
        if "sklearn" in info.flavors:
            from digits.learn import baseline

            estimator = mlflow.sklearn.load_model(model_uri)
            return LoadedModel(
                lambda images: np.asarray(baseline.predict_proba(estimator, images)), "logreg", "sklearn", source
            )
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise EvaluationError(f"cannot load model {model_uri!r}: {first_line(exc)}") from None
    return LoadedModel(
        lambda images: _pyfunc_proba(pyfunc, images, model_uri),
        "cnn",
        "pyfunc",
        source,
        functools.partial(_pyfunc_number, pyfunc),
    )


def _pyfunc_number(pyfunc: Any, picture: np.ndarray) -> tuple[str, float]:
    """The served answer to one picture in mode number; a refusal (a 400 when served) is a ``DigitsError``."""
    import base64
    import io

    from PIL import Image

    from digits.serve.contract import INPUT_COLUMN, MODE_PARAM

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(buffer, format="PNG")  # as a client sends it
    text = base64.b64encode(buffer.getvalue()).decode("ascii")
    try:
        row = pyfunc.predict(pd.DataFrame({INPUT_COLUMN: [text]}), params={MODE_PARAM: "number"}).iloc[0]
    except MlflowException as exc:
        raise EvaluationError(first_line(exc)) from None
    return str(row["text"]), float(row["confidence"])


def evaluate_model(
    model_uri: str,
    mnist: MNIST,
    *,
    model: LoadedModel | None = None,
    log_eda: bool = True,
    robust_size: int | None = None,
) -> dict[str, float]:
    """The ``digits evaluate`` job: evaluate ``model_uri`` on the test set and log it all as an evaluation run.

    The run (name ``evaluate-<family>``, tags ``model_family``, ``pipeline_step=evaluate``, ``evaluated_model_uri``,
    ``source_run_id``) holds what a training run holds after its test evaluation, with the training curves
    read from the source run. Returns the metrics; logs whether the test accuracy matches the source run's.
    ``model``: ``load_model(model_uri)`` when the caller has already loaded it. ``robust_size``: test digits
    corrupted for the robustness evaluation (the flag; None: ``robustness.DEFAULT_SIZE``).
    """
    model = model or load_model(model_uri)
    proba = model.predict_proba(mnist.test_images)
    if proba.shape != (len(mnist.test_images), metrics.N_CLASSES):
        raise EvaluationError(
            f"model {model_uri!r} gave probabilities of shape {proba.shape}, expected ({len(mnist.test_images)}, 10)"
        )
    source = _source_run(model.source_run_id)
    family = (source.data.tags.get("model_family") if source else None) or model.family
    tags = {"evaluated_model_uri": model_uri, "model_loaded_as": model.kind, "data_digest": mnist.digest}
    if source:
        tags["source_run_id"] = source.info.run_id
    name = f"evaluate-{family}"
    with tracking.model_run(name, nested=False, model_family=family, pipeline_step="evaluate", **tags) as active:
        if active.info.run_name != name:  # under `mlflow run` the run was created with a random name
            mlflow.set_tag("mlflow.runName", name)
        tracking.log_dataset(mnist, "test", None, "testing")
        history = history_from_run(source.info.run_id) if source else []  # the curves of the run that trained it
        values = log_test_evaluation(
            mnist.test_labels,
            proba,
            images=mnist.test_images,
            history=history,
            family=family,
            predict=model.predict_proba,
            robust_size=robust_size,
        )
        if log_eda:
            log_eda_once(mnist)
        _log_match(model_uri, values, source, len(mnist.test_labels))
    return values


def _log_match(model_uri: str, values: dict[str, float], source, n: int) -> None:
    """Say whether the test accuracy is the source run's (``source_test_accuracy`` logged when there is one)."""
    reported = source.data.metrics.get("test_accuracy") if source else None
    correct = n - int(values["test_errors"])
    accuracy = f"{model_uri}: test accuracy {100 * values['test_accuracy']:.2f}% ({correct} of {n})"
    if reported is None:
        log.info("%s; no source run accuracy to compare with", accuracy)
        return
    if round(reported * n) == correct:
        log.info("%s, the same as source run %s", accuracy, source.info.run_id)
    else:
        log.warning(
            "%s differs from the %.2f%% of source run %s (other data or preprocessing?)",
            accuracy,
            100 * reported,
            source.info.run_id,
        )
    mlflow.log_metric("source_test_accuracy", reported)


def _pyfunc_proba(model: mlflow.pyfunc.PyFuncModel, images: np.ndarray, model_uri: str) -> np.ndarray:
    import pandas as pd

    from digits.serve.model import MAX_BATCH  # what the served model accepts per request

    out = []
    for start in range(0, len(images), MAX_BATCH):
        # One row per image in the `image` column, as pixel values: the served model takes them as they are.
        batch = pd.DataFrame({"image": list(images[start : start + MAX_BATCH])})
        try:
            result = model.predict(batch)
        except Exception as exc:
            raise EvaluationError(f"model {model_uri!r} failed to predict: {first_line(exc)}") from None
        if not isinstance(result, pd.DataFrame) or "probabilities" not in result.columns:
            raise EvaluationError(f"model {model_uri!r} does not answer a 'probabilities' column: not a digits model")
        # float32, what the network computed: the served output widened it to float64, which is exact both ways,
        # so every metric comes out as the training run logged it.
        out.append(np.asarray(result["probabilities"].tolist(), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, metrics.N_CLASSES), dtype=np.float32)


def _checkpoint_dir(model_uri: str) -> Path | None:
    """The local folder with weights.pt + config.json that ``model_uri`` names, downloading a run's; else None."""
    from digits.serve.model import CONFIG_FILE, WEIGHTS_FILE

    def holds(folder: Path) -> bool:
        return (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()

    local = Path(model_uri).expanduser()
    if "://" not in model_uri and ":/" not in model_uri and local.is_dir():
        return local if holds(local) else None
    run_id = _run_id_of(model_uri)
    if run_id is None:
        return None
    path = model_uri[len("runs:/") :].strip("/").partition("/")[2]
    if path not in ("", "checkpoint"):
        return None
    try:
        with quiet_downloads():
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint"))
    except Exception:  # no such run or no checkpoint: let the MLflow-model path report it
        return None
    return folder if holds(folder) else None


def _run_id_of(model_uri: str) -> str | None:
    if not model_uri.startswith("runs:/"):
        return None
    run_id = model_uri[len("runs:/") :].strip("/").partition("/")[0]
    return run_id or None


def _source_run(run_id: str | None) -> mlflow.entities.Run | None:
    if not run_id:
        return None
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException:  # a model whose source run was deleted or lives in another store
        return None


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars inside: a few small files do not need them on the console."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # read by MLflow at each download
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def evaluate_numbers(
    model_uri: str, images: np.ndarray, labels: np.ndarray, size: int, seed: int = 0
) -> dict[str, float]:
    """The ``digits evaluate --number`` job: ``size`` numbers per (length, spacing, renderer) in a run ``evaluate-numbers``."""
    model = load_model(model_uri)
    samples = number_set(images, labels, size, seed)
    readings = read_all(samples, model.read_number or cutting(model.predict_proba))
    with tracking.model_run(
        "evaluate-numbers",
        nested=False,
        model_family=model.family,
        pipeline_step="evaluate",
        evaluated_model_uri=model_uri,
    ) as active:
        if active.info.run_name != "evaluate-numbers":
            mlflow.set_tag("mlflow.runName", "evaluate-numbers")
        mlflow.log_params(
            {"number_set_size": size, "number_set_seed": seed, "number_lengths": f"{LENGTHS[0]}-{LENGTHS[-1]}"}
        )
        values = log_number_evaluation(samples, readings)
    log.info(
        "%s: %d numbers, exact match %.1f%%, digit accuracy %.1f%%",
        model_uri,
        len(samples),
        100 * values["number_exact_match"],
        100 * values["number_digit_accuracy"],
    )
    return values

"""Evaluate a model on the test set and log the result to MLflow: metrics, tables and figures, the same for every model.

What a model's run holds (the keys and paths are the same for the baseline, the CNN and ``digits evaluate``):

- metrics ``test_<name>`` for every name of ``metrics.METRIC_NAMES``, and ``test_errors`` (misclassified images);
- ``evaluation/per_class.csv``, ``evaluation/top_confusions.csv``, ``evaluation/reliability_bins.csv``;
- ``evaluation/*.png``: the confusion matrix (counts and row-normalised), ROC curves, the reliability diagram,
  the misclassified test images and the training curves (see ``FIGURES``).

The exploratory figures of the training data (``eda/*.png``) are logged once per data digest (``log_eda_once``).
``evaluate_model`` is the ``digits evaluate`` job: any registered model, logged model or run checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from digits import metrics, plots, robustness
from digits.data import MNIST
from digits.errors import DigitsError, first_line

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
EDA_DIR = "eda"
FIGURES = (
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "roc.png",
    "reliability.png",
    "misclassified.png",
    "training_curves.png",
)
TABLES = ("per_class.csv", "top_confusions.csv", "reliability_bins.csv")
EDA_FIGURES = ("class_distribution.png", "pixel_histogram.png", "mean_images.png", "embedding_pca.png", "embedding_tsne.png")
# Set on the run that holds the EDA figures, once they are all logged: a run with these tags has all of them.
EDA_DIGEST_TAG = "eda_data_digest"
EDA_VERSION_TAG = "eda_version"
EDA_VERSION = "1"  # bump when the EDA figures change, so the next pipeline run logs the new ones
# Set on every pipeline (and evaluation) run: the run whose eda/ folder shows this run's data.
EDA_RUN_TAG = "eda_run_id"
TSNE_SAMPLE = 2000  # t-SNE costs ~O(n log n) with a large constant: 2,000 points take ~10 s on 2 CPU cores
PCA_SAMPLE = 5000
# The metric keys of the epoch curves, shared by the CNN's epoch logger and the baseline's blocks.
_MODEL_LABELS = {"cnn": "CNN", "logreg": "logistic regression"}
CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


class EvaluationError(DigitsError):
    """A model cannot be loaded or evaluated; one line for the user."""


def log_test_evaluation(
    y_true: np.ndarray,
    proba: np.ndarray,
    prefix: str = "test_",
    *,
    images: np.ndarray | None = None,
    history: list[dict] | None = None,
    family: str = "cnn",
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    reference: tuple[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Log the test metrics, tables and figures of ``proba`` into the active run; return the metrics, prefixed.

    ``images`` (the test images) are needed for the grid of misclassified digits, ``history`` (one dict per
    epoch, as ``train.fit`` returns) for the training curves; without them those figures are left out.
    ``family`` (``cnn`` or ``logreg``) says how to read the curves: epochs, or blocks of lbfgs iterations.
    ``predict`` (uint8 images -> probabilities) adds the robustness evaluation (``digits.robustness``; needs
    ``images``), drawn beside ``reference`` (a name and its metrics) when given; its metrics are returned unprefixed.
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba)
    values = {prefix + k: float(v) for k, v in metrics.classification_metrics(y_true, proba).items()}
    y_pred = proba.argmax(axis=1)
    values[prefix + "errors"] = float(np.sum(y_pred != y_true))  # "the same accuracy to the last image"
    mlflow.log_metrics(values)

    reliability = metrics.reliability_bins(y_true, proba)
    tables = {
        "per_class.csv": metrics.per_class_report(y_true, proba),
        "top_confusions.csv": metrics.top_confusions(y_true, y_pred, k=10),
        "reliability_bins.csv": reliability.to_frame(),
    }
    figures: dict[str, Callable] = {
        "confusion_matrix.png": lambda: plots.confusion_matrix_figure(y_true, y_pred, normalize=False),
        "confusion_matrix_normalized.png": lambda: plots.confusion_matrix_figure(y_true, y_pred, normalize=True),
        "roc.png": lambda: plots.roc_figure(y_true, proba),
        "reliability.png": lambda: plots.reliability_figure(y_true, proba),
    }
    if images is not None:
        figures["misclassified.png"] = lambda: plots.misclassified_figure(images, y_true, proba)
    if history:
        x_label, note = curve_labels(family, history)
        figures["training_curves.png"] = lambda: plots.training_curves_figure(history, x_label=x_label, note=note)
    with tempfile.TemporaryDirectory(prefix="digits-eval-") as tmp:
        for name, frame in tables.items():
            frame.to_csv(Path(tmp) / name, index=False)
        for name, build in figures.items():
            (Path(tmp) / name).write_bytes(plots.figure_to_png(build()))
        mlflow.log_artifacts(tmp, EVALUATION_DIR)
    if predict is not None and images is not None:
        values.update(robustness.log_robustness(predict, images, y_true, label=_MODEL_LABELS.get(family, family), reference=reference))
    return values


def curve_labels(family: str, history: list[dict]) -> tuple[str, str]:
    """The x-axis label and the caption of a training-curves figure: what the points and the series mean."""
    has_val = any("val_loss" in h or "val_accuracy" in h for h in history)
    if family == "logreg":
        x_label = "lbfgs iterations (each one pass over the training images)"
        note = "logistic regression, evaluated every 10 iterations until it converged; loss = cross-entropy without the L2 penalty"
    else:
        x_label = "epoch"
        # The train_* numbers are measured while learning, on augmented images with label smoothing: they sit
        # below the validation accuracy, which readers otherwise take for a bug.
        note = "train_*: mean over the epoch's augmented batches (loss with label smoothing)"
        note += "; val_*: after the epoch, plain images" if has_val else ""
    if not has_val:
        note += "\nno validation curves: this model trained on the training and validation images together"
    return x_label, note


def log_eda_once(mnist: MNIST, *, tsne_sample: int | None = None) -> str:
    """Make sure the exploratory figures of ``mnist``'s training images exist once for its digest; return their run.

    If a run of the active run's experiment already holds them (tags ``eda_data_digest`` = ``mnist.digest`` and
    ``eda_version``), nothing is drawn; otherwise they are logged into the active run under ``eda/``. Either
    way the active run gets the tag ``eda_run_id`` naming the run whose ``eda/`` folder shows its data.
    ``tsne_sample``: images in the t-SNE (default ``TSNE_SAMPLE``).
    """
    tsne_sample = TSNE_SAMPLE if tsne_sample is None else tsne_sample
    active = mlflow.active_run()
    if active is None:
        raise EvaluationError("log_eda_once needs an active MLflow run")
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [active.info.experiment_id],
        filter_string=f"tags.{EDA_DIGEST_TAG} = '{mnist.digest}' and tags.{EDA_VERSION_TAG} = '{EDA_VERSION}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        log.info("EDA figures of data %s: already in run %s, not drawn again", mnist.digest, run_id)
    else:
        images, labels = mnist.train_images, mnist.train_labels
        figures = {
            "class_distribution.png": lambda: plots.class_distribution_figure(labels),
            "pixel_histogram.png": lambda: plots.pixel_histogram_figure(images),
            "mean_images.png": lambda: plots.mean_images_figure(images, labels),
            "embedding_pca.png": lambda: plots.embedding_figure(images, labels, method="pca", sample=PCA_SAMPLE),
            "embedding_tsne.png": lambda: plots.embedding_figure(images, labels, method="tsne", sample=tsne_sample),
        }
        with tempfile.TemporaryDirectory(prefix="digits-eda-") as tmp:
            for name, build in figures.items():
                (Path(tmp) / name).write_bytes(plots.figure_to_png(build()))
            mlflow.log_artifacts(tmp, EDA_DIR)
        run_id = active.info.run_id
        # Only now: a run carrying these tags is guaranteed to hold every figure.
        mlflow.set_tags({EDA_DIGEST_TAG: mnist.digest, EDA_VERSION_TAG: EDA_VERSION})
        log.info("EDA figures of data %s logged into run %s", mnist.digest, run_id)
    mlflow.set_tag(EDA_RUN_TAG, run_id)
    return run_id


def history_from_run(run_id: str) -> list[dict]:
    """The curves (``CURVE_KEYS``) that run ``run_id`` logged, as one dict per step (with ``step``), in order."""
    client = mlflow.MlflowClient()
    steps: dict[int, dict] = {}
    for key in CURVE_KEYS:
        for m in client.get_metric_history(run_id, key):
            steps.setdefault(m.step, {"step": m.step})[key] = m.value
    return [steps[s] for s in sorted(steps)]


# --- digits evaluate ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to give test-set probabilities, and where it came from."""

    predict_proba: Callable[[np.ndarray], np.ndarray]  # uint8 images (N, 28, 28) -> (N, 10)
    family: str  # model_family tag: cnn or logreg
    kind: str  # how it was loaded: pyfunc, sklearn or checkpoint
    source_run_id: str | None


def load_model(model_uri: str) -> LoadedModel:
    """Load ``model_uri`` for evaluation: an MLflow model (``models:/``, ``runs:/.../model``, a path) or a CNN checkpoint.

    An MLflow model with the sklearn flavour (the baseline) predicts on pixels / 255 with ``predict_proba``; any
    other is loaded as a pyfunc whose output has a ``probabilities`` column (the served CNN). ``runs:/<id>``
    and ``runs:/<id>/checkpoint`` (or a local folder) holding ``weights.pt`` and ``config.json`` load the CNN
    from its checkpoint. Raises ``EvaluationError`` with one line when none of these work.
    """
    checkpoint = _checkpoint_dir(model_uri)
    if checkpoint is not None:
        from digits.model import load_checkpoint, predict_proba

        network, _ = load_checkpoint(checkpoint)
        return LoadedModel(lambda images: predict_proba(network, images), "cnn", "checkpoint", _run_id_of(model_uri))
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:  # MlflowException, OSError for a bad path, ValueError for a malformed URI
        raise EvaluationError(f"cannot load model {model_uri!r}: {first_line(exc)}") from None
    source = info.run_id or _run_id_of(model_uri)
    try:
        if "sklearn" in info.flavors:
            from digits import baseline

            estimator = mlflow.sklearn.load_model(model_uri)
            return LoadedModel(lambda images: np.asarray(baseline.predict_proba(estimator, images)), "logreg", "sklearn", source)
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise EvaluationError(f"cannot load model {model_uri!r}: {first_line(exc)}") from None
    return LoadedModel(lambda images: _pyfunc_proba(pyfunc, images, model_uri), "cnn", "pyfunc", source)


def evaluate_model(model_uri: str, mnist: MNIST, *, model: LoadedModel | None = None, log_eda: bool = True) -> dict[str, float]:
    """The ``digits evaluate`` job: evaluate ``model_uri`` on the test set and log it all as an evaluation run.

    The run (name ``evaluate-<family>``, tags ``model_family``, ``pipeline_step=evaluate``, ``evaluated_model_uri``,
    ``source_run_id``) holds what a training run holds after its test evaluation, with the training curves
    read from the source run. Returns the metrics; logs whether the test accuracy matches the source run's.
    ``model``: ``load_model(model_uri)`` when the caller has already loaded it.
    """
    from digits import tracking

    model = model or load_model(model_uri)
    proba = model.predict_proba(mnist.test_images)
    if proba.shape != (len(mnist.test_images), metrics.N_CLASSES):
        raise EvaluationError(f"model {model_uri!r} gave probabilities of shape {proba.shape}, expected ({len(mnist.test_images)}, 10)")
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
        values = log_test_evaluation(mnist.test_labels, proba, images=mnist.test_images, history=history, family=family, predict=model.predict_proba)
        if log_eda:
            log_eda_once(mnist)
        reported = source.data.metrics.get("test_accuracy") if source else None
        n = len(mnist.test_labels)
        correct = n - int(values["test_errors"])
        if reported is None:
            log.info("%s: test accuracy %.2f%% (%d of %d); no source run accuracy to compare with", model_uri, 100 * values["test_accuracy"], correct, n)
        elif round(reported * n) == correct:
            log.info("%s: test accuracy %.2f%% (%d of %d), the same as source run %s", model_uri, 100 * values["test_accuracy"], correct, n, source.info.run_id)
        else:
            log.warning("%s: test accuracy %.2f%% (%d of %d) differs from the %.2f%% of source run %s (other data or preprocessing?)",
                        model_uri, 100 * values["test_accuracy"], correct, n, 100 * reported, source.info.run_id)
        if reported is not None:
            mlflow.log_metric("source_test_accuracy", reported)
    return values


def _pyfunc_proba(model: "mlflow.pyfunc.PyFuncModel", images: np.ndarray, model_uri: str) -> np.ndarray:
    import pandas as pd

    from digits.model import MAX_BATCH  # what the served model accepts per request

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
    from digits.model import CONFIG_FILE, WEIGHTS_FILE

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


def _source_run(run_id: str | None) -> "mlflow.entities.Run | None":
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

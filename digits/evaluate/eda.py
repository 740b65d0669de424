"""The exploratory figures of the training data (``eda/*.png``), logged once per data digest (``log_eda_once``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow

from digits.evaluate import eda_plots, plots
from digits.evaluate.evaluation import EvaluationError
from digits.learn.data import MNIST

log = logging.getLogger(__name__)

EDA_DIR = "eda"
EDA_FIGURES = (
    "class_distribution.png",
    "pixel_histogram.png",
    "mean_images.png",
    "embedding_pca.png",
    "embedding_tsne.png",
)
EDA_DIGEST_TAG = "eda_data_digest"
EDA_VERSION_TAG = "eda_version"
EDA_VERSION = "1"  # bump when the EDA figures change, so the next pipeline run logs the new ones
EDA_RUN_TAG = "eda_run_id"
TSNE_SAMPLE = 2000  # t-SNE costs ~O(n log n) with a large constant: 2,000 points take ~10 s on 2 CPU cores
PCA_SAMPLE = 5000


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
            "class_distribution.png": lambda: eda_plots.class_distribution_figure(labels),
            "pixel_histogram.png": lambda: eda_plots.pixel_histogram_figure(images),
            "mean_images.png": lambda: eda_plots.mean_images_figure(images, labels),
            "embedding_pca.png": lambda: eda_plots.embedding_figure(images, labels, method="pca", sample=PCA_SAMPLE),
            "embedding_tsne.png": lambda: eda_plots.embedding_figure(images, labels, method="tsne", sample=tsne_sample),
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

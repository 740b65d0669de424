"""Training on feedback (``--extra_data``): an export's images join MNIST's training split, a held-out part scores.

The export is split by image digest (``feedback.split_by_digest``, seeded by ``seed``): 80% of its distinct images
are appended to the training images (so the training set's logged digest and count change, and so does the data
digest an Optuna study is tied to), 20% are never trained on and give ``feedback_accuracy``. MNIST's validation
and test images are untouched: the promotion rule still compares models on the MNIST test set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from pathlib import Path

import mlflow
import numpy as np

from digits.core.config import TrainConfig
from digits.feedback import store as feedback
from digits.learn.data import MNIST, Split
from digits.mlops import tracking

log = logging.getLogger(__name__)


def parts(path: str, seed: int) -> tuple[feedback.Export, np.ndarray]:
    """The verified export at ``path`` and its held-out mask: read and verified once per process and file version
    (``with_extra_data`` and ``log_feedback_evaluation`` of one run share it)."""
    file = Path(path).expanduser()
    stat = file.stat() if file.is_file() else None
    return _parts(path, seed, (stat.st_mtime_ns, stat.st_size) if stat else None)


@functools.lru_cache(maxsize=4)
def _parts(path: str, seed: int, version: tuple[int, int] | None) -> tuple[feedback.Export, np.ndarray]:
    export = feedback.load_export(path)
    return export, feedback.split_by_digest(export.images, seed)


def with_extra_data(mnist: MNIST, split: Split, path: str, seed: int) -> tuple[MNIST, Split]:
    """``mnist`` with the training part of the export at ``path`` appended to its training images, and ``split``
    with their indices added to its training part; unchanged when ``path`` is empty."""
    if not path:
        return mnist, split
    export, held = parts(path, seed)
    images, labels = export.images[~held], export.labels[~held]
    digest = hashlib.sha256(f"{mnist.digest}+{feedback.content_version(images, labels)}".encode()).hexdigest()[:16]
    merged = dataclasses.replace(
        mnist,
        train_images=np.concatenate([mnist.train_images, images]),
        train_labels=np.concatenate([mnist.train_labels, labels]),
        digest=digest,
        base_digest=mnist.base_digest or mnist.digest,
        extra_start=len(mnist.train_labels),
    )
    added = np.arange(len(mnist.train_labels), len(merged.train_labels))
    log.info(
        "extra data %s (version %s): %d images join the training split, %d held out for feedback_accuracy",
        export.path,
        export.manifest.get("version"),
        len(labels),
        int(held.sum()),
    )
    return merged, Split(train=np.concatenate([split.train, added]), val=split.val)


def log_feedback_evaluation(config: TrainConfig, predict_proba) -> dict[str, float]:
    """Into the active run: the export's two parts as dataset inputs, and ``feedback_accuracy`` of
    ``predict_proba`` (uint8 images -> probabilities) on the held-out part. Nothing without ``extra_data``."""
    if not config.extra_data:
        return {}
    export, held = parts(config.extra_data, config.seed)
    version = str(export.manifest.get("version", ""))
    for mask, context in ((~held, "feedback-training"), (held, "feedback-evaluation")):
        images, labels = export.images[mask], export.labels[mask]
        digest = hashlib.sha256(f"{version}:{context}:{feedback.content_version(images, labels)}".encode()).hexdigest()
        tracking.log_array_dataset(
            images, labels, source=export.path, name=f"feedback-{version}", digest=digest, context=context
        )
    values = {"feedback_train_images": float((~held).sum()), "feedback_heldout_images": float(held.sum())}
    if held.any():
        predicted = np.asarray(predict_proba(export.images[held])).argmax(axis=1)
        values["feedback_accuracy"] = float((predicted == export.labels[held]).mean())
    mlflow.log_metrics(values)
    mlflow.set_tag("feedback_version", version)
    return values

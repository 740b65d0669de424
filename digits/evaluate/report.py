"""The model card: a Markdown summary of the final CNN next to the baseline, for its run and its registered version.

``model_card`` is a pure function of numbers and tables: the prose is the template ``templates/model_card.md``,
filled from the dict of ``card_fields``. ``log_model_card`` gathers the numbers from the pipeline's outcomes
and the CNN run's logged confusions, and logs the card.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import numpy as np
import pandas as pd

from digits.core.config import TrainConfig
from digits.evaluate import robustness
from digits.learn.data import MNIST, Split

CARD_FILE = "model_card.md"
CARD_TEMPLATE = "model_card.md"  # in digits/templates/, filled by model_card

# (metric, label, how to print it, which direction is better)
_ROWS = (
    ("accuracy", "accuracy", "pct", "higher"),
    ("errors", "misclassified test images", "int", "lower"),
    ("macro_precision", "macro precision", "pct", "higher"),
    ("macro_recall", "macro recall", "pct", "higher"),
    ("macro_f1", "macro F1", "pct", "higher"),
    ("roc_auc", "ROC AUC (one-vs-rest, macro)", "4f", "higher"),
    ("log_loss", "log loss", "4f", "lower"),
    ("brier", "Brier score (sum over the 10 classes)", "4f", "lower"),
    ("rmse", "RMSE of the probabilities", "4f", "lower"),
    ("ece", "expected calibration error (15 bins)", "4f", "lower"),
)


# The sentence under the table of the CNN's confusions (at most five rows) starts with the right count.
_THESE_PAIRS = {
    1: "This pair is",
    2: "These two pairs are",
    3: "These three pairs are",
    4: "These four pairs are",
    5: "These five pairs are",
}


class Outcome(Protocol):
    """What the card needs of a model's run (``pipeline.ModelOutcome`` is one)."""

    run_id: str
    metrics: dict[str, float]
    confusions: pd.DataFrame  # metrics.top_confusions of its test predictions, kept in memory (not downloaded back)


@dataclass(frozen=True)
class DataSummary:
    """Where the data came from and how it was split, for the card."""

    source: str
    digest: str
    train: int  # images of the training split (after subset)
    val: int  # validation images
    test: int
    subset: int
    seed: int
    final_train: int  # images the final CNN trained on (training + validation)


def data_summary(mnist: MNIST, split: Split, config: TrainConfig) -> DataSummary:
    """The card's data section from the loaded MNIST and its split."""
    return DataSummary(
        source=mnist.source,
        digest=mnist.digest,
        train=len(split.train),
        val=len(split.val),
        test=len(mnist.test_labels),
        subset=config.subset,
        seed=config.seed,
        final_train=len(split.train) + len(split.val),
    )


def _fmt(value: float | None, how: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if how == "pct":
        return f"{value:.2%}"
    if how == "int":
        return f"{int(round(value)):,}"
    return f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(**arguments: Any) -> str:
    """The Markdown model card: ``templates/model_card.md`` filled from ``card_fields(**arguments)``."""
    return card_template().substitute(card_fields(**arguments))


def card_template() -> string.Template:
    """The card's prose, ``digits/templates/model_card.md`` (package data; the served model does not need it)."""
    return string.Template(
        resources.files("digits.evaluate").joinpath("templates").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")
    )


def card_fields(
    *,
    model_name: str,
    config: TrainConfig,
    data: DataSummary,
    baseline: Mapping[str, float],
    cnn: Mapping[str, float],
    confusions: pd.DataFrame,
    test_support: Mapping[int, int],
    runs: Mapping[str, str],
    selection: str,
    baseline_confusions: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Every value the card's template names, as text.

    ``baseline`` and ``cnn``: test metrics with the ``test_`` prefix; ``confusions``: the CNN's top confusions
    (true, predicted, count); ``test_support``: test images per digit; ``runs``: label -> run id;
    ``selection``: how the configuration was chosen, one sentence.
    """
    metric_rows = [
        [label, better, _fmt(baseline.get("test_" + key), how), _fmt(cnn.get("test_" + key), how)]
        for key, label, how, better in _ROWS
    ]
    return {
        "model_name": model_name,
        "cnn_accuracy": _fmt(cnn.get("test_accuracy", float("nan")), "pct"),
        "baseline_accuracy": _fmt(baseline.get("test_accuracy", float("nan")), "pct"),
        "cnn_ece": _fmt(cnn.get("test_ece"), "4f"),
        "test_images": f"{data.test:,}",
        "val_images": f"{data.val:,}",
        "train_images": f"{data.train:,}",
        "final_train_images": f"{data.final_train:,}",
        "subset_note": f" (subset={data.subset:,} of a stratified order)" if data.subset else "",
        "source": data.source,
        "digest": data.digest,
        "seed": str(data.seed),
        "selection": selection,
        "config_table": _table(
            ["parameter", "value"], [[k, f"`{v}`"] for k, v in config.to_dict().items() if k != "data_dir"]
        ),
        "metrics_table": _table(["metric", "better", "baseline (logistic regression)", "CNN"], metric_rows),
        "confusions": _confusions_text(
            confusions, test_support, cnn.get("test_errors", float("nan")), baseline_confusions
        ),
        "robustness": robustness.card_section(dict(baseline), dict(cnn)),
        "runs_table": _table(["what", "MLflow run id"], [[k, f"`{v}`"] for k, v in runs.items()]),
        "feedback": feedback_text(config, cnn),
    }


def feedback_text(config: TrainConfig, cnn: Mapping[str, float]) -> str:
    """The card's feedback section: the export trained on and the accuracy on its held-out images, or none."""
    if not getattr(config, "extra_data", ""):
        return "None: trained on MNIST alone (`extra_data` empty)."
    trained, held = int(cnn.get("feedback_train_images", 0)), int(cnn.get("feedback_heldout_images", 0))
    score = (
        f"accuracy on those {held:,} held-out feedback images (`feedback_accuracy`): **{_fmt(cnn['feedback_accuracy'], 'pct')}**"
        if "feedback_accuracy" in cnn
        else "no feedback image was held out, so there is no `feedback_accuracy`"
    )
    return (
        f"From the export `{config.extra_data}`: {trained:,} images joined the training split and {held:,} "
        f"(a seeded 20% by image digest) were never trained on; {score}. The promotion rule still compares "
        "models on the MNIST test set alone."
    )


def _confusions_text(
    confusions: pd.DataFrame, test_support: Mapping[int, int], errors: float, baseline_confusions: pd.DataFrame | None
) -> str:
    # The CNN's five most frequent confusions with their share of the true digit's test images, then the
    # baseline's three, for comparison.
    if confusions.empty:
        lines = ["No misclassified test images."]
    else:
        rows = []
        for r in confusions.head(5).itertuples(index=False):
            support = int(test_support.get(int(r.true), 0))
            share = f"{r.count / support:.2%}" if support else "n/a"
            rows.append([f"{r.true} → {r.predicted}", f"{int(r.count):,}", share])
        lines = [_table(["true → predicted", "test images", "share of the true digit's test images"], rows)]
        total = None if math.isnan(errors) else int(round(errors))
        if total:
            top = int(confusions.head(5)["count"].sum())
            these = _THESE_PAIRS[len(rows)]
            lines += [
                "",
                f"{these} {top:,} of the {total:,} mistakes; the full matrix is the run's `evaluation/confusion_matrix.png`.",
            ]
    if baseline_confusions is not None and not baseline_confusions.empty:
        pairs = ", ".join(
            f"{r.true} → {r.predicted} ({int(r.count)})" for r in baseline_confusions.head(3).itertuples(index=False)
        )
        lines += ["", f"The baseline's most frequent confusions, for comparison: {pairs}."]
    return "\n".join(lines)


def log_model_card(
    mnist: MNIST,
    split: Split,
    config: TrainConfig,
    baseline: Outcome,
    cnn: Outcome,
    *,
    model_name: str,
    n_trials: int,
) -> str:
    """Write the model card of the final CNN ``cnn`` and log it as ``model_card.md`` into its run and the active run.

    Returns the Markdown, for the registered version's description.
    """
    import mlflow

    active = mlflow.active_run()
    runs: dict[str, Any] = {"final CNN": cnn.run_id, "baseline": baseline.run_id}
    if active is not None:
        runs["pipeline (parent)"] = active.info.run_id
    selection = (
        f"Chosen by the Optuna search ({n_trials} trials added in this run, on validation accuracy), then retrained."
        if n_trials
        else "Given on the command line (no search in this run)."
    )
    card = model_card(
        model_name=model_name,
        config=config,
        data=data_summary(mnist, split, config),
        baseline=baseline.metrics,
        cnn=cnn.metrics,
        confusions=cnn.confusions,
        baseline_confusions=baseline.confusions,
        test_support=dict(enumerate(np.bincount(mnist.test_labels, minlength=10).tolist())),
        runs=runs,
        selection=selection,
    )
    mlflow.MlflowClient().log_text(cnn.run_id, card, CARD_FILE)
    if active is not None and active.info.run_id != cnn.run_id:
        mlflow.log_text(card, CARD_FILE)
    return card

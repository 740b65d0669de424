"""The model card: a Markdown summary of the final CNN next to the baseline, for its run and its registered version.

``model_card`` is a pure function of numbers and tables; ``log_model_card`` gathers them from the pipeline's
outcomes and the CNN run's logged confusions, and logs the card.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import pandas as pd

from digits.config import TrainConfig
from digits.data import MNIST, Split

CARD_FILE = "model_card.md"

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


class Outcome(Protocol):
    """What the card needs of a model's run (``pipeline.ModelOutcome`` is one)."""

    run_id: str
    metrics: dict[str, float]


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
        source=mnist.source, digest=mnist.digest, train=len(split.train), val=len(split.val), test=len(mnist.test_labels),
        subset=config.subset, seed=config.seed, final_train=len(split.train) + len(split.val),
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


def model_card(
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
) -> str:
    """The Markdown model card.

    ``baseline`` and ``cnn``: test metrics with the ``test_`` prefix; ``confusions``: the CNN's top confusions
    (true, predicted, count); ``test_support``: test images per digit; ``runs``: label -> run id;
    ``selection``: how the configuration was chosen, one sentence.
    """
    acc_cnn, acc_base = cnn.get("test_accuracy", float("nan")), baseline.get("test_accuracy", float("nan"))
    lines = [
        f"# Model card: {model_name}",
        "",
        f"A convolutional network that reads one handwritten digit (0-9) from a 28x28 greyscale image. Test accuracy "
        f"**{_fmt(acc_cnn, 'pct')}** on the {data.test:,} MNIST test images, against {_fmt(acc_base, 'pct')} for the "
        "logistic-regression baseline.",
        "",
        "## Data and split",
        "",
        f"- MNIST (LeCun, Cortes, Burges): 60,000 training and {data.test:,} test images of 28x28 grey levels, "
        f"read from `{data.source}` (content digest `{data.digest}`).",
        f"- Validation: {data.val:,} images held out of the training images, stratified, seed {data.seed}; "
        f"training split: {data.train:,} images" + (f" (subset={data.subset:,} of a stratified order)." if data.subset else "."),
        f"- The baseline trained on the training split; the final CNN on the training and validation images together "
        f"({data.final_train:,}), once its configuration had been chosen on validation.",
        f"- The {data.test:,} test images were used for this evaluation only: never for tuning, early stopping or selection.",
        "",
        "## Training configuration",
        "",
        selection,
        "",
        _table(["parameter", "value"], [[k, f"`{v}`"] for k, v in config.to_dict().items() if k != "data_dir"]),
        "",
        "## Test metrics: baseline vs CNN",
        "",
        _table(
            ["metric", "better", "baseline (logistic regression)", "CNN"],
            [[label, better, _fmt(baseline.get("test_" + key), how), _fmt(cnn.get("test_" + key), how)] for key, label, how, better in _ROWS],
        ),
        "",
        "## Main confusions of the CNN",
        "",
    ]
    if confusions.empty:
        lines.append("No misclassified test images.")
    else:
        rows = []
        for r in confusions.head(5).itertuples(index=False):
            support = int(test_support.get(int(r.true), 0))
            share = f"{r.count / support:.2%}" if support else "n/a"
            rows.append([f"{r.true} → {r.predicted}", f"{int(r.count):,}", share])
        lines.append(_table(["true → predicted", "test images", f"share of the true digit's test images"], rows))
        total = int(round(cnn.get("test_errors", float("nan")))) if not math.isnan(cnn.get("test_errors", float("nan"))) else None
        if total:
            top = int(confusions.head(5)["count"].sum())
            lines += ["", f"These five pairs are {top:,} of the {total:,} mistakes; the full matrix is the run's `evaluation/confusion_matrix.png`."]
    if baseline_confusions is not None and not baseline_confusions.empty:
        pairs = ", ".join(f"{r.true} → {r.predicted} ({int(r.count)})" for r in baseline_confusions.head(3).itertuples(index=False))
        lines += ["", f"The baseline's most frequent confusions, for comparison: {pairs}."]
    lines += [
        "",
        "## Intended use",
        "",
        "- Recognising **one** handwritten digit per image: a digit drawn in the drawing app, or a photo or scan "
        "cropped around a single digit. A teaching and demonstration model of a tracked MLflow workflow.",
        "- Pictures (PNG/JPEG, any size, dark ink on light paper or light on dark) go through the served model's "
        "preprocessing, MNIST's own recipe: polarity detected, lighting evened, cropped to the digit, stroke "
        "width brought into MNIST's range, scaled to fit a 20x20 box and pasted into 28x28 with its centre of "
        "mass in the centre.",
        "- Pixel arrays (28x28 or 784 values from 0 to 255) are used **as they are**: they must already look like "
        "MNIST, light ink on a black background, the digit centred and about 20x20. Values on a 0-1 scale or "
        "inverted images are rejected, not guessed at.",
        "",
        "## Limits",
        "",
        "- Single, centred digits only. Several digits, letters or symbols still get one of 0-9, "
        "often with high confidence: the model has no \"not a digit\" answer, and its confidence says nothing "
        "about inputs unlike MNIST.",
        f"- Calibration (ECE {_fmt(cnn.get('test_ece'), '4f')}) and accuracy are measured on MNIST's test set "
        "only. MNIST is the handwriting of US Census Bureau employees and high-school students (NIST, around "
        "1990): other styles "
        "(a crossed 7, a 1 with a long flag, a 4 closed at the top) and real photos or drawings are expected to "
        "score lower.",
        "- Not for decisions with consequences (cheques, forms, grades) without a person checking the answer.",
        "",
        "## Runs",
        "",
        _table(["what", "MLflow run id"], [[k, f"`{v}`"] for k, v in runs.items()]),
        "",
    ]
    return "\n".join(lines)


def read_top_confusions(run_id: str) -> pd.DataFrame:
    """The ``evaluation/top_confusions.csv`` that run ``run_id`` logged; an empty table if it has none."""
    import mlflow

    from digits.evaluation import quiet_downloads

    try:
        with quiet_downloads():
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/top_confusions.csv")
    except Exception:  # an older run without the artifact: the card says so instead of failing the pipeline
        return pd.DataFrame({"true": [], "predicted": [], "count": []})
    return pd.read_csv(io.StringIO(text))


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
        confusions=read_top_confusions(cnn.run_id),
        baseline_confusions=read_top_confusions(baseline.run_id),
        test_support=dict(enumerate(np.bincount(mnist.test_labels, minlength=10).tolist())),
        runs=runs,
        selection=selection,
    )
    mlflow.MlflowClient().log_text(cnn.run_id, card, CARD_FILE)
    if active is not None and active.info.run_id != cnn.run_id:
        mlflow.log_text(card, CARD_FILE)
    return card

"""digits.evaluate.plots: every figure renders to a PNG that decodes, has a sensible size and is not blank."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from digits.evaluate import eda_plots, plots
from digits.evaluate.metrics import classification_metrics
from tests.conftest import fake_digits

N = 200


@pytest.fixture(scope="module")
def data() -> dict:
    """Synthetic MNIST-like data: each digit is a bright bar at its own row (plus noise), and noisy probabilities."""
    rng = np.random.default_rng(0)
    images, labels = fake_digits(N, rng, background=0.7)  # mostly background, as in MNIST
    logits = rng.normal(size=(N, 10))
    logits[np.arange(N), labels] += 2.5  # about 80% right: some mistakes to show
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    history = [
        {
            "train_loss": 1 / e,
            "train_accuracy": 1 - 0.2 / e,
            "val_loss": 1.1 / e,
            "val_accuracy": 1 - 0.25 / e,
            "lr": 0.1,
        }
        for e in range(1, 6)
    ]
    return {"images": images, "labels": labels, "proba": proba, "pred": proba.argmax(1), "history": history}


BUILDERS = {
    "confusion_counts": lambda d: plots.confusion_matrix_figure(d["labels"], d["pred"], normalize=False),
    "confusion_normalized": lambda d: plots.confusion_matrix_figure(d["labels"], d["pred"], normalize=True),
    "roc": lambda d: plots.roc_figure(d["labels"], d["proba"]),
    "training_curves": lambda d: plots.training_curves_figure(d["history"]),
    "training_curves_no_val": lambda d: plots.training_curves_figure(
        [{k: v for k, v in h.items() if not k.startswith("val_")} for h in d["history"]]
    ),
    "misclassified": lambda d: plots.misclassified_figure(d["images"], d["labels"], d["proba"]),
    "reliability": lambda d: plots.reliability_figure(d["labels"], d["proba"]),
    "class_distribution": lambda d: eda_plots.class_distribution_figure(d["labels"]),
    "pixel_histogram": lambda d: eda_plots.pixel_histogram_figure(d["images"]),
    "mean_images": lambda d: eda_plots.mean_images_figure(d["images"], d["labels"]),
    "embedding_pca": lambda d: eda_plots.embedding_figure(d["images"], d["labels"], method="pca", sample=150),
    "embedding_tsne": lambda d: eda_plots.embedding_figure(d["images"], d["labels"], method="tsne", sample=N),
}


def _decode(fig: Figure) -> np.ndarray:
    png = plots.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.load()
    return np.asarray(image.convert("L"), dtype=np.float64)


# t-SNE takes about a second even on 200 points: the data tier draws it (the EDA of every pipeline run draws it too).
SLOW_BUILDERS = {"embedding_tsne"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.data if n in SLOW_BUILDERS else pytest.mark.unit) for n in BUILDERS]
)
def test_figure_renders_to_a_readable_png(name, data):
    fig = BUILDERS[name](data)
    assert isinstance(fig, Figure)
    pixels = _decode(fig)
    height, width = pixels.shape
    # 6-10 inches at 100-120 dpi, give or take the square and the grid figures.
    assert 500 <= width <= 1300 and 250 <= height <= 1300, (width, height)
    assert pixels.std() > 10, "the figure looks blank"
    assert (pixels < 128).mean() > 0.005, "hardly any ink: axes, text or data are missing"


@pytest.mark.data
def test_no_pyplot_and_no_backend_selection_at_import():
    code = (
        "import sys, digits.evaluate.plots, digits.evaluate.metrics\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.unit
def test_figures_render_in_threads(data):
    from concurrent.futures import ThreadPoolExecutor

    # Different figures at once: each must come out pixel for pixel as it does alone, so a figure drawn into
    # another thread's canvas, or state shared between threads, would show.
    jobs = [
        lambda: eda_plots.class_distribution_figure(data["labels"][:60]),
        lambda: eda_plots.class_distribution_figure(data["labels"]),
        lambda: plots.training_curves_figure(data["history"]),
        lambda: eda_plots.class_distribution_figure(data["labels"][:130]),
    ]
    alone = [_decode(job()) for job in jobs]
    assert not np.array_equal(alone[0], alone[1])  # different figures: a mix-up cannot pass unnoticed
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _decode(job()), jobs))
    for i, (threaded, sequential) in enumerate(zip(together, alone)):
        assert threaded.shape == sequential.shape, i
        np.testing.assert_array_equal(threaded, sequential, err_msg=f"figure {i} differs when drawn in a thread")


@pytest.mark.unit
def test_confusion_matrix_cells_hold_the_counts():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2])
    ax = plots.confusion_matrix_figure(y_true, y_pred, normalize=False).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells[(0, 0)] == "2" and cells[(0, 1)] == "1" and cells[(1, 1)] == "2" and cells[(9, 9)] == "0"
    ax = plots.confusion_matrix_figure(y_true, y_pred, normalize=True).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells[(0, 0)] == "0.667" and cells[(0, 1)] == "0.333" and cells[(2, 2)] == "1.000"
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(d) for d in range(10)]


@pytest.mark.unit
def test_confusion_matrix_text_is_light_on_dark_cells():
    y = np.repeat(np.arange(10), 50)
    ax = plots.confusion_matrix_figure(y, y, normalize=False).axes[0]
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["50"] == "white"  # the darkest cells
    assert colours["0"] != "white"


@pytest.mark.unit
def test_roc_legend_has_each_digit_auc_with_four_decimals(data):
    ax = plots.roc_figure(data["labels"], data["proba"]).axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts() if "AUC" in t.get_text()]
    assert [int(e.split()[0]) for e in entries] == list(range(10))
    assert all(re.search(r"\(AUC [01]\.\d{4}\)$", e) for e in entries), entries
    assert ax.get_xscale() == "log"


@pytest.mark.unit
def test_training_curves_skip_absent_series(data):
    history = [{"train_loss": 0.5, "train_accuracy": 0.9}, {"train_loss": 0.3, "train_accuracy": 0.95}]
    fig = plots.training_curves_figure(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train_loss"]
    assert [line.get_label() for line in acc_ax.get_lines()] == ["train_accuracy"]
    assert loss_ax.get_lines()[0].get_xdata().tolist() == [1, 2]  # epochs count from 1
    full = plots.training_curves_figure(data["history"])
    assert [line.get_label() for line in full.axes[0].get_lines()] == ["train_loss", "val_loss"]


@pytest.mark.unit
def test_misclassified_most_confident_first():
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    y_true = np.array([4, 1, 2, 3])
    proba = np.array([np.eye(10)[9] * 0.6 + 0.04, np.eye(10)[1], np.eye(10)[5] * 0.9 + 0.01, np.eye(10)[3]])
    fig = plots.misclassified_figure(images, y_true, proba)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true 2 → pred 5 (0.91)", "true 4 → pred 9 (0.64)"]


@pytest.mark.unit
def test_misclassified_without_mistakes_says_so():
    y = np.arange(10)
    fig = plots.misclassified_figure(np.zeros((10, 28, 28), np.uint8), y, np.eye(10)[y])
    assert "no misclassified" in fig.axes[0].texts[0].get_text()
    assert _decode(fig).std() > 1


@pytest.mark.unit
def test_reliability_title_carries_the_same_ece_as_the_metrics(data):
    fig = plots.reliability_figure(data["labels"], data["proba"])
    ece = classification_metrics(data["labels"], data["proba"])["ece"]
    assert f"ECE {ece:.4f}" in fig.axes[0].get_title()


@pytest.mark.unit
def test_embedding_rejects_unknown_method(data):
    with pytest.raises(ValueError, match="pca"):
        eda_plots.embedding_figure(data["images"], data["labels"], method="umap")


@pytest.mark.unit
def test_embedding_is_seeded(data):
    def points(seed):
        fig = eda_plots.embedding_figure(data["images"], data["labels"], method="pca", sample=100, seed=seed)
        return np.concatenate([c.get_offsets() for c in fig.axes[0].collections])

    assert np.array_equal(points(1), points(1))
    assert not np.array_equal(points(1), points(2))

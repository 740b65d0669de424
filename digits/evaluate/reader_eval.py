"""The line reader's validation figures and breakdowns: readings of sample strips, exact match by length and spacing.

Built with ``Figure(...)`` directly (no pyplot), like ``digits.evaluate.plots``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from digits.learn.reader_train import score
from digits.learn.strips import Strips
from digits.serve.reader import Reading

SPACINGS = ("single", "gap", "touching", "overlap")


def spacing_kind(gaps: np.ndarray) -> str:
    """A strip's spacing by its tightest gap (in digit widths): single digit, clear gap, touching (within 0.05 either
    way) or overlapping (more than 5% of the narrower digit)."""
    if len(gaps) == 0:
        return "single"
    tightest = float(np.min(gaps))
    return "gap" if tightest > 0.05 else "touching" if tightest >= -0.05 else "overlap"


def breakdown(strips: Strips, readings: Sequence[Reading]) -> dict[str, dict[str, float]]:
    """Exact match (and count) per length and per spacing kind: ``{"length": {"5": 0.97, ...}, "spacing": {...}}``."""
    texts, read = strips.texts, [r.text for r in readings]
    lengths = np.array([len(t) for t in texts])
    kinds = np.array([spacing_kind(g) for g in strips.gaps])
    out: dict[str, dict[str, float]] = {"length": {}, "spacing": {}, "count_length": {}, "count_spacing": {}}
    for key, values, names in (("length", lengths, sorted(set(lengths.tolist()))), ("spacing", kinds, SPACINGS)):
        for name in names:
            idx = np.flatnonzero(values == name)
            if idx.size:
                out[key][str(name)] = score([texts[i] for i in idx], [read[i] for i in idx])["exact_match"]
                out[f"count_{key}"][str(name)] = float(idx.size)
    return out


def exact_match_figure(strips: Strips, readings: Sequence[Reading]) -> Figure:
    """Two bar charts of validation exact match: by number length and by spacing kind, with the strip counts."""
    parts = breakdown(strips, readings)
    fig = Figure(figsize=(10, 3.6), dpi=110, layout="constrained")
    for ax, key, title in zip(fig.subplots(1, 2), ("length", "spacing"), ("by length (digits)", "by tightest gap")):
        names = list(parts[key])
        values = [100 * parts[key][n] for n in names]
        bars = ax.bar(range(len(names)), values, color="#1f77b4", tick_label=names)
        for bar, name in zip(bars, names):
            ax.annotate(
                f"{int(parts[f'count_{key}'][name])}",
                (bar.get_x() + bar.get_width() / 2, 2),
                ha="center",
                color="w",
                fontsize=7,
            )
        ax.set_ylim(0, 100)
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"validation exact match {title}")
    return fig


def samples_figure(strips: Strips, readings: Sequence[Reading], n: int = 16, seed: int = 0) -> Figure:
    """``n`` validation strips (misreads first, then random ones) with the true digits and the reading."""
    wrong = [i for i, (t, r) in enumerate(zip(strips.texts, readings)) if t != r.text]
    rest = [i for i in np.random.default_rng(seed).permutation(len(strips.texts)) if i not in set(wrong)]
    chosen = (wrong[: n // 2] + rest)[:n]
    fig = Figure(figsize=(12, 0.9 * max(1, len(chosen))), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, len(chosen)), 1))
    for ax, i in zip(axes, chosen):
        ax.imshow(strips.images[i], cmap="gray_r", aspect="equal")
        for x0, x1 in strips.spans[i]:
            ax.axvspan(x0, x1, color="#2ca02c", alpha=0.12)
        ok = strips.texts[i] == readings[i].text
        ax.set_title(
            f"{strips.renderers[i]}: true {strips.texts[i]}  read {readings[i].text or '(nothing)'}",
            fontsize=8,
            color="#2ca02c" if ok else "#d62728",
            loc="left",
        )
        ax.set_axis_off()
    return fig

"""PNG charts of a ranking evaluation (see :mod:`ranker.evaluation`) and of the blender in it, rendered off-screen."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def recall_bars_png(report: dict[str, Any], metric: str = "r1_of_10") -> bytes:
    """Grouped bars: one group per dataset (language), one bar per scorer, 95% intervals and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(report["results"])
    scorers = list(report["scorers"])
    width = 0.8 / max(len(scorers), 1)
    x = np.arange(len(datasets))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(datasets) * max(len(scorers), 1) * 0.6), 3.8), dpi=100)
    for j, scorer in enumerate(scorers):
        rows = [report["results"][name].get(scorer, {}) for name in datasets]
        values = [row.get(metric) or 0.0 for row in rows]
        errors = [1.96 * row.get(f"{metric}_se", 0.0) for row in rows]
        bars = ax.bar(x + (j - (len(scorers) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=scorer)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    chance = report.get("chance", {}).get(metric)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    labels = [f"{name}\n({report['datasets'][name]['language']}, N={report['datasets'][name]['contexts']})"
              for name in datasets]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(metric.replace("_", " ").replace("r1 of", "R@1 of"))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _png_bytes(fig)


def feature_importance_png(names: Sequence[str], gains: Sequence[float], title: str = "blender") -> bytes:
    """Horizontal bars of each feature's total split gain, largest on top: which inputs the blender leans on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(names) != len(gains):
        raise ValueError(f"{len(names)} feature names but {len(gains)} gains")
    order = np.argsort(np.asarray(gains, dtype=np.float64), kind="stable")
    total = float(np.sum(gains)) or 1.0
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.24 * len(names) + 1.0)), dpi=100)
    bars = ax.barh([names[i] for i in order], [gains[i] / total for i in order], color="tab:blue")
    ax.bar_label(bars, labels=[f"{gains[i] / total:.1%}" for i in order], fontsize=7, padding=2)
    ax.set_xlabel("share of total gain")
    ax.set_title(f"{title}: feature importance (gain)", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _png_bytes(fig)


def _png_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

"""PNG charts of a ranking evaluation report (see :mod:`ranker.evaluation`), rendered off-screen."""

from __future__ import annotations

import io
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

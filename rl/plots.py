"""PNG plots of a tuning run and of the reward/relevance trade-off across β.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never touches a display
or the process-wide backend, and written through ``atomic_write_bytes`` like every other artifact.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.atomic import atomic_write_bytes

PANELS: dict[str, tuple[str, ...]] = {
    "expected reward": ("train_reward", "dev_reward"),
    "top-1 reward": ("train_top1_reward", "dev_top1_reward"),
    "KL(π‖π_ref)": ("train_kl", "dev_kl"),
    "entropy": ("train_entropy", "dev_entropy"),
    "objective J": ("train_objective",),
    "β": ("beta",),
}
NOT_PLOTTED = {"iteration", "seconds"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _panels(history: Sequence[Mapping[str, float]]) -> dict[str, tuple[str, ...]]:
    keys = {k for row in history for k in row}
    panels = {title: tuple(k for k in ks if k in keys) for title, ks in PANELS.items()}
    panels = {title: ks for title, ks in panels.items() if ks}
    known = {k for ks in PANELS.values() for k in ks} | NOT_PLOTTED
    for key in sorted(keys - known):
        panels[key] = (key,)
    return panels


def plot_history(history: Sequence[Mapping[str, float]], path: Path, title: str = "policy tuning") -> Path:
    """One panel per metric family (reward, KL, entropy, β, each eval metric) against the iteration."""
    if not history:
        raise ValueError("the history is empty; run at least the reference evaluation before plotting")
    panels = _panels(history)
    cols = 3
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    fig.suptitle(title)
    iterations = np.array([row.get("iteration", i) for i, row in enumerate(history)], dtype=float)
    for index, (panel_title, keys) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, index + 1)
        for key in keys:
            values = np.array([row.get(key, np.nan) for row in history], dtype=float)
            ax.plot(iterations, values, marker="o", markersize=3, label=key)
        ax.set_title(panel_title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both axes (higher is better on each)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    dominated = (xs[None, :] >= xs[:, None]) & (ys[None, :] >= ys[:, None])
    dominated &= (xs[None, :] > xs[:, None]) | (ys[None, :] > ys[:, None])
    return ~dominated.any(axis=1)


def plot_pareto(
    points: Sequence[Mapping[str, float]],
    path: Path,
    x: str = "dev_specificity",
    y: str = "dev_r_at_1",
    label: str = "beta",
) -> Path:
    """Each point is one tuned policy (e.g. one β); the non-dominated ones are joined as the frontier."""
    missing = [p for p in points if x not in p or y not in p]
    if not points or missing:
        raise ValueError(f"every Pareto point needs both {x!r} and {y!r}; got {len(points)} points, {len(missing)} bad")
    xs = np.array([p[x] for p in points], dtype=float)
    ys = np.array([p[y] for p in points], dtype=float)
    front = pareto_front(xs, ys)
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xs[~front], ys[~front], color="grey", label="dominated")
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], marker="o", color="tab:red", label="Pareto front")
    for p, px, py in zip(points, xs, ys, strict=True):
        if label in p:
            ax.annotate(f"{label}={p[label]:g}", (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

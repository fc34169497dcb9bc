"""Rater statistics with no labeling types in them: aggregation (majority, Dawid-Skene), agreement
(Krippendorff's alpha), bootstrap intervals, win rates and preference cycles.

Kept apart from ``dialog.labeling.report`` so each can be read (and tested) alone: these are plain
functions of numbers, the report is what joins them to an export.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest


def majority(values: Sequence[float]) -> float:
    """1 or 0 by majority; an exact tie gives 0.5 so it neither helps nor hurts a system."""
    mean = float(np.mean(values))
    return 1.0 if mean > 0.5 else 0.0 if mean < 0.5 else 0.5


def dawid_skene_binary(votes: Sequence[tuple[Hashable, Hashable, int]], max_iter: int = 200,
                       tol: float = 1e-8) -> dict[Hashable, float]:
    """EM over (item, rater, 0/1) votes -> P(item is 1). Each rater gets a sensitivity and a specificity,
    so a rater who says "yes" to everything counts for less than one who discriminates."""
    if not votes:
        return {}
    items = sorted({v[0] for v in votes}, key=str)
    raters = sorted({v[1] for v in votes}, key=str)
    item_pos = {item: i for i, item in enumerate(items)}
    rater_pos = {rater: i for i, rater in enumerate(raters)}
    item_ix = np.array([item_pos[v[0]] for v in votes])
    rater_ix = np.array([rater_pos[v[1]] for v in votes])
    y = np.array([v[2] for v in votes], dtype=float)
    n_items = len(items)
    counts = np.bincount(item_ix, minlength=n_items).clip(min=1)
    t = np.bincount(item_ix, weights=y, minlength=n_items) / counts
    for _ in range(max_iter):
        prior = float(np.clip(t.mean(), 1e-3, 1 - 1e-3))
        w1, w0 = t[item_ix], 1 - t[item_ix]
        # Half-count smoothing keeps a rater with few votes away from certainty.
        sens = (np.bincount(rater_ix, w1 * y, len(raters)) + 0.5) / (np.bincount(rater_ix, w1, len(raters)) + 1)
        spec = (np.bincount(rater_ix, w0 * (1 - y), len(raters)) + 0.5) / (np.bincount(rater_ix, w0, len(raters)) + 1)
        log1 = np.where(y == 1, np.log(sens[rater_ix]), np.log(1 - sens[rater_ix]))
        log0 = np.where(y == 0, np.log(spec[rater_ix]), np.log(1 - spec[rater_ix]))
        diff = np.log(prior) - np.log(1 - prior) + np.bincount(item_ix, log1 - log0, n_items)
        new_t = 1 / (1 + np.exp(-diff))
        done = np.max(np.abs(new_t - t)) < tol
        t = new_t
        if done:
            break
    return {item: float(p) for item, p in zip(items, t, strict=True)}


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float:
    """Alpha = 1 - D_observed / D_expected from the coincidence matrix; units with < 2 values don't count.
    NaN when there is no variation at all (agreement is then undefined, not perfect)."""
    coincidences: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[(c, k)] += 1 / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _), value in coincidences.items():
        totals[c] += value
    n = sum(totals.values())
    disagree = sum(v for (c, k), v in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    return float("nan") if expected == 0 else 1 - (n - 1) * disagree / expected


def alpha_reading(alpha: float) -> str:
    if np.isnan(alpha):
        return "undefined (no variation)"
    return "reliable" if alpha >= 0.8 else "tentative" if alpha >= 0.667 else "unreliable"


def bootstrap_means(matrix: np.ndarray, n_boot: int, seed: int) -> list[tuple[float, float, float]]:
    """Per column: (mean, 2.5%, 97.5%) resampling rows (contexts); NaN marks a missing cell."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, matrix.shape[0], size=(n_boot, matrix.shape[0]))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for col in matrix.T:
            boots = np.nanmean(col[idx], axis=1)
            lo, hi = np.nanpercentile(boots, [2.5, 97.5])
            out.append((float(np.nanmean(col)), float(lo), float(hi)))
    return out


def win_stats(wins_a: int, wins_b: int, ties: int) -> dict[str, Any]:
    """Win rate of A over B with ties excluded; exact (Clopper-Pearson) CI and two-sided sign test."""
    n = wins_a + wins_b
    stats: dict[str, Any] = {"wins_a": wins_a, "wins_b": wins_b, "ties": ties, "win_rate_a": None,
                             "ci_low": None, "ci_high": None, "p_value": None, "significant": False}
    if n:
        test = binomtest(wins_a, n, 0.5, alternative="two-sided")
        ci = test.proportion_ci(0.95)
        stats.update(win_rate_a=wins_a / n, ci_low=float(ci.low), ci_high=float(ci.high),
                     p_value=float(test.pvalue), significant=bool(test.pvalue < 0.05))
    return stats


def find_cycle(beats: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle in the "majority prefers" graph, e.g. [A, B, C] for A>B>C>A; None if the order is consistent."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(beats.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(beats):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None

"""Which specificity teacher adds something beyond reply length: candidates, partial Spearman with intervals, choice.

Length alone already ranks the human signals about as well as the LM's surprisal (docs/rewards.md), so a
teacher is judged by its *partial* Spearman given length: rank every array, regress the length ranks out
of the candidate's and the label's ranks, correlate the residuals. A 95% bootstrap interval comes with each
number (conversations are resampled whole when a signal has several replies per conversation), because
with a few hundred labels a partial ρ of 0.05 is noise.

Beyond ``rl.teacher.CANDIDATES`` (LM scores) this study adds:

* ``uncond_surprisal_resid``  −log p(r) minus what reply length predicts (:class:`LengthModel`, fitted per
  language on *train* replies and applied to dev);
* ``one_minus_ppl``           1 − perplexity of the reply alone: the seed's "interestingness" idea (rank-equal
  to −``uncond_log_ppl``), reported either way;
* ``nidf_mean`` / ``nidf_max``  word rarity by normalized IDF (``ranker.idf``), no LM at all.

The choice rule (issue 14): a signal is *informative beyond length* when some candidate's interval lies
above 0 on it; the chosen teacher must have its own interval above 0 on every informative signal, and
among those that do, the highest source-weighted mean partial ρ wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.lm.scoring import ReplyScore
from core.text import word_tokens
from ranker.idf import IdfTable
from rl.teacher import CANDIDATES, HumanSignal, candidate_scores, partial_spearman
from rl.teachers import LengthModel, one_minus_ppl

LENGTH = "length_tokens"
# Each data source counts once in the mean: its signals share the source's weight.
SOURCE_WEIGHTS = {"convai2_thumbs": 0.5, "convai2_engagingness": 0.5, "chitchat_interesting": 0.5,
                  "chitchat_witty": 0.5, "topicalchat_turn": 1.0, "hand_specific_en": 0.25, "hand_ssa_en": 0.25,
                  "hand_specific_ru": 0.25, "hand_ssa_ru": 0.25}


def nidf_rarity(texts: Sequence[str], idf: IdfTable) -> dict[str, np.ndarray]:
    """Mean and max NIDF of each text's words (0 for a text without words)."""
    mean, top = [], []
    for text in texts:
        values = idf.nidf_values(word_tokens(text))
        mean.append(float(np.mean(values)) if values else 0.0)
        top.append(max(values) if values else 0.0)
    return {"nidf_mean": np.array(mean), "nidf_max": np.array(top)}


def study_candidates(scores: Sequence[ReplyScore], texts: Sequence[str], languages: Sequence[str],
                     length_model: LengthModel | None, idf: IdfTable | None) -> dict[str, np.ndarray]:
    out = candidate_scores(scores)
    out["one_minus_ppl"] = one_minus_ppl(scores)
    if length_model is not None:
        out["uncond_surprisal_resid"] = length_model.residual(scores, languages)
    if idf is not None:
        out.update(nidf_rarity(texts, idf))
    return out


# ---- partial Spearman with intervals ------------------------------------------------------------------


def _units(signal: HumanSignal, values: np.ndarray, control: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(values, labels, control, cluster)`` per resampling unit: aggregate signals collapse to one row per
    group; grouped per-reply signals keep their rows and resample whole groups."""
    groups = signal.groups
    if groups is None:
        n = len(values)
        return values, signal.labels, control, np.arange(n)
    keys = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    codes = np.array([keys[g] for g in groups])
    if not signal.aggregate:
        return values, signal.labels, control, codes
    counts = np.bincount(codes)
    first = np.unique(codes, return_index=True)[1]
    return (np.bincount(codes, weights=values) / counts, signal.labels[first],
            np.bincount(codes, weights=control) / counts, np.arange(len(counts)))


def bootstrap_rows(cluster: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of each bootstrap draw, clusters resampled whole; shared by every candidate (paired)."""
    order = np.argsort(cluster, kind="stable")
    sizes = np.bincount(cluster)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, len(sizes), len(sizes))
        draws.append(np.concatenate([order[starts[k]:starts[k] + sizes[k]] for k in picked])
                     if sizes.max() > 1 else order[picked])
    return draws


def partial_with_interval(signal: HumanSignal, values: np.ndarray, control: np.ndarray, resamples: int = 1000,
                          seed: int = 0, draws: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Partial Spearman given ``control`` with a percentile bootstrap 95% interval (clusters resampled whole)."""
    v, y, c, cluster = _units(signal, np.asarray(values, np.float64), np.asarray(control, np.float64))
    point = partial_spearman(v, y, c)
    if draws is None:
        draws = bootstrap_rows(cluster, resamples, seed)
    boot = np.array([partial_spearman(v[rows], y[rows], c[rows]) for rows in draws if np.ptp(y[rows]) > 0])
    finite = boot[np.isfinite(boot)]
    low, high = (np.quantile(finite, [0.025, 0.975]) if len(finite) else (math.nan, math.nan))
    raw = float(partial_spearman(v, y, np.zeros_like(c)))  # a constant control: the plain Spearman
    return {"spearman": raw, "partial": float(point), "partial_ci95": [float(low), float(high)], "units": len(v)}


def study_table(values: Mapping[str, Mapping[str, np.ndarray]], signals: Sequence[HumanSignal],
                resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``table[candidate][signal]`` for the precomputed ``values[signal][candidate]``, length partialled out."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for signal in signals:
        control = values[signal.name][LENGTH]
        cluster = _units(signal, control, control)[3]
        draws = bootstrap_rows(cluster, resamples, seed)
        for name, array in values[signal.name].items():
            table.setdefault(name, {})[signal.name] = partial_with_interval(signal, array, control, draws=draws)
    return table


def choose_teacher(table: Mapping[str, Mapping[str, Mapping[str, Any]]], signals: Sequence[str],
                   weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The issue's rule: beat length (interval above 0) on every signal where any candidate does; then the
    best weighted mean partial ρ. With no candidate covering all, the best coverage wins and ``met`` is False."""
    weights = weights if weights is not None else SOURCE_WEIGHTS
    contenders = [name for name in table if name != LENGTH]

    def beats(name: str, signal: str) -> bool:
        low = table[name][signal]["partial_ci95"][0]
        return bool(np.isfinite(low) and low > 0)

    informative = [s for s in signals if any(beats(n, s) for n in contenders)]
    total = sum(weights.get(s, 1.0) for s in signals) or 1.0
    rows = {}
    for name in contenders:
        mean = sum(weights.get(s, 1.0) * np.nan_to_num(table[name][s]["partial"]) for s in signals) / total
        raw = sum(weights.get(s, 1.0) * np.nan_to_num(table[name][s]["spearman"]) for s in signals) / total
        rows[name] = {"covers": [s for s in informative if beats(name, s)], "mean_partial": float(mean),
                      "mean_spearman": float(raw)}
    ranked = sorted(contenders, key=lambda n: (-len(rows[n]["covers"]), -rows[n]["mean_partial"]))
    chosen = ranked[0]
    return {"chosen": chosen, "met": len(rows[chosen]["covers"]) == len(informative), "informative": informative,
            "candidates": rows, "ranking": ranked,
            "rule": "interval of the partial Spearman given length above 0 on every signal where any candidate's is; "
                    "then the highest source-weighted mean partial Spearman"}


def markdown_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]], signals: Sequence[str],
                   choice: Mapping[str, Any]) -> str:
    """Cells: partial ρ given length [95% interval] (plain ρ); the chosen teacher in bold."""
    lines = ["| candidate | " + " | ".join(signals) + " | mean partial ρ | mean ρ | beats length on |",
             "|" + "---|" * (len(signals) + 4)]
    informative = choice["informative"]
    for name in [*choice["ranking"], LENGTH]:
        cells = []
        for s in signals:
            m = table[name][s]
            low, high = m["partial_ci95"]
            cells.append(f"{m['partial']:+.2f} [{low:+.2f}, {high:+.2f}] ({m['spearman']:+.2f})")
        row = choice["candidates"].get(name, {"mean_partial": 0.0, "covers": []})
        mean_raw = row.get("mean_spearman", float("nan"))
        label = f"**{name}**" if name == choice["chosen"] else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['mean_partial']:+.3f} | {mean_raw:+.3f} | "
                     f"{len(row['covers'])}/{len(informative)} |")
    return "\n".join(lines) + "\n"


__all__ = ["CANDIDATES", "LengthModel", "choose_teacher", "markdown_table", "nidf_rarity", "partial_with_interval",
           "study_candidates", "study_table"]

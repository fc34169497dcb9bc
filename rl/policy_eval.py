"""Judging a policy as serving uses it: its tie-broken argmax per dev pool, compared with π_ref's, pool by pool.

Three numbers per chosen reply, none of them the proxy the policy was tuned on (Goodhart): R@1 against
the gold reply, the sensibleness judge's P(sensible) and the LM teacher's specificity (z). Each policy is
reported as the mean difference from π_ref with a paired bootstrap 95% interval (pools resampled with
both policies' outcomes together), per language, because with ~1,000 pools a language one flipped
answer is worth 0.1 R@1 points and a point estimate alone cannot tell a policy from its noise.

Best-of-N (WebGPT) is the baseline: draw N replies from π_ref's softmax, keep the one the tuned-on reward
likes best. Its KL to π_ref is log N − (N − 1)/N (for continuous rewards; the exact value on a finite
pool is reported too), so N is chosen to match each β's measured dev KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from core.types import Context
from rl.policy import group_argmax, group_max, group_starts, softmax
from rl.policy_guard import tie_broken_scores

METRICS = ("r_at_1", "sensible", "teacher_z")
ALL = "all"


def paired_interval(reference: np.ndarray, other: np.ndarray, seed: int, resamples: int = 2000,
                    level: float = 0.95) -> dict[str, float]:
    """Mean of ``other − reference`` with its paired bootstrap interval (pools resampled together)."""
    diff = np.asarray(other, np.float64) - np.asarray(reference, np.float64)
    if not len(diff):
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return {"diff": float(diff.mean()), "lo": float(np.quantile(means, tail)),
            "hi": float(np.quantile(means, 1.0 - tail))}


def analytic_bon_kl(n: int) -> float:
    """KL(best-of-N ‖ base) for a continuous reward: log N − (N − 1)/N."""
    return math.log(n) - (n - 1) / n


def matched_n(kl: float, max_n: int = 4096) -> int:
    """The N whose analytic best-of-N KL is nearest ``kl`` (N = 1 for a policy that did not move)."""
    if not math.isfinite(kl) or kl <= 0:
        return 1
    candidates = np.arange(1, max_n + 1)
    gaps = np.abs(np.log(candidates) - (candidates - 1) / candidates - kl)
    return int(candidates[int(np.argmin(gaps))])


def best_of_n_choice(ref_scores: np.ndarray, rewards: np.ndarray, sizes: np.ndarray, n: int, seed: int,
                     temperature: float = 1.0) -> np.ndarray:
    """Flat index of the reply best-of-N keeps in each pool: N draws from π_ref's softmax (with replacement,
    seeded), the highest reward wins (the first drawn of equals)."""
    probs = softmax(ref_scores, sizes, temperature)
    rng = np.random.default_rng(seed)
    rewards = np.asarray(rewards, np.float64)
    chosen = np.empty(len(sizes), dtype=np.int64)
    for g, (start, size) in enumerate(zip(group_starts(sizes), sizes, strict=True)):
        p = probs[start:start + size]
        draws = start + rng.choice(int(size), size=n, p=p / p.sum())
        chosen[g] = draws[int(np.argmax(rewards[draws]))]
    return chosen


def best_of_n_kl(ref_scores: np.ndarray, rewards: np.ndarray, sizes: np.ndarray, n: int,
                 temperature: float = 1.0) -> float:
    """Exact pool-mean KL(best-of-N ‖ π_ref) on the finite pools: P(pick the k-th lowest) = F_k^N − F_{k−1}^N."""
    probs = softmax(ref_scores, sizes, temperature)
    total = 0.0
    for start, size in zip(group_starts(sizes), sizes, strict=True):
        p = probs[start:start + size]
        order = np.argsort(np.asarray(rewards[start:start + size], np.float64), kind="stable")
        cdf = np.minimum(np.cumsum(p[order]), 1.0)
        q = cdf ** n - np.concatenate(([0.0], cdf[:-1])) ** n
        keep = q > 0
        total += float(np.sum(q[keep] * (np.log(q[keep]) - np.log(p[order][keep]))))
    return max(total / len(sizes), 0.0)


Scorer = Callable[[Sequence[Context], Sequence[str]], np.ndarray]


class PolicyJudge:
    """Per-pool outcomes of any choice of replies over the dev pools, and their paired comparison with π_ref."""

    def __init__(self, dev: Any, contexts: Sequence[Context], languages: Sequence[str], teacher_z: Scorer,
                 sensible: Scorer | None, ref_scores: np.ndarray, tie_tolerance: float, seed: int,
                 resamples: int) -> None:
        self.dev, self.contexts, self.languages = dev, list(contexts), np.asarray(languages)
        self.teacher_z, self.sensible, self.ref_scores = teacher_z, sensible, ref_scores
        self.tie_tolerance, self.seed, self.resamples = tie_tolerance, seed, resamples
        self.reference = self.outcome(group_argmax(ref_scores, dev.group_sizes))

    def chosen(self, scores: np.ndarray) -> np.ndarray:
        """What serving answers: the argmax after the near-tie rule toward π_ref's top reply."""
        broken = tie_broken_scores(scores, self.ref_scores, self.dev.group_sizes, self.tie_tolerance)
        return group_argmax(broken, self.dev.group_sizes)

    def outcome(self, chosen: np.ndarray) -> dict[str, np.ndarray]:
        """Per pool: R@1 hit, P(sensible) (NaN without a judge) and teacher z of the chosen reply."""
        y = np.asarray(self.dev.y, np.float64)
        best = group_max(y, self.dev.group_sizes)
        texts = [self.dev.texts[int(i)] for i in chosen]
        hits = ((y[chosen] >= best) & (best > 0)).astype(np.float64)
        sensible = (np.full(len(chosen), np.nan) if self.sensible is None
                    else np.asarray(self.sensible(self.contexts, texts), np.float64))
        spec = np.asarray(self.teacher_z(self.contexts, texts), np.float64)
        return {"r_at_1": hits, "sensible": sensible, "teacher_z": spec, "chosen": np.asarray(chosen)}

    def compare(self, outcome: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Per language (and all): each metric's value, π_ref's, and the paired difference with its interval."""
        out: dict[str, Any] = {}
        flips = outcome["chosen"] != self.reference["chosen"]
        for language in [*sorted(set(self.languages.tolist())), ALL]:
            rows = np.ones(len(self.languages), bool) if language == ALL else self.languages == language
            entry: dict[str, Any] = {"pools": int(rows.sum()), "top1_flip_rate": float(flips[rows].mean())}
            for metric in METRICS:
                ref, own = self.reference[metric][rows], outcome[metric][rows]
                if np.isnan(own).any() or np.isnan(ref).any():
                    entry[metric] = None
                    continue
                entry[metric] = {"value": float(own.mean()), "reference": float(ref.mean()),
                                 **paired_interval(ref, own, self.seed, self.resamples)}
            out[language] = entry
        return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd, min and max over seeds (sd 0 for one seed)."""
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "seeds": len(array)}


def seed_spread(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over the seeds' comparisons: the spread of each metric's value and difference, per language."""
    out: dict[str, Any] = {}
    for language in comparisons[0]:
        entry: dict[str, Any] = {"top1_flip_rate": spread([c[language]["top1_flip_rate"] for c in comparisons])}
        for metric in METRICS:
            rows = [c[language][metric] for c in comparisons]
            if any(row is None for row in rows):
                entry[metric] = None
                continue
            entry[metric] = {"value": spread([r["value"] for r in rows]), "diff": spread([r["diff"] for r in rows])}
        out[language] = entry
    return out

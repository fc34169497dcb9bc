"""Best-of-N: the no-training baseline the tuned policy must beat.

Draw N candidates for a context, keep the one the reward model likes best. The expected-max curve over
N shows how much reward pure selection buys, and therefore how much of a tuned policy's gain selection
alone could have delivered (and, past some N, how much of it is the proxy reward being over-optimized).

Two sampling models, both exact (no Monte Carlo):

* with replacement from a distribution p over the pool (e.g. the policy, or uniform): with rewards
  sorted ascending and F_k the cumulative probability of the k lowest, P(max = r_(k)) = F_k^N − F_{k−1}^N;
* without replacement, uniformly, from a pool of M: P(max = r_(k)) = C(k−1, N−1) / C(M, N); for N ≥ M
  the whole pool is taken, so the value is simply the pool's maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln

from rl.policy import group_argmax, group_starts, validate_group_sizes


def best_of_n(rewards: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Flat index of the highest-reward candidate in each pool."""
    rewards = np.asarray(rewards, dtype=np.float64)
    validate_group_sizes(group_sizes, len(rewards))
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinity; score every candidate before best-of-N")
    return group_argmax(rewards, group_sizes)


def _expected_max_with_replacement(rewards: np.ndarray, probs: np.ndarray, n: int) -> float:
    order = np.argsort(rewards, kind="stable")
    cdf = np.minimum(np.cumsum(probs[order]), 1.0)
    previous = np.concatenate(([0.0], cdf[:-1]))
    return float(np.sum(rewards[order] * (cdf**n - previous**n)))


def _expected_max_without_replacement(rewards: np.ndarray, n: int) -> float:
    m = len(rewards)
    if n >= m:
        return float(rewards.max())
    ranks = np.arange(1, m + 1)
    log_weights = np.full(m, -np.inf)
    valid = ranks >= n
    k = ranks[valid]
    log_weights[valid] = (
        gammaln(k) - gammaln(n) - gammaln(k - n + 1) - (gammaln(m + 1) - gammaln(n + 1) - gammaln(m - n + 1))
    )
    return float(np.sum(np.sort(rewards) * np.exp(log_weights)))


def expected_max_reward(
    rewards: np.ndarray,
    group_sizes: np.ndarray,
    n: int,
    probs: np.ndarray | None = None,
    replace: bool = True,
) -> np.ndarray:
    """E[max reward of N draws] per pool. ``probs`` (per candidate, summing to 1 per pool) only with replacement."""
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    rewards = np.asarray(rewards, dtype=np.float64)
    sizes = validate_group_sizes(group_sizes, len(rewards))
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinity; score every candidate before best-of-N")
    if probs is not None:
        if not replace:
            raise ValueError("sampling probabilities are only supported with replace=True")
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != rewards.shape or (probs < 0).any():
            raise ValueError("probs must be non-negative and give one probability per candidate")
    out = np.empty(len(sizes))
    for g, (start, size) in enumerate(zip(group_starts(sizes), sizes, strict=True)):
        pool = rewards[start : start + size]
        if not replace:
            out[g] = _expected_max_without_replacement(pool, n)
            continue
        p = np.full(size, 1.0 / size) if probs is None else probs[start : start + size]
        total = p.sum()
        if not np.isclose(total, 1.0, atol=1e-6):
            raise ValueError(f"pool {g}: probabilities sum to {total}, not 1; pass a per-pool softmax")
        out[g] = _expected_max_with_replacement(pool, p / total, n)
    return out


def best_of_n_curve(
    rewards: np.ndarray,
    group_sizes: np.ndarray,
    ns: Sequence[int],
    probs: np.ndarray | None = None,
    replace: bool = True,
) -> dict[int, float]:
    """Pool-averaged expected best-of-N reward for each N (the WebGPT compute/quality curve)."""
    return {int(n): float(expected_max_reward(rewards, group_sizes, int(n), probs, replace).mean()) for n in ns}

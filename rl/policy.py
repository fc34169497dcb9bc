"""The reranking policy: a softmax over the blender's raw scores within one context's candidate pool.

Every array here is flat (one entry per candidate, contexts laid out back to back) and ``group_sizes``
says where each context's pool ends, which is exactly how LightGBM's ranking ``Dataset`` stores them.
Group reductions go through ``np.add.reduceat`` so a pass over tens of thousands of pools stays a few
vectorized numpy calls instead of a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Feature rows for a set of candidate pools, one pool per context, pools stored back to back."""

    X: np.ndarray
    group_sizes: np.ndarray

    def __post_init__(self) -> None:
        sizes = validate_group_sizes(self.group_sizes, len(self.X))
        object.__setattr__(self, "group_sizes", sizes)
        if self.X.ndim != 2:
            raise ValueError(f"Groups.X must be a 2-D (candidates x features) array, got shape {self.X.shape}")

    @property
    def n_groups(self) -> int:
        return len(self.group_sizes)

    @property
    def starts(self) -> np.ndarray:
        return group_starts(self.group_sizes)


def validate_group_sizes(group_sizes: np.ndarray, n_rows: int) -> np.ndarray:
    """Reject empty pools and size/row mismatches early: ``reduceat`` silently misreads both."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if sizes.ndim != 1 or len(sizes) == 0:
        raise ValueError("group_sizes must be a non-empty 1-D array of pool sizes")
    if (sizes <= 0).any():
        bad = np.unique(sizes[sizes <= 0])
        raise ValueError(f"every candidate pool needs at least one candidate; found sizes {bad}")
    if int(sizes.sum()) != n_rows:
        raise ValueError(f"group sizes add up to {int(sizes.sum())} rows but the data has {n_rows}; rebuild the groups")
    return sizes


def group_starts(group_sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(group_sizes)[:-1])).astype(np.int64)


def group_sum(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    return np.add.reduceat(np.asarray(values, dtype=np.float64), group_starts(group_sizes))


def group_max(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(np.asarray(values, dtype=np.float64), group_starts(group_sizes))


def broadcast(per_group: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    return np.repeat(per_group, group_sizes)


def group_argmax(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Flat index of the best candidate in each pool (the first one on ties)."""
    values = np.asarray(values, dtype=np.float64)
    is_max = values == broadcast(group_max(values, group_sizes), group_sizes)
    group_ids = broadcast(np.arange(len(group_sizes)), group_sizes)
    first = np.full(len(group_sizes), len(values), dtype=np.int64)
    np.minimum.at(first, group_ids[is_max], np.flatnonzero(is_max))
    return first


def log_softmax(scores: np.ndarray, group_sizes: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log π per candidate; the pool maximum is subtracted first so huge scores cannot overflow."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(scores, dtype=np.float64) / temperature
    validate_group_sizes(group_sizes, len(z))
    if not np.isfinite(z).all():
        raise ValueError("scores contain NaN or infinity; check the booster's predictions")
    shifted = z - broadcast(group_max(z, group_sizes), group_sizes)
    log_norm = np.log(group_sum(np.exp(shifted), group_sizes))
    return shifted - broadcast(log_norm, group_sizes)


def softmax(scores: np.ndarray, group_sizes: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(scores, group_sizes, temperature))


def kl_per_group(log_p: np.ndarray, log_q: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """KL(p‖q) per pool, from log-probabilities so that p = 0 terms vanish instead of giving NaN."""
    return np.maximum(group_sum(np.exp(log_p) * (log_p - log_q), group_sizes), 0.0)


def entropy_per_group(log_p: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    return np.maximum(-group_sum(np.exp(log_p) * log_p, group_sizes), 0.0)


def expected_reward_per_group(log_p: np.ndarray, rewards: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    return group_sum(np.exp(log_p) * rewards, group_sizes)


def policy_metrics(
    scores: np.ndarray,
    ref_scores: np.ndarray,
    group_sizes: np.ndarray,
    rewards: np.ndarray | None = None,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Pool-averaged KL to the reference policy, entropy and (given rewards) expected reward."""
    log_p = log_softmax(scores, group_sizes, temperature)
    log_ref = log_softmax(ref_scores, group_sizes, temperature)
    metrics = {
        "kl": float(kl_per_group(log_p, log_ref, group_sizes).mean()),
        "entropy": float(entropy_per_group(log_p, group_sizes).mean()),
    }
    if rewards is not None:
        metrics["reward"] = float(expected_reward_per_group(log_p, rewards, group_sizes).mean())
        metrics["top1_reward"] = float(np.asarray(rewards)[group_argmax(scores, group_sizes)].mean())
    return metrics

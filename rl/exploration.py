"""Stochastic serving policies over a ranked pool, and the probability each gives every candidate.

Off-policy evaluation reweights logged rewards by π_target(a) / π_logging(a); that ratio exists only
where the logging policy gave the candidate a non-zero probability. So serving, while it logs
decisions, picks the answer from a controlled distribution instead of always taking the top one:

- ``epsilon-greedy``: the top candidate with probability 1 - ε + ε/K, each of the rest of the top K with
  ε/K. The expected loss in R@1 is at most ε·(1 - 1/K)·R@1: with the defaults (ε = 0.05, K = 5) at most
  4% of R@1, and less where the runners-up are also good (docs/offpolicy.md has the measured value).
- ``softmax``: exp(score/T) over the top K scores. Needs comparable scores (a learned blender).
- ``greedy``: the top candidate always; propensities 0/1, so only policies that agree with it can be
  evaluated from such logs.

The same functions give the target policy's probabilities in ``rl.ope``, so serving and evaluation can
never disagree on what a policy means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("epsilon-greedy", "softmax", "greedy")


@dataclass(frozen=True)
class ServingPolicy:
    kind: str = "epsilon-greedy"
    epsilon: float = 0.05
    temperature: float = 0.25
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"exploration policy {self.kind!r} is not one of {', '.join(POLICIES)}; "
                             "set [exploration] policy")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"[exploration] epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature <= 0:
            raise ValueError(f"[exploration] temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"[exploration] top_k must be 0 (the whole pool) or more, got {self.top_k}")

    @property
    def name(self) -> str:
        """A short comma-free id stored with every decision; labeling stratifies by it (a system name)."""
        if self.kind == "greedy":
            return "greedy"
        if self.kind == "softmax":
            return f"softmax/T={self.temperature:g}/k={self.top_k}"
        return f"epsilon-greedy/eps={self.epsilon:g}/k={self.top_k}"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "epsilon": self.epsilon, "temperature": self.temperature,
                "top_k": self.top_k}

    def propensities(self, scores: np.ndarray) -> np.ndarray:
        """P(candidate i is served first) for one pool; candidates outside the top K get 0. Sums to 1."""
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        if n == 0:
            return np.zeros(0)
        if not np.isfinite(scores).all():
            scores = np.where(np.isfinite(scores), scores, -np.inf)
            if not np.isfinite(scores).any():
                scores = np.zeros(n)
        order = np.argsort(-scores, kind="stable")
        k = n if self.top_k == 0 else min(self.top_k, n)
        top = order[:k]
        out = np.zeros(n)
        if self.kind == "greedy" or k == 1:
            out[top[0]] = 1.0
        elif self.kind == "epsilon-greedy":
            out[top] = self.epsilon / k
            out[top[0]] += 1.0 - self.epsilon
        else:
            z = scores[top] / self.temperature
            z = np.where(np.isfinite(z), z, -1e300)
            e = np.exp(z - z.max())
            out[top] = e / e.sum()
        return out

    def propensities_rows(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`propensities` for equal-sized pools at once, one pool per row (finite scores)."""
        scores = np.asarray(scores, dtype=np.float64)
        n, m = scores.shape
        k = m if self.top_k == 0 else min(self.top_k, m)
        order = np.argsort(-scores, axis=1, kind="stable")
        rows = np.arange(n)[:, None]
        out = np.zeros((n, m))
        if self.kind == "greedy" or k == 1:
            out[np.arange(n), order[:, 0]] = 1.0
        elif self.kind == "epsilon-greedy":
            out[rows, order[:, :k]] = self.epsilon / k
            out[np.arange(n), order[:, 0]] += 1.0 - self.epsilon
        else:
            z = np.take_along_axis(scores, order[:, :k], axis=1) / self.temperature
            e = np.exp(z - z.max(axis=1, keepdims=True))
            out[rows, order[:, :k]] = e / e.sum(axis=1, keepdims=True)
        return out


def batch_propensities(policy: ServingPolicy, scores: list[np.ndarray]) -> list[np.ndarray]:
    return [policy.propensities(s) for s in scores]


def expected_top1_loss(policy: ServingPolicy, scores: list[np.ndarray], relevant: list[np.ndarray]) -> dict[str, float]:
    """R@1 of always serving the top candidate vs the expected R@1 of serving from ``policy``.

    ``relevant[i]`` marks the gold candidate(s) of pool ``i`` with 1. This is how the default's quality
    cost is measured on dev pools (bench/bench_offpolicy.py).
    """
    greedy = ServingPolicy("greedy")
    r1_greedy = float(np.mean([np.dot(greedy.propensities(s), r) for s, r in zip(scores, relevant, strict=True)]))
    r1_policy = float(np.mean([np.dot(policy.propensities(s), r) for s, r in zip(scores, relevant, strict=True)]))
    return {"r1_greedy": r1_greedy, "r1_policy": r1_policy, "r1_loss": r1_greedy - r1_policy,
            "relative_loss": (r1_greedy - r1_policy) / r1_greedy if r1_greedy > 0 else 0.0}

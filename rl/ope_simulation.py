"""A simulated logged bandit with a known reward function, for testing and benchmarking ``rl.ope``.

Contexts bring pools of candidates with feature vectors; simulated users reward a served candidate
with probability sigmoid(x·β) (known). Policy A (the served one) is a linear scorer θ_A read through a
:class:`rl.exploration.ServingPolicy`; policy B (the candidate) is another linear scorer. B's true value
is computed exactly (Σ_a π_B(a) p(a) averaged over fresh contexts), and also by running B on-policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.exploration import ServingPolicy
from rl.ope import LoggedDecisions


@dataclass(frozen=True)
class World:
    beta: np.ndarray
    theta_a: np.ndarray
    theta_b: np.ndarray
    pool: int = 10

    @classmethod
    def make(cls, dim: int = 6, pool: int = 10, seed: int = 0, b_quality: float = 0.7) -> World:
        """B sits closer to the true β than A, so it should be worth more (an RL-tuned blender, in spirit)."""
        rng = np.random.default_rng(seed)
        beta = rng.normal(size=dim)
        noise_a, noise_b = rng.normal(size=dim), rng.normal(size=dim)
        theta_a = beta + 1.2 * noise_a
        theta_b = beta + (1.0 - b_quality) * 1.2 * noise_b
        return cls(beta, theta_a, theta_b, pool)

    def contexts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, pool, dim) candidate features."""
        return rng.normal(size=(n, self.pool, len(self.beta)))

    def reward_p(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(X @ self.beta - 0.5)))


def policy_probs(X: np.ndarray, theta: np.ndarray, policy: ServingPolicy) -> np.ndarray:
    return policy.propensities_rows(X @ theta)


def log_decisions(world: World, n: int, logging_policy: ServingPolicy, seed: int) -> tuple[LoggedDecisions, np.ndarray]:
    """n decisions served by A under ``logging_policy``; returns the log and the (n, pool, dim) features."""
    rng = np.random.default_rng(seed)
    X = world.contexts(n, rng)
    mu = policy_probs(X, world.theta_a, logging_policy)
    cumulative = mu.cumsum(axis=1)
    chosen = np.minimum((cumulative < rng.random((n, 1))).sum(axis=1), world.pool - 1)
    p = world.reward_p(X[np.arange(n), chosen])
    rewards = (rng.random(n) < p).astype(np.float64)
    data = LoggedDecisions(mu.reshape(-1), np.full(n, world.pool), chosen, rewards,
                           features=X.reshape(n * world.pool, -1))
    return data, X


def true_value(world: World, target: ServingPolicy, n: int = 100_000, seed: int = 99) -> float:
    """E[reward] of B exactly in the action (no reward sampling noise), over many fresh contexts."""
    X = world.contexts(n, np.random.default_rng(seed))
    return float((policy_probs(X, world.theta_b, target) * world.reward_p(X)).sum(axis=1).mean())


def on_policy_value(world: World, target: ServingPolicy, n: int, seed: int) -> float:
    """Run B for real: serve, sample a reward, average (what an A/B test would measure)."""
    data, _ = log_decisions(World(world.beta, world.theta_b, world.theta_b, world.pool), n, target, seed)
    return float(data.rewards.mean())

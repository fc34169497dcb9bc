"""Serving-side exploration: draw the answer from the configured policy and remember what was possible.

The pipeline calls :meth:`Explorer.choose` on the ranked pool. It moves the drawn candidate to the front
(clients serve the first candidate) and returns a :class:`Decision`: the pool as it was ranked, every
candidate's propensity, and which one was served. The policy math is ``rl.exploration``; this module
only adds the random draw and the snapshot, both cheap (no copies of feature dicts, one lock-protected
draw per request).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import numpy as np

from core.config import ExplorationConfig
from core.types import Candidate
from rl.exploration import ServingPolicy


@dataclass
class PooledCandidate:
    text: str
    source: str
    language: str
    phrase_id: int | None
    score: float
    # The blender's features (shared with the candidate, never mutated after ranking); empty without one.
    features: dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """What the serving policy could have done and what it did, in the pool's ranked order."""

    policy: dict[str, object]
    pool: list[PooledCandidate]
    propensities: list[float]
    chosen: int

    @property
    def chosen_propensity(self) -> float:
        return self.propensities[self.chosen]


class Explorer:
    """Thread-safe random draws from a :class:`ServingPolicy` (one shared RNG behind a lock)."""

    def __init__(self, policy: ServingPolicy, seed: int = 0) -> None:
        self.policy = policy
        self._rng = random.Random(seed or None)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ExplorationConfig) -> Explorer:
        policy = ServingPolicy(config.policy, config.epsilon, config.temperature, config.top_k)
        return cls(policy, config.seed)

    def choose(self, ranked: list[Candidate]) -> Decision | None:
        """Draw the served candidate, move it to the front of ``ranked`` (in place), describe the draw."""
        if not ranked:
            return None
        pool = [PooledCandidate(c.text, c.source, c.language, c.phrase_id, float(c.score), c.features)
                for c in ranked]
        # The ranked order is the policy's order: bank-first ranking has no comparable scores, so
        # epsilon-greedy needs only the order; softmax reads the (blender) scores.
        scores = np.array([c.score for c in ranked], dtype=np.float64)
        if self.policy.kind != "softmax":
            scores = -np.arange(len(ranked), dtype=np.float64)
        propensities = self.policy.propensities(scores)
        with self._lock:
            draw = self._rng.random()
        chosen = int(np.searchsorted(np.cumsum(propensities), draw, side="right"))
        chosen = min(chosen, len(ranked) - 1)
        while propensities[chosen] == 0.0 and chosen > 0:  # float round-off at the top of the cumsum
            chosen -= 1
        if chosen:
            ranked.insert(0, ranked.pop(chosen))
        return Decision(self.policy.to_json(), pool, propensities.tolist(), chosen)

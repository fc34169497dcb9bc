"""The cross-entropy method as a gradient-free second optimizer for the reranking policy.

The policy is the reference booster plus a linear correction, s = s_ref + X̃·w. X̃ is the feature
matrix standardized with statistics fitted on the training pools, with NaN (feature not available for
that candidate) replaced by 0, i.e. by the feature's mean, so a missing feature neither pushes a
candidate up nor down. w = 0 is exactly the reference policy, which is where the search starts.

Each generation samples parameter vectors from a diagonal Gaussian, scores each by the same
regularized objective J as the booster tuner (averaged over pools), keeps the best ``elite`` and refits
the Gaussian to them. A little extra sd (``min_std``) is added back so the search cannot collapse early.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rl.objective import Regularization, objective_per_group
from rl.policy import Groups


@dataclass(frozen=True)
class FeatureScaler:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> FeatureScaler:
        X = np.asarray(X, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled just below
            mean = np.nanmean(X, axis=0)
            std = np.nanstd(X, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        scale = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return cls(mean=mean, scale=scale)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} features, got array of shape {X.shape}; same feature set?")
        return np.nan_to_num((X - self.mean) / self.scale, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class LinearAdjustment:
    """A CEM result: the correction added to the reference booster's raw scores."""

    scaler: FeatureScaler
    weights: np.ndarray

    def delta(self, X: np.ndarray) -> np.ndarray:
        return self.scaler.transform(X) @ self.weights

    def scores(self, X: np.ndarray, ref_scores: np.ndarray) -> np.ndarray:
        return np.asarray(ref_scores, dtype=np.float64) + self.delta(X)

    def to_dict(self) -> dict[str, Any]:
        scaler = self.scaler
        return {"mean": scaler.mean.tolist(), "scale": scaler.scale.tolist(), "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearAdjustment:
        return cls(FeatureScaler(np.asarray(data["mean"]), np.asarray(data["scale"])), np.asarray(data["weights"]))


@dataclass(frozen=True)
class CEMConfig:
    population: int = 64
    elite: int = 8
    init_std: float = 0.5
    min_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.elite < self.population:
            raise ValueError(f"need 1 <= elite < population, got elite={self.elite}, population={self.population}")
        if self.init_std <= 0 or self.min_std < 0:
            raise ValueError("init_std must be positive and min_std non-negative")


@dataclass
class CEMState:
    """Everything a later run needs to continue the search bit-for-bit (rng state included)."""

    mean: np.ndarray
    std: np.ndarray
    rng_state: dict[str, Any]
    generation: int = 0

    @classmethod
    def initial(cls, n_features: int, config: CEMConfig) -> CEMState:
        rng = np.random.default_rng(config.seed)
        return cls(np.zeros(n_features), np.full(n_features, config.init_std), rng.bit_generator.state)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "rng_state": self.rng_state,
                "generation": self.generation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CEMState:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]), data["rng_state"], int(data["generation"]))


@dataclass
class CEMResult:
    adjustment: LinearAdjustment
    state: CEMState
    history: list[dict[str, float]] = field(default_factory=list)


def mean_objective(
    Xt: np.ndarray, weights: np.ndarray, ref_scores: np.ndarray, rewards: np.ndarray, sizes: np.ndarray,
    reg: Regularization,
) -> float:
    return float(objective_per_group(ref_scores + Xt @ weights, ref_scores, rewards, sizes, reg).mean())


def cem_generation(
    state: CEMState, Xt: np.ndarray, ref_scores: np.ndarray, rewards: np.ndarray, sizes: np.ndarray,
    reg: Regularization, config: CEMConfig,
) -> tuple[CEMState, dict[str, float]]:
    """One sample / select / refit step; returns a new state and the generation's J statistics."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    samples = state.mean + state.std * rng.standard_normal((config.population, len(state.mean)))
    values = np.array([mean_objective(Xt, w, ref_scores, rewards, sizes, reg) for w in samples])
    elite = samples[np.argsort(-values, kind="stable")[: config.elite]]
    new_mean = elite.mean(axis=0)
    new_std = elite.std(axis=0) + config.min_std
    new_state = CEMState(new_mean, new_std, rng.bit_generator.state, state.generation + 1)
    stats = {
        "objective": mean_objective(Xt, new_mean, ref_scores, rewards, sizes, reg),
        "population_mean": float(values.mean()),
        "elite_min": float(np.sort(values)[-config.elite]),
        "best": float(values.max()),
        "mean_std": float(new_std.mean()),
    }
    return new_state, stats


def optimize_cem(
    train: Groups,
    ref_scores: np.ndarray,
    rewards: np.ndarray,
    reg: Regularization,
    generations: int,
    config: CEMConfig | None = None,
    state: CEMState | None = None,
    scaler: FeatureScaler | None = None,
) -> CEMResult:
    """Run ``generations`` CEM steps from ``state`` (or from w = 0) and return the mean as the policy."""
    if generations < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    config = config or CEMConfig()
    scaler = scaler or FeatureScaler.fit(train.X)
    Xt = scaler.transform(train.X)
    ref_scores = np.asarray(ref_scores, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    state = state or CEMState.initial(Xt.shape[1], config)
    if len(state.mean) != Xt.shape[1]:
        raise ValueError(f"CEM state has {len(state.mean)} weights but the data has {Xt.shape[1]} features")
    history = []
    for _ in range(generations):
        state, stats = cem_generation(state, Xt, ref_scores, rewards, train.group_sizes, reg, config)
        history.append(stats)
    return CEMResult(LinearAdjustment(scaler, state.mean.copy()), state, history)

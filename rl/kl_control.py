"""KL coefficient schedules.

A fixed β is hard to pick: the KL a given β allows depends on the reward scale and on how far the
booster can move in a round. The adaptive controller (Ziegler et al. 2019, as in TRL) instead targets a
KL budget and nudges β proportionally to the relative error, clipped so one noisy measurement cannot
swing it wildly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """β ← β · (1 + clip(KL/target − 1, ±clip) · n_steps / horizon)."""

    value: float
    target: float
    horizon: float = 10.0
    clip: float = 0.2

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"the adaptive controller needs a positive initial beta, got {self.value}")
        if self.target <= 0:
            raise ValueError(f"target_kl must be positive, got {self.target}; use None for a fixed beta")
        if self.horizon <= 0 or self.clip <= 0:
            raise ValueError("horizon and clip must be positive")

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -self.clip), self.clip)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


KLController = FixedKLController | AdaptiveKLController


def make_kl_controller(beta: float, target_kl: float | None, horizon: float = 10.0) -> KLController:
    if target_kl is None:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target_kl, horizon)

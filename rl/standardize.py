"""Reward standardization: mean 0, sd 1 over a fixed reference set.

As in WebGPT, rewards from different models (teacher, distilled proxy, relevance) land on one scale,
so a single β means the same trade-off for each and "above 0" reads as "better than the reference
average". The statistics are fitted once on the reference set and then frozen: refitting on the tuned
policy's own candidates would silently move the zero point the plots are compared against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_json


@dataclass(frozen=True)
class RewardStandardizer:
    mean: float
    std: float
    name: str = "reward"
    n_reference: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std)) or self.std <= 0:
            raise ValueError(
                f"{self.name}: standardizer needs a finite mean and a positive sd, got {self.mean}, {self.std}"
            )

    @classmethod
    def fit(cls, reference: np.ndarray, name: str = "reward") -> RewardStandardizer:
        values = np.asarray(reference, dtype=np.float64).ravel()
        if len(values) < 2:
            raise ValueError(f"{name}: need at least 2 reference rewards to standardize, got {len(values)}")
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: reference rewards contain NaN or infinity; drop unscored candidates first")
        std = float(values.std())
        if std == 0.0:
            raise ValueError(f"{name}: reference rewards are all equal ({values[0]}); this reward carries no signal")
        return cls(mean=float(values.mean()), std=std, name=name, n_reference=len(values))

    def transform(self, rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float64) - self.mean) / self.std

    def inverse(self, standardized: np.ndarray) -> np.ndarray:
        return np.asarray(standardized, dtype=np.float64) * self.std + self.mean

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: Path) -> RewardStandardizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(mean=float(data["mean"]), std=float(data["std"]), name=str(data.get("name", "reward")),
                       n_reference=int(data.get("n_reference", 0)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read reward standardizer {path}: {exc}; refit it on the reference set") from exc

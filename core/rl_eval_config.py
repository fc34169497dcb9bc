"""How `repliq rl tune` judges its policies: dev set size, seeds, judges and the targets of issue 14.

Kept beside ``core/job_configs.py`` (which holds ``RLRunConfig`` and refers to this class) so the CLI
builds its flags' defaults from one place without importing LightGBM or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.training_corpora import BlenderCorpora


def dev_corpora() -> BlenderCorpora:
    """Every chit-chat conversation and many Russian ones: only their dev hash split is kept, and ≥ 1,000
    dev contexts per language need ~10x the conversations the blender trains on."""
    return BlenderCorpora(chitchat_conversations=20_000, russian_conversations=60_000)


@dataclass
class RLEvalConfig:
    # Policy seeds: each β is tuned once per seed and the first seed's policy is the one saved. LightGBM
    # ignores the seed unless it samples (``policy.bagging_fraction`` < 1), so a spread needs bagging.
    seeds: tuple[int, ...] = (0,)
    # Dev contexts per language, built from the dev hash split of ``corpora`` with the blender's pool recipe
    # (rl.dev_pools); 0 judges on the blender dataset's own dev split (~100-250 pools per language).
    dev_contexts: int = 0
    corpora: BlenderCorpora = field(default_factory=dev_corpora)
    # The sensibleness judge (`repliq train judge`) scoring each chosen reply; None: not judged, and then
    # no β can meet the target (its sensibleness constraint cannot be checked).
    judge: Path | None = None
    # Best-of-N reranking with the tuned-on reward at each β's dev KL: the baseline the policy must match.
    best_of_n: bool = True
    # Best-of-N's sampling is seeded by the first this many policy seeds (each draw is judged: ~90 ms a new pair).
    best_of_n_draws: int = 1
    bootstrap_resamples: int = 2000
    # The target (issue 14, item 4), per language: teacher specificity gain (sd), the lower bound of the
    # sensibleness difference's 95% interval, and R@1 within ``RLRunConfig.max_r_at_1_drop``.
    min_specificity_gain: float = 0.3
    min_sensible_lower: float = -0.01

    def validate(self) -> None:
        problems = []
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.dev_contexts < 0:
            problems.append(f"dev_contexts must be >= 0, got {self.dev_contexts}")
        if self.best_of_n_draws < 1:
            problems.append(f"best_of_n_draws must be >= 1, got {self.best_of_n_draws}")
        if self.bootstrap_resamples < 100:
            problems.append(f"bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")
        if problems:
            raise ValueError("invalid RL evaluation config: " + "; ".join(problems))

"""Slot for a learned specificity score (from the RL work); NaN until a scorer is injected."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register


@register
class SpecificityAnnotator(Annotator):
    name = "specificity"
    version = "1"
    feature_names = ("specificity_proxy",)

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        scorer = self.resources.specificity
        if scorer is None or not candidates:
            return out
        values = list(scorer(context.window(self.resources.context_turns), [c.text for c in candidates]))
        if len(values) != len(candidates):
            raise RuntimeError(f"specificity scorer returned {len(values)} values for {len(candidates)} candidates")
        out[:, 0] = np.asarray(values, dtype=np.float32)
        return out

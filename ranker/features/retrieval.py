"""Retrieval scores carried by bank candidates; generated candidates were never retrieved, so NaN."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register


@register
class RetrievalAnnotator(Annotator):
    name = "retrieval"
    version = "1"
    # The gap to the best cosine in the pool makes the score comparable across contexts whose
    # absolute cosines differ (short vs long queries).
    feature_names = ("retrieval_cosine", "retrieval_rank", "retrieval_cosine_gap")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        for i, cand in enumerate(candidates):
            out[i, 0] = cand.stage_scores.get("retrieval", np.nan)
            out[i, 1] = cand.stage_scores.get("retrieval_rank", np.nan)
        cosines = out[:, 0]
        if len(candidates) and not np.all(np.isnan(cosines)):
            out[:, 2] = cosines - np.nanmax(cosines)
        return out

"""Retrieval scores, made comparable across pools; generated candidates were never retrieved, so NaN.

Only the cosine comes from the retriever. Rank, gap and z-score are computed here, within the pool
being ranked, so they mean the same in a training pool (gold + hard, random and corpus negatives), an
evaluation pool (gold + distractors) and a serving pool (the retriever's top hits). A rank numbered by
the retriever over the whole bank would not: in training the gold was never among the hits, so "rank 1"
came to mean "a bank phrase that is not the reply" (docs/benchmarks.md, ranking evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register
from ranker.features.pool import pool_gap, pool_ranks, pool_z


@register
class RetrievalAnnotator(Annotator):
    name = "retrieval"
    version = "2"
    feature_names = ("retrieval_cosine", "retrieval_rank", "retrieval_cosine_gap", "retrieval_cosine_z")
    pool_relative = (("retrieval_rank", "retrieval_cosine", "rank"),
                     ("retrieval_cosine_gap", "retrieval_cosine", "gap"),
                     ("retrieval_cosine_z", "retrieval_cosine", "z"))

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        cosines = np.array([c.stage_scores.get("retrieval", np.nan) for c in candidates], dtype=np.float64)
        if not len(candidates) or np.all(np.isnan(cosines)):
            return out
        out[:, 0] = cosines
        out[:, 1] = pool_ranks(cosines)
        out[:, 2] = pool_gap(cosines)
        out[:, 3] = pool_z(cosines)
        return out

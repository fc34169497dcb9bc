"""Specificity by word rarity: mean and max NIDF of the candidate's words (rare words = specific reply)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register, tokens


@register
class NidfAnnotator(Annotator):
    name = "nidf"
    version = "1"
    feature_names = ("nidf_mean", "nidf_max")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        idf = self.resources.idf
        if idf is None:
            return out
        for i, cand in enumerate(candidates):
            words = tokens(cand.text)
            if words:
                out[i, 0], out[i, 1] = idf.nidf_stats(words)  # cached per phrase by the table
        return out

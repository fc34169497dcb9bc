"""Blocklisted words in a candidate (abuse, slurs, explicit terms) as a blender feature.

The lists and their format live in ``core.blocklist`` (generation filters read the same ones).
No list for a language means NaN, not "clean".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.blocklist import Blocklist, packaged_blocklists
from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register, tokens

__all__ = ["Blocklist", "BlocklistAnnotator", "packaged_blocklists"]


@register
class BlocklistAnnotator(Annotator):
    name = "blocklist"
    version = "1"
    feature_names = ("blocklist_hits",)
    _merged: tuple[Mapping[str, Blocklist], Blocklist] | None = None

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        lists = self.resources.blocklists
        if lists is None:
            lists = self.resources.blocklists = packaged_blocklists()
        if self._merged is None or self._merged[0] is not lists:
            self._merged = (lists, Blocklist.merge(lists.values()))
        merged = self._merged[1]
        out = self.empty(len(candidates))
        for i, cand in enumerate(candidates):
            # Every list is checked: a Russian reply can carry English abuse and vice versa.
            if cand.language in lists:
                out[i, 0] = merged.hits(tokens(cand.text))
        return out

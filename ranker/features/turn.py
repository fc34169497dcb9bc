"""How well a candidate answers the last turn alone, and the last two turns, by the retrieval encoder.

The retriever's query is the whole context window, so a reply that fits the topic but not the question
just asked can still score high. Cosines against the last turn on its own and against the last exchange
are narrower views of the same pair; the blender weighs them (docs/benchmarks.md: +1.2 points R@1/10
in English, +1.5 in Russian, for the last-turn view). Bank phrases' vectors come from the index when the encoder is
index-backed, so serving pays one extra query encoding per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register
from ranker.features.pool import pool_gap


@register
class TurnAnnotator(Annotator):
    name = "turn"
    version = "2"
    feature_names = ("last_turn_cosine", "last_turn_cosine_gap", "last_two_cosine", "last_two_cosine_gap")
    windows = (1, 2)
    pool_relative = (("last_turn_cosine_gap", "last_turn_cosine", "gap"),
                     ("last_two_cosine_gap", "last_two_cosine", "gap"))

    def annotate(self, contexts: Sequence[Context], candidates: Sequence[Sequence[Candidate]]) -> list[np.ndarray]:
        """Batched over pools and windows: one query call and one passage call for the whole batch."""
        if len(contexts) != len(candidates):
            raise ValueError(f"{len(contexts)} contexts but {len(candidates)} candidate pools")
        encoder = self.resources.encoder
        if encoder is None:
            return [self.empty(len(pool)) for pool in candidates]
        flat = encoder.encode_queries([ctx.as_query_text(n) for n in self.windows for ctx in contexts])
        views = [flat[v * len(contexts):(v + 1) * len(contexts)] for v in range(len(self.windows))]
        texts = [c.text for pool in candidates for c in pool]
        passages = encoder.encode_passages(texts) if texts else np.zeros((0, views[0].shape[1]), np.float32)
        out, start = [], 0
        for i, pool in enumerate(candidates):
            block = self.empty(len(pool))
            for v, queries in enumerate(views):
                if len(pool):
                    cosines = passages[start:start + len(pool)] @ queries[i]
                    block[:, 2 * v] = cosines
                    block[:, 2 * v + 1] = pool_gap(cosines)
            start += len(pool)
            out.append(block)
        return out

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        return self.annotate([context], [candidates])[0]

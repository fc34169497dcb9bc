"""How well a candidate answers the last turn alone, by the retrieval encoder.

The retriever's query is the whole context window, so a reply that fits the topic but not the question
just asked can still score high. The cosine against the last turn on its own is a second view of the
same pair; the blender weighs the two. Bank phrases' vectors come from the index when the encoder is
index-backed, so serving pays one extra query encoding per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register


@register
class TurnAnnotator(Annotator):
    name = "turn"
    version = "1"
    feature_names = ("last_turn_cosine", "last_turn_cosine_gap")

    def annotate(self, contexts: Sequence[Context], candidates: Sequence[Sequence[Candidate]]) -> list[np.ndarray]:
        """Batched over pools: one query call and one passage call for the whole batch."""
        if len(contexts) != len(candidates):
            raise ValueError(f"{len(contexts)} contexts but {len(candidates)} candidate pools")
        encoder = self.resources.encoder
        if encoder is None:
            return [self.empty(len(pool)) for pool in candidates]
        queries = encoder.encode_queries([ctx.last_text for ctx in contexts])
        texts = [c.text for pool in candidates for c in pool]
        passages = encoder.encode_passages(texts) if texts else np.zeros((0, queries.shape[1]), np.float32)
        out, start = [], 0
        for query, pool in zip(queries, candidates, strict=True):
            block = self.empty(len(pool))
            if len(pool):
                cosines = passages[start:start + len(pool)] @ query
                block[:, 0] = cosines
                block[:, 1] = cosines - np.max(cosines)
            start += len(pool)
            out.append(block)
        return out

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        return self.annotate([context], [candidates])[0]

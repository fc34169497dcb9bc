"""Word overlap between a candidate and the context: topical relevance and parroting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.text import normalize_text
from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register, tokens
from ranker.bm25 import bm25_many, overlap
from ranker.features.pool import pool_gap


@register
class LexicalAnnotator(Annotator):
    """BM25 needs the IDF table (NaN without it); overlap and echo need nothing."""

    name = "lexical"
    version = "2"
    # bm25_context_gap: the distance to the pool's best overlap, which trees cannot work out from one row.
    feature_names = ("bm25_last", "bm25_context", "context_word_repeat", "echo", "bm25_context_gap")
    pool_relative = (("bm25_context_gap", "bm25_context", "gap"),)

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        idf = self.resources.idf
        window = context.window(self.resources.context_turns).turns
        last = set(tokens(context.last_text))
        whole = {w for t in window for w in tokens(t.text)}
        seen = {normalize_text(t.text).lower() for t in window}
        out = self.empty(len(candidates))
        for i, cand in enumerate(candidates):
            words = tokens(cand.text)
            if idf is not None:
                out[i, 0], out[i, 1] = bm25_many((last, whole), words, idf)
            out[i, 2] = overlap(whole, words)
            out[i, 3] = float(normalize_text(cand.text).lower() in seen)
        if idf is not None and len(candidates):
            out[:, 4] = pool_gap(out[:, 1])
        return out

"""Word overlap between a candidate and the context: topical relevance and parroting."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from core.text import normalize_text
from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register, tokens
from ranker.bm25 import bm25_pool
from ranker.features.pool import pool_gap

PHRASE_CACHE_SIZE = 32768  # distinct candidate texts remembered (the default bank has ~14,000 phrases)


@lru_cache(maxsize=PHRASE_CACHE_SIZE)
def _echo_key(text: str) -> str:
    """Cached: bank phrases recur across requests, and NFC + whitespace folding walks the whole text."""
    return normalize_text(text).lower()


@lru_cache(maxsize=PHRASE_CACHE_SIZE)
def _distinct(text: str) -> frozenset[str]:
    return frozenset(tokens(text))


@register
class LexicalAnnotator(Annotator):
    """BM25 needs the IDF table (NaN without it); overlap and echo need nothing.

    Every per-candidate quantity (words, distinct words, echo key, BM25 term weights) is cached by text,
    so a request pays only the set intersections with its own context; the values are the uncached ones
    exactly (``tests/unit/test_feature_speed.py`` keeps the old code path as the reference).
    """

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
        seen = {_echo_key(t.text) for t in window}
        out = self.empty(len(candidates))
        if idf is not None and len(candidates):
            out[:, 0:2] = bm25_pool((last, whole), [tokens(cand.text) for cand in candidates], idf)
        for i, cand in enumerate(candidates):
            distinct = _distinct(cand.text)
            out[i, 2] = len(distinct & whole) / len(distinct) if distinct else 0.0
            out[i, 3] = float(_echo_key(cand.text) in seen)
        if idf is not None and len(candidates):
            out[:, 4] = pool_gap(out[:, 1])
        return out

"""Okapi BM25 between two short texts, scoring how much of the query a candidate reply echoes.

The candidate plays the document; the dialogue context plays the query. Document-length statistics
come from the :class:`~ranker.idf.IdfTable` so scores are comparable across candidates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from ranker.idf import IdfTable

K1 = 1.2
B = 0.75


def bm25(query: Sequence[str], document: Sequence[str], idf: IdfTable, k1: float = K1, b: float = B) -> float:
    """Sum over distinct query words of idf * saturated term frequency in ``document``."""
    return bm25_many([set(query)], document, idf, k1, b)[0]


def bm25_many(queries: Sequence[AbstractSet[str]], document: Sequence[str], idf: IdfTable,
              k1: float = K1, b: float = B) -> list[float]:
    """BM25 of one document against several distinct-word queries, counting the document once."""
    if not document:
        return [0.0] * len(queries)
    tf = Counter(document)
    norm = k1 * (1 - b + b * len(document) / max(idf.avg_doc_len, 1e-9))
    words = tf.keys()
    shared = set().union(*(words & q for q in queries))
    weights = {w: idf.bm25_idf(w) * tf[w] * (k1 + 1) / (tf[w] + norm) for w in shared}
    return [sum(weights[w] for w in words & q) for q in queries]


def overlap(query: Sequence[str], document: Sequence[str]) -> float:
    """Share of the document's distinct words that also occur in the query (0 when the document is empty)."""
    doc = set(document)
    return len(doc & set(query)) / len(doc) if doc else 0.0

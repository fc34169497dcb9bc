"""Okapi BM25 between two short texts, scoring how much of the query a candidate reply echoes.

The candidate plays the document; the dialogue context plays the query. Document-length statistics
come from the :class:`~ranker.idf.IdfTable` so scores are comparable across candidates.

:func:`bm25_pool` is the request-path form: a pool of candidates against a few queries, with each
candidate's term weights taken from the table's per-phrase cache instead of being recounted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import numpy as np

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


def bm25_pool(queries: Sequence[AbstractSet[str]], documents: Sequence[tuple[str, ...]], idf: IdfTable,
              k1: float = K1, b: float = B) -> np.ndarray:
    """(len(documents), len(queries)) float64: row i is ``bm25_many(queries, documents[i], idf)``, bit for bit.

    Documents are word tuples (``ranker.annotator_base.tokens``), the key of the table's per-phrase cache;
    only the intersection with each query is left to do per request.
    """
    out = np.zeros((len(documents), len(queries)), dtype=np.float64)
    for i, document in enumerate(documents):
        if not document:
            continue
        weights = idf.bm25_weights(document, k1, b)
        words = weights.keys()  # same keys, same order as bm25_many's term counts: same sums
        for j, query in enumerate(queries):
            out[i, j] = sum(weights[w] for w in words & query)
    return out


def overlap(query: Sequence[str], document: Sequence[str]) -> float:
    """Share of the document's distinct words that also occur in the query (0 when the document is empty)."""
    doc = set(document)
    return len(doc & set(query)) / len(doc) if doc else 0.0

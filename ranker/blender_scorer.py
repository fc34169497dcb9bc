"""The trained blender as a ranking-evaluation scorer, fed the same stage scores training and serving feed it.

The blender's strongest input is the retriever's cosine, which a bare list of texts does not carry.
Scoring texts without it would evaluate a model on feature columns it never saw empty, so every pool
gets the bi-encoder's query-vs-passage cosine (the retrieval annotator ranks it within the pool, as in
training and serving), and the features then come from
the blender's own annotators (:meth:`ranker.blender.Blender.features`), the code path of training and
serving; nothing here computes a feature.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from itertools import islice

import numpy as np

from core.text import detect_language
from core.types import SOURCE_BANK, Candidate, Context, QueryPassageEncoder
from ranker.blender import RETRAIN_HINT, Blender, BlenderMismatchError


class CachingEncoder:
    """Query and passage vectors remembered by text.

    Handing one instance to the blender scorer and to the bi-encoder scorer of the same model means an
    evaluation encodes each context and each text once, however many scorers read it. ``seed_passages``
    adds vectors that are never evicted (a bank's, from its index); ``max_cached`` bounds the rest, so a
    long-running server that sees new contexts forever does not grow without end.
    """

    def __init__(self, encoder: QueryPassageEncoder, max_cached: int | None = None) -> None:
        if max_cached is not None and max_cached < 1:
            raise ValueError(f"max_cached must be at least 1 (or None for no bound), got {max_cached}")
        self.encoder = encoder
        self.identity: str | None = getattr(encoder, "identity", None)
        self.manifest = getattr(encoder, "manifest", None)
        self.dim: int = int(getattr(encoder, "dim", 1))
        self.max_cached = max_cached
        self._seeded: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._queries: dict[str, np.ndarray] = {}
        self._passages: dict[str, np.ndarray] = {}

    def seed_passages(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._seeded.update(zip(texts, vectors, strict=True))

    def _lookup(self, cache: dict[str, np.ndarray], texts: Sequence[str],
                encode: Callable[[list[str]], np.ndarray], fixed: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:  # a server calls from many threads; encoding itself runs unlocked
            known = {t: cache[t] for t in texts if t in cache}
        missing = [t for t in dict.fromkeys(texts) if t not in fixed and t not in known]
        fresh = dict(zip(missing, encode(missing), strict=True)) if missing else {}
        vectors = [fixed[t] if t in fixed else fresh.get(t, known.get(t)) for t in texts]
        with self._lock:
            cache.update(fresh)
            if self.max_cached is not None:
                for old in list(islice(cache, max(len(cache) - self.max_cached, 0))):
                    del cache[old]  # dicts keep insertion order: the oldest go first
        return np.stack(vectors) if len(texts) else np.zeros((0, self.dim), dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._queries, texts, self.encoder.encode_queries, {})

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._passages, texts, self.encoder.encode_passages, self._seeded)


def best_first(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, highest first; ties keep index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max(k, 0)].tolist()


class BlenderScorer:
    """``Scorer`` and ``BankSearcher`` for :mod:`ranker.evaluation`: the blender's raw scores per candidate.

    ``score`` treats each candidate list as the pool. Every candidate is a bank phrase in the language of
    the context, the language the retriever would have been asked for.

    ``top_k`` does what a deployment does with a whole bank: the bi-encoder retrieves its
    ``rerank_depth`` best texts (the serving pool) and the blender reorders only those,
    so a gold the retriever misses cannot be found, exactly as in production.
    """

    def __init__(self, blender: Blender, encoder: QueryPassageEncoder, *, context_turns: int = 3,
                 rerank_depth: int = 50, name: str = "blender") -> None:
        if not blender.annotators:
            raise ValueError("the blender has no annotators; load it with Blender.load or dialog.ranker_setup")
        if rerank_depth < 1:
            raise ValueError(f"need rerank_depth >= 1, got {rerank_depth}")
        trained, live = blender.manifest.resources.get("encoder"), getattr(encoder, "identity", None)
        if trained and live and trained != live:
            raise BlenderMismatchError(f"blender {blender.version} learned from retrieval scores of encoder "
                                       f"{trained}, but this evaluation encodes with {live}; evaluate with "
                                       f"{trained} or {RETRAIN_HINT}")
        self.blender, self.name = blender, name
        self.encoder = encoder if isinstance(encoder, CachingEncoder) else CachingEncoder(encoder)
        self.context_turns, self.rerank_depth = context_turns, rerank_depth

    def _queries(self, contexts: Sequence[Context]) -> np.ndarray:
        return self.encoder.encode_queries([ctx.as_query_text(self.context_turns) for ctx in contexts])

    def _features(self, context: Context, texts: Sequence[str], cosines: np.ndarray) -> np.ndarray:
        language = detect_language(context.as_query_text(0))
        pool = [Candidate(text, SOURCE_BANK, language, stage_scores={"retrieval": float(cosine)})
                for text, cosine in zip(texts, cosines, strict=True)]
        return self.blender.features(context, pool)

    def _raw(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """One booster call for every pool: raw scores are per row, so batching changes nothing but speed."""
        if not blocks:
            return []
        flat = self.blender.raw_scores(np.vstack(blocks))
        return np.split(flat, np.cumsum([len(b) for b in blocks])[:-1])

    def features(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """The feature matrix of each pool, columns in ``blender.feature_names`` order."""
        queries = self._queries(contexts)
        out = []
        for context, texts, query in zip(contexts, candidate_lists, queries, strict=True):
            cosines = self.encoder.encode_passages(list(texts)) @ query if len(texts) else np.zeros(0)
            out.append(self._features(context, list(texts), cosines))
        return out

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return self._raw(self.features(contexts, candidate_lists))

    def top_k(self, contexts: Sequence[Context], bank: Sequence[str], k: int) -> list[list[int]]:
        bank = list(bank)
        if not bank or not contexts:
            return [[] for _ in contexts]
        cosines = self._queries(contexts) @ self.encoder.encode_passages(bank).T
        shortlists = [best_first(row, self.rerank_depth) for row in cosines]
        blocks = [self._features(ctx, [bank[i] for i in rows], cosines[c, rows])
                  for c, (ctx, rows) in enumerate(zip(contexts, shortlists, strict=True))]
        return [[rows[j] for j in best_first(scores, k)]
                for rows, scores in zip(shortlists, self._raw(blocks), strict=True)]

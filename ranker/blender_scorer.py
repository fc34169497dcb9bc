"""The trained blender as a ranking-evaluation scorer, fed the same stage scores training and serving feed it.

The blender's strongest inputs are the retriever's cosine and rank, which a bare list of texts does not
carry. Scoring texts without them would evaluate a model on feature columns it never saw empty, so every
pool gets the bi-encoder's query-vs-passage cosine and a retrieval rank, and the features then come from
the blender's own annotators (:meth:`ranker.blender.Blender.features`), the code path of training and
serving; nothing here computes a feature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.text import detect_language
from core.types import SOURCE_BANK, Candidate, Context
from ranker.blender import RETRAIN_HINT, Blender, BlenderMismatchError
from ranker.dataset import FIRST_RANK, BuilderConfig
from ranker.evaluation import QueryPassageEncoder


class CachingEncoder:
    """Query and passage vectors remembered by text.

    Handing one instance to the blender scorer and to the bi-encoder scorer of the same model means an
    evaluation encodes each context and each text once, however many scorers read it.
    """

    def __init__(self, encoder: QueryPassageEncoder) -> None:
        self.encoder = encoder
        self.identity: str | None = getattr(encoder, "identity", None)
        self.manifest = getattr(encoder, "manifest", None)
        self.dim: int = int(getattr(encoder, "dim", 1))
        self._queries: dict[str, np.ndarray] = {}
        self._passages: dict[str, np.ndarray] = {}

    def _lookup(self, cache: dict[str, np.ndarray], texts: Sequence[str],
                encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, encode(missing), strict=True))
        return np.stack([cache[t] for t in texts]) if len(texts) else np.zeros((0, self.dim), dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._queries, texts, self.encoder.encode_queries)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._passages, texts, self.encoder.encode_passages)


def best_first(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, highest first; ties keep index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max(k, 0)].tolist()


def pool_stage_scores(cosines: np.ndarray, shortlist: int) -> list[dict[str, float]]:
    """Retrieval stage scores for a pool, numbered as ``ranker.dataset`` numbers a training pool.

    The pool's ``shortlist`` best texts by cosine play the retriever's hits (ranks 1, 2, ... by position,
    as ``BankRetriever`` numbers them); every other text gets the rank the dataset builder gives a bank
    phrase the retriever did not return: the best rank plus the number of hits with a higher cosine.
    """
    cosines = np.asarray(cosines, dtype=np.float64)
    order = np.argsort(-cosines, kind="stable")
    hits = order[:max(shortlist, 0)]
    ranks = np.empty(len(cosines), dtype=np.float64)
    ranks[hits] = FIRST_RANK + np.arange(len(hits))
    for i in order[len(hits):]:
        ranks[i] = FIRST_RANK + float(np.sum(cosines[hits] > cosines[i]))
    return [{"retrieval": float(c), "retrieval_rank": float(r)} for c, r in zip(cosines, ranks, strict=True)]


class BlenderScorer:
    """``Scorer`` and ``BankSearcher`` for :mod:`ranker.evaluation`: the blender's raw scores per candidate.

    ``score`` treats each candidate list as the pool: the top ``shortlist`` texts by cosine are the
    retriever's hits (``BuilderConfig.k_retrieved`` by default, as in training pools), the rest are
    ranked like training's non-retrieved phrases. Every candidate is a bank phrase in the language of
    the context, the language the retriever would have been asked for.

    ``top_k`` does what a deployment does with a whole bank: the bi-encoder retrieves its
    ``rerank_depth`` best texts (ranks 1..depth, the serving pool) and the blender reorders only those,
    so a gold the retriever misses cannot be found, exactly as in production.
    """

    def __init__(self, blender: Blender, encoder: QueryPassageEncoder, *, context_turns: int = 3,
                 rerank_depth: int = 50, shortlist: int = BuilderConfig().k_retrieved, name: str = "blender") -> None:
        if not blender.annotators:
            raise ValueError("the blender has no annotators; load it with Blender.load or dialog.ranker_setup")
        if rerank_depth < 1 or shortlist < 0:
            raise ValueError(f"need rerank_depth >= 1 and shortlist >= 0, got {rerank_depth} and {shortlist}")
        trained, live = blender.manifest.resources.get("encoder"), getattr(encoder, "identity", None)
        if trained and live and trained != live:
            raise BlenderMismatchError(f"blender {blender.version} learned from retrieval scores of encoder "
                                       f"{trained}, but this evaluation encodes with {live}; evaluate with "
                                       f"{trained} or {RETRAIN_HINT}")
        self.blender, self.name = blender, name
        self.encoder = encoder if isinstance(encoder, CachingEncoder) else CachingEncoder(encoder)
        self.context_turns, self.rerank_depth, self.shortlist = context_turns, rerank_depth, shortlist

    def _queries(self, contexts: Sequence[Context]) -> np.ndarray:
        return self.encoder.encode_queries([ctx.as_query_text(self.context_turns) for ctx in contexts])

    def _features(self, context: Context, texts: Sequence[str], stages: list[dict[str, float]]) -> np.ndarray:
        language = detect_language(context.as_query_text(0))
        pool = [Candidate(text, SOURCE_BANK, language, stage_scores=stage)
                for text, stage in zip(texts, stages, strict=True)]
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
            out.append(self._features(context, list(texts), pool_stage_scores(cosines, self.shortlist)))
        return out

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return self._raw(self.features(contexts, candidate_lists))

    def top_k(self, contexts: Sequence[Context], bank: Sequence[str], k: int) -> list[list[int]]:
        bank = list(bank)
        if not bank or not contexts:
            return [[] for _ in contexts]
        cosines = self._queries(contexts) @ self.encoder.encode_passages(bank).T
        shortlists = [best_first(row, self.rerank_depth) for row in cosines]
        blocks = [self._features(ctx, [bank[i] for i in rows], pool_stage_scores(cosines[c, rows], len(rows)))
                  for c, (ctx, rows) in enumerate(zip(contexts, shortlists, strict=True))]
        return [[rows[j] for j in best_first(scores, k)]
                for rows, scores in zip(shortlists, self._raw(blocks), strict=True)]

"""The trained blender as a ranking-evaluation scorer, fed the same stage scores training and serving feed it.

The blender's strongest input is the retriever's cosine, which a bare list of texts does not carry.
Scoring texts without it would evaluate a model on feature columns it never saw empty, so every pool
gets the bi-encoder's query-vs-passage cosine (the retrieval annotator ranks it within the pool, as in
training and serving), and the features then come from
the blender's own annotators (:meth:`ranker.blender.Blender.features`), the code path of training and
serving; nothing here computes a feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.text import detect_language
from core.types import SOURCE_BANK, Candidate, Context, QueryPassageEncoder
from ranker.blender import RETRAIN_HINT, Blender, BlenderMismatchError


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
            raise ValueError("the blender has no annotators; load it with rl.blender_setup.load_blender")
        if rerank_depth < 1:
            raise ValueError(f"need rerank_depth >= 1, got {rerank_depth}")
        trained, live = blender.manifest.resources.get("encoder"), getattr(encoder, "identity", None)
        if trained and live and trained != live:
            raise BlenderMismatchError(f"blender {blender.version} learned from retrieval scores of encoder "
                                       f"{trained}, but this evaluation encodes with {live}; evaluate with "
                                       f"{trained} or {RETRAIN_HINT}")
        self.blender, self.name = blender, name
        # Pass a caching encoder (retriever.encoder_cache) shared with the other scorers: each text is then
        # encoded once per evaluation, however many scorers read it.
        self.encoder = encoder
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

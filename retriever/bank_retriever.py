"""The bank as a candidate source: the dialogue context in, approved phrases of the reply language out."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from core.types import SOURCE_BANK, Candidate, Context, QueryPassageEncoder
from retriever.bank_index import BankIndex, BankLike
from retriever.microbatch import MicroBatcher

APPROVED = "approved"
# Extra hits fetched so that a phrase refused by the status check does not shorten the list.
_SLACK = 8


class BankRetriever:
    """``CandidateSource`` over a loaded :class:`BankIndex`.

    With a ``microbatcher`` (wrapping ``encoder.encode_queries``) concurrent requests share encoder
    calls; without one each request encodes on its own. ``encoder`` is anything with ``encode_queries``
    and ``dim`` (serving passes its request-scoped encoder, whose query vectors are already computed for
    the request). ``retrieval_rank`` is 1 for the best hit.
    """

    name = SOURCE_BANK

    def __init__(self, encoder: QueryPassageEncoder, bank_index: BankIndex, bank: BankLike, context_turns: int,
                 microbatcher: MicroBatcher | None = None) -> None:
        if context_turns < 0:
            raise ValueError(f"context_turns must be >= 0 (0 means the whole dialogue), got {context_turns}")
        dim = getattr(encoder, "dim", None)
        if bank_index.manifest.dim != dim:
            raise ValueError(f"index dimension {bank_index.manifest.dim} does not match the encoder's "
                             f"{dim}; run `repliq index build`")
        self.encoder = encoder
        self.bank_index = bank_index
        self.bank = bank
        self.context_turns = context_turns
        self.microbatcher = microbatcher

    def is_current(self) -> bool:
        """False once the bank has moved past the indexed revision (time to reload the index)."""
        return self.bank.revision == self.bank_index.manifest.bank_revision

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.microbatcher is not None:
            return self.microbatcher.submit(texts)
        return self.encoder.encode_queries(texts)

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        """Top-k approved phrases; an empty dialogue or an already-passed deadline gives none."""
        if k <= 0 or time.monotonic() >= deadline:
            return []
        query = context.as_query_text(self.context_turns)
        if not query.strip():
            return []
        return self._candidates(self._encode([query]), language, k)[0]

    def retrieve_many(self, contexts: Sequence[Context], language: str, k: int) -> list[list[Candidate]]:
        """Batched retrieval for evaluation: one encoder pass and one index search for all contexts."""
        if k <= 0 or not contexts:
            return [[] for _ in contexts]
        queries = [context.as_query_text(self.context_turns) for context in contexts]
        results = self._candidates(self.encoder.encode_queries(queries), language, k)
        return [result if query.strip() else [] for query, result in zip(queries, results, strict=True)]

    def _candidates(self, vectors: np.ndarray, language: str, k: int) -> list[list[Candidate]]:
        out = []
        index = self.bank_index  # one snapshot per call: a hot publish may swap the attribute meanwhile
        for hits in index.search(vectors, language, k + _SLACK):
            row: list[Candidate] = []
            for phrase_id, score in hits:
                info = index.phrase(phrase_id)
                if info is None or info.status != APPROVED or info.language != language:
                    continue
                row.append(Candidate(
                    text=info.text, source=SOURCE_BANK, language=info.language, phrase_id=phrase_id,
                    score=score, stage_scores={"retrieval": score, "retrieval_rank": float(len(row) + 1)}))
                if len(row) == k:
                    break
            out.append(row)
        return out

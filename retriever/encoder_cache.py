"""One encoder cache for everyone: query and passage vectors remembered by text.

Training, evaluation, RL tuning, reward models and serving all read the same texts many times (a bank
phrase recurs in every pool). One bounded, thread-safe cache, optionally seeded from a bank index so
bank phrases are never re-encoded, serves them all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from core.types import QueryPassageEncoder
from retriever.bank_index import BankIndex, BankIndexError, load_index

if TYPE_CHECKING:
    from core.bank.store import PhraseBank
    from core.config import Settings

log = logging.getLogger(__name__)


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
        # Distinct query texts looked up and found (a server's frequent openers), for its metrics.
        self.query_lookups = 0
        self.query_hits = 0

    def seed_passages(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._seeded.update(zip(texts, vectors, strict=True))

    def forget(self) -> None:
        """Drop every vector but the seeded ones: what is encoded next no longer depends on what came before
        (an encoder's rows shift in the last bits with the batch they are encoded in)."""
        with self._lock:
            self._queries.clear()
            self._passages.clear()

    def _lookup(self, cache: dict[str, np.ndarray], texts: Sequence[str],
                encode: Callable[[list[str]], np.ndarray], fixed: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:  # a server calls from many threads; encoding itself runs unlocked
            known = {t: cache[t] for t in texts if t in cache}
            for text in known:  # least recently used first: frequent texts stay cached
                cache[text] = cache.pop(text)
            if cache is self._queries:
                self.query_lookups += len(dict.fromkeys(texts))
                self.query_hits += len(known)
        missing = [t for t in dict.fromkeys(texts) if t not in fixed and t not in known]
        fresh = dict(zip(missing, encode(missing), strict=True)) if missing else {}
        vectors = [fixed[t] if t in fixed else fresh.get(t, known.get(t)) for t in texts]
        with self._lock:
            cache.update(fresh)
            if self.max_cached is not None:
                for old in list(islice(cache, max(len(cache) - self.max_cached, 0))):
                    del cache[old]  # dicts keep insertion order: the least recently used go first
        return np.stack(vectors) if len(texts) else np.zeros((0, self.dim), dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._queries, texts, self.encoder.encode_queries, {})

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(self._passages, texts, self.encoder.encode_passages, self._seeded)

    @classmethod
    def seeded_from_index(cls, encoder: QueryPassageEncoder, bank_index: BankIndex,
                          max_cached: int | None = None) -> CachingEncoder:
        """A cache whose passage side starts with the index's bank vectors.

        Bank phrases already have vectors in the index, and every pool of training, evaluation, RL
        tuning and serving is mostly bank phrases: encoding dominates those jobs, so the vectors are
        looked up instead of recomputed.
        """
        cache = cls(encoder, max_cached=max_cached)
        for language in bank_index.languages:
            shard = bank_index.shard(language)
            ids = shard.ids.tolist()
            known = [(info.text, vector) for pid, vector in zip(ids, shard.vectors(ids), strict=True)
                     if (info := bank_index.phrase(pid)) is not None]
            if known:
                cache.seed_passages([t for t, _ in known], np.stack([v for _, v in known]))
        return cache


def cached(encoder: QueryPassageEncoder, max_cached: int | None = None) -> CachingEncoder:
    """``encoder`` itself when it already caches, else a cache around it."""
    return encoder if isinstance(encoder, CachingEncoder) else CachingEncoder(encoder, max_cached=max_cached)


def index_backed_encoder(settings: Settings, encoder: QueryPassageEncoder, bank: PhraseBank) -> CachingEncoder:
    """The workspace encoder with the live index's bank vectors, or a plain cache without a current index
    (the caller's work is then only slower, never wrong)."""
    try:
        return CachingEncoder.seeded_from_index(encoder, load_index(settings, encoder, bank))
    except BankIndexError as exc:
        log.warning("encoding bank phrases afresh: %s", exc)
        return CachingEncoder(encoder)

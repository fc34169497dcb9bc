"""Encoder vectors kept on disk by content, so the RL dev set's contexts are encoded once per encoder, ever.

Building ~2,000 dev pools encodes every context three times (the windows the turn and retrieval features
read) and the reward models encode it again: on a shared CPU that is most of an RL evaluation's time.
:class:`StoredEncoder` wraps the workspace encoder (query adapter included) and answers from a store
keyed by the encoder's identity and its adapter's, encoding only what the store lacks; :func:`prefetch`
fills it ahead of a run, shortest texts first. The storage itself is ``retriever.embedding_store`` (the
query adapter's trainer uses it too): chunks written atomically as they are encoded, so a kill loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retriever.adapter import adapter_identity
from retriever.embedding_store import EmbeddingStore

log = logging.getLogger("repliq.rl")
KINDS = ("query", "passage")


class VectorStore:
    """``(kind, text) -> vector`` for one encoder + adapter: one :class:`EmbeddingStore` per kind."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.stores = {kind: EmbeddingStore(self.path.parent, self.path.name, kind) for kind in KINDS}

    @classmethod
    def for_encoder(cls, directory: Path, encoder: Any) -> VectorStore:
        """The store of ``encoder`` (its identity and its query adapter's) under ``directory``."""
        key = f"{getattr(encoder, 'identity', None)}|{adapter_identity(encoder)}"
        return cls(Path(directory) / hashlib.sha256(key.encode("utf-8")).hexdigest()[:20])

    def __len__(self) -> int:
        return sum(len(store) for store in self.stores.values())


class StoredEncoder:
    """The encoder behind a :class:`VectorStore`: stored vectors are returned, the rest encoded and stored."""

    def __init__(self, encoder: Any, store: VectorStore) -> None:
        self.encoder, self.store = encoder, store
        self.identity = getattr(encoder, "identity", None)
        self.manifest = getattr(encoder, "manifest", None)
        self.dim = int(getattr(encoder, "dim", 1))

    def __getattr__(self, name: str) -> Any:  # anything else (backend, prefixes) is the wrapped encoder's
        return getattr(self.encoder, name)

    def _vectors(self, kind: str, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.store.stores[kind].encode(list(texts), encode)

    def encode_queries(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self._vectors("query", texts, self.encoder.encode_queries)

    def encode_passages(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self._vectors("passage", texts, self.encoder.encode_passages)


def prefetch(encoder: StoredEncoder, queries: Sequence[str], passages: Sequence[str], chunk: int = 512,
             say: Callable[[str], None] = log.info) -> int:
    """Encode what the store lacks, shortest texts first (batches of similar length pad least); returns how many."""
    before = len(encoder.store)
    for kind, texts in (("query", queries), ("passage", passages)):
        ordered = sorted(dict.fromkeys(texts), key=len)
        encode = encoder.encoder.encode_queries if kind == "query" else encoder.encoder.encode_passages
        encoder.store.stores[kind].encode(ordered, encode, chunk_size=chunk)
    encoded = len(encoder.store) - before
    say(f"encoded {encoded} texts ({len(encoder.store)} stored)")
    return encoded

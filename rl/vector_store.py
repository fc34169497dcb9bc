"""Encoder vectors kept on disk by content, so the RL dev set's contexts are encoded once per encoder, ever.

Building ~2,000 dev pools encodes every context three times (the windows the turn and retrieval features
read) and the reward models encode it again: on a shared CPU that is most of an RL evaluation's time.
:class:`StoredEncoder` wraps the workspace encoder (query adapter included) and answers from a store
keyed by the encoder's identity and its adapter's, encoding only what the store lacks; :func:`prefetch`
fills it ahead of a run in length-sorted chunks, saved as it goes, so a killed prefetch resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes
from retriever.adapter import adapter_identity

log = logging.getLogger("repliq.rl")
KINDS = ("query", "passage")


class VectorStore:
    """``(kind, text) -> vector`` for one encoder + adapter, in one .npz rewritten atomically on save."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[tuple[str, str], np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    keys = json.loads(str(npz["keys"]))
                    for (kind, text), vector in zip(keys, npz["vectors"], strict=True):
                        self.rows[(kind, text)] = vector
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path} is not a vector store ({exc}); delete it to encode afresh") from exc

    @classmethod
    def for_encoder(cls, directory: Path, encoder: Any) -> VectorStore:
        """The store of ``encoder`` (its identity and its query adapter's) under ``directory``."""
        key = f"{getattr(encoder, 'identity', None)}|{adapter_identity(encoder)}"
        return cls(Path(directory) / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:20]}.npz")

    def save(self) -> None:
        if not self.rows:
            return
        keys = list(self.rows)
        buffer = io.BytesIO()
        # Texts as one JSON string: a numpy string array pads every text to the longest one.
        np.savez(buffer, keys=np.array(json.dumps(keys, ensure_ascii=False)),
                 vectors=np.stack([self.rows[k] for k in keys]).astype(np.float32))
        atomic_write_bytes(self.path, buffer.getvalue())


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
        missing = [t for t in dict.fromkeys(texts) if (kind, t) not in self.store.rows]
        if missing:
            self.store.rows.update(((kind, t), v) for t, v in zip(missing, encode(missing), strict=True))
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.store.rows[(kind, t)] for t in texts])

    def encode_queries(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self._vectors("query", texts, self.encoder.encode_queries)

    def encode_passages(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self._vectors("passage", texts, self.encoder.encode_passages)


def prefetch(encoder: StoredEncoder, queries: Sequence[str], passages: Sequence[str], chunk: int = 512,
             save_every_s: float = 60.0, say: Callable[[str], None] = log.info) -> int:
    """Encode what the store lacks, longest texts last, saving every ``save_every_s``; returns how many."""
    todo = [(kind, text) for kind, texts in (("query", queries), ("passage", passages))
            for text in dict.fromkeys(texts) if (kind, text) not in encoder.store.rows]
    todo.sort(key=lambda row: (row[0], len(row[1])))
    saved_at = time.monotonic()
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        for kind in KINDS:
            texts = [t for k, t in part if k == kind]
            if texts:
                (encoder.encode_queries if kind == "query" else encoder.encode_passages)(texts)
        say(f"encoded {min(start + chunk, len(todo))} of {len(todo)} texts")
        if time.monotonic() - saved_at >= save_every_s:
            encoder.store.save()
            saved_at = time.monotonic()
    encoder.store.save()
    return len(todo)

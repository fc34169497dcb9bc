"""Frozen embeddings on disk, keyed by encoder identity, side (query/passage) and text.

Jobs that train on frozen vectors (the query adapter) encode tens of thousands of texts; on a 2-core
CPU that is the whole cost. The store makes such a job resumable after a kill (each chunk is written
atomically as it finishes) and makes a rerun with more pairs pay only for the new texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.atomic import atomic_directory

Encode = Callable[[list[str]], np.ndarray]


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class EmbeddingStore:
    """Append-only chunks of (key, vector) under ``root/<safe encoder id>/<side>/``."""

    def __init__(self, root: Path, encoder_identity: str, side: str) -> None:
        if side not in ("query", "passage"):
            raise ValueError(f"side must be 'query' or 'passage', got {side!r}")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_identity)
        self.directory = Path(root) / safe / side
        self._vectors: dict[str, np.ndarray] = {}
        for chunk in sorted(self.directory.glob("chunk-*")):
            try:
                with np.load(chunk / "vectors.npz") as data:
                    self._vectors.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
            except (OSError, ValueError, KeyError):
                continue  # a chunk from a crashed writer is incomplete by construction: re-encode its texts

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, texts: Sequence[str], encode: Encode, chunk_size: int = 512,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors for ``texts``: stored ones read, missing ones encoded chunk by chunk and stored."""
        keys = [_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        text_of = dict(zip(keys, texts, strict=True))
        if progress:
            progress(len(set(keys)) - len(missing))
        for start in range(0, len(missing), chunk_size):
            part = missing[start:start + chunk_size]
            vectors = np.asarray(encode([text_of[k] for k in part]), dtype=np.float32)
            number = len(list(self.directory.glob("chunk-*")))
            with atomic_directory(self.directory / f"chunk-{number:06d}") as scratch:
                np.savez(scratch / "vectors.npz", keys=np.array(part), vectors=vectors)
            self._vectors.update(zip(part, vectors, strict=True))
            if progress:
                progress(len(part))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys])

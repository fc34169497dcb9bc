"""The prompt retriever as served: demonstrations for a dialogue, from the pool, by a trained query map.

Query side: the frozen default encoder's query vector of the dialogue, through the prompt adapter
(:mod:`retriever.prompt_train`). Passage side: the same encoder's passage vectors of the pool's
excerpts, in one FAISS index per language (:class:`retriever.index.VectorIndex`, ids are pool ids), so
a Russian dialogue never gets an English demonstration and an empty language simply returns nothing.

On disk (``artifacts/prompt-retriever``): ``manifest.json`` (kind ``prompt-retriever``; lineage: the
LM whose scores trained it, the pool's hash, the encoder), ``adapter/`` and ``index-<lang>/``. Loading
refuses a pool other than the one it was built on, and an encoder other than the one its vectors
came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import ArtifactManifest, check_lineage, load_manifest, package_versions, save_manifest
from core.atomic import atomic_directory, sha256_json
from core.config import RetrievalConfig, Settings
from core.types import Context, QueryPassageEncoder
from retriever.adapter import QueryAdapter, load_adapter, save_adapter
from retriever.embedding_store import EmbeddingStore
from retriever.index import VectorIndex
from retriever.prompt_pool import Demonstration, PromptPool

KIND = "prompt-retriever"
RETRIEVER_DIR = "prompt-retriever"  # under <home>/artifacts
ADAPTER_DIR = "adapter"


def _index_dir(language: str) -> str:
    return f"index-{''.join(c for c in language if c.isalnum())}"


class PromptRetriever:
    """Top-k demonstrations of the dialogue's language; ``adapter=None`` is the plain base encoder."""

    def __init__(self, pool: PromptPool, encoder: QueryPassageEncoder, indexes: dict[str, VectorIndex],
                 adapter: QueryAdapter | None, context_turns: int = 3) -> None:
        self.pool, self.encoder, self.indexes, self.adapter = pool, encoder, indexes, adapter
        self.context_turns = context_turns

    @classmethod
    def build(cls, pool: PromptPool, encoder: QueryPassageEncoder, adapter: QueryAdapter | None,
              passages: np.ndarray | None = None, context_turns: int = 3) -> PromptRetriever:
        """Index the pool (``passages``: its precomputed passage vectors, row = pool id)."""
        if passages is None:
            passages = encoder.encode_passages([d.passage_text for d in pool.demonstrations])
        indexes = {}
        for language in sorted({d.language for d in pool.demonstrations}):
            ids = pool.ids_of(language)
            indexes[language] = VectorIndex.build(ids, passages[ids], RetrievalConfig(), kind="flat")
        return cls(pool, encoder, indexes, adapter, context_turns)

    def query_vectors(self, contexts: Sequence[Context]) -> np.ndarray:
        vectors = self.encoder.encode_queries([c.as_query_text(self.context_turns) for c in contexts])
        return self.adapter.apply(vectors) if self.adapter is not None else np.asarray(vectors, dtype=np.float32)

    def retrieve(self, context: Context, language: str, k: int,
                 exclude_conversation: str | None = None) -> list[Demonstration]:
        """Best first; fewer than ``k`` (or none) when the language's pool is that small (or empty)."""
        return self.retrieve_many([context], [language], k, exclude_conversation)[0]

    def retrieve_many(self, contexts: Sequence[Context], languages: Sequence[str], k: int,
                      exclude_conversation: str | None = None) -> list[list[Demonstration]]:
        if k < 1 or not contexts:
            return [[] for _ in contexts]
        queries = self.query_vectors(contexts)
        out = []
        for row, language in enumerate(languages):
            index = self.indexes.get(language)
            if index is None or not len(index):
                out.append([])
                continue
            _, ids = index.search(queries[row:row + 1], min(len(index), k + 8))
            found = [self.pool.by_id(int(i)) for i in ids[0] if i >= 0]
            found = [d for d in found if d.conversation_id != exclude_conversation]
            out.append(found[:k])
        return out


def save_prompt_retriever(directory: Path, retriever: PromptRetriever, *, lm_id: str, config: dict[str, Any],
                          metrics: dict[str, Any], data_sha256: str) -> ArtifactManifest:
    """Adapter, indexes and manifest written together, atomically."""
    if retriever.adapter is None:
        raise ValueError("a prompt retriever is saved with its trained adapter; train one first")
    encoder_id = str(getattr(retriever.encoder, "identity", "") or "unknown")
    with atomic_directory(Path(directory)) as scratch:
        save_adapter(scratch / ADAPTER_DIR, retriever.adapter, config=config, data_sha256=data_sha256,
                     metrics=metrics)
        checksums = {language: index.save(scratch / _index_dir(language))
                     for language, index in retriever.indexes.items()}
        manifest = ArtifactManifest(
            kind=KIND, identity=sha256_json({"adapter": retriever.adapter.digest, "indexes": checksums}),
            config=config, data_sha256=data_sha256,
            lineage={"lm": lm_id, "prompt-pool": retriever.pool.ref, "encoder": encoder_id},
            versions=package_versions("numpy", "torch", "faiss-cpu"), metrics=metrics,
            details={"index_checksums": checksums, "context_turns": retriever.context_turns})
        save_manifest(scratch / "manifest.json", manifest)
    return manifest


def load_prompt_retriever(directory: Path, pool: PromptPool, encoder: QueryPassageEncoder,
                          ) -> tuple[PromptRetriever, ArtifactManifest]:
    """The retriever in ``directory``, refused when built on another pool or another encoder."""
    directory = Path(directory)
    manifest = load_manifest(directory, KIND)
    check_lineage(manifest, "prompt-pool", pool.ref, directory)
    encoder_id = getattr(encoder, "identity", None)
    if encoder_id is not None:
        check_lineage(manifest, "encoder", str(encoder_id), directory)
    adapter, _ = load_adapter(directory / ADAPTER_DIR, manifest.lineage.get("encoder"))
    checksums = dict(manifest.details.get("index_checksums") or {})
    indexes = {}
    for language, checksum in checksums.items():
        # A mismatch raises IndexChecksumError naming the directory.
        indexes[language] = VectorIndex.load(directory / _index_dir(language), RetrievalConfig(),
                                             expected_checksum=str(checksum))
    turns = int(manifest.details.get("context_turns", 3))
    return PromptRetriever(pool, encoder, indexes, adapter, turns), manifest


def base_encoder(settings: Settings) -> Any:
    """The configured encoder *without* the response adapter: the prompt adapter maps the base query side."""
    from dataclasses import replace

    from retriever.encoder import Encoder

    return Encoder.from_config(replace(settings, encoder=replace(settings.encoder, adapter="none")))


def encode_cached(settings: Settings, encoder: Any, texts: Sequence[str], side: str) -> np.ndarray:
    store = EmbeddingStore(settings.artifacts_dir / "embeddings", str(encoder.identity), side)
    encode = encoder.encode_queries if side == "query" else encoder.encode_passages
    from tqdm import tqdm

    with tqdm(total=len(set(texts)), desc=f"encoding {side} texts", unit="text") as bar:
        return store.encode(list(texts), encode, progress=bar.update)

"""The query adapter: identity at start, learns a response mapping, refuses corrupt or foreign weights, and
the embedding store behind its training resumes after a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.adapter import (
    WEIGHTS_NAME,
    AdaptedEncoder,
    AdapterError,
    QueryAdapter,
    adapter_identity,
    load_adapter,
    save_adapter,
)
from retriever.adapter_train import AdapterTrainConfig, recall_at_1, train_adapter
from retriever.embedding_store import EmbeddingStore
from retriever.encoder_cache import CachingEncoder

DIM = 16


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replies are a fixed linear map of their contexts plus noise: cosine alone ranks them poorly."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(DIM, DIM))
    queries = _unit(rng.normal(size=(n, DIM)))
    passages = _unit(queries @ mix + 0.3 * rng.normal(size=(n, DIM)))
    return queries, passages


def _adapter(seed: int = 0) -> QueryAdapter:
    rng = np.random.default_rng(seed)
    return QueryAdapter(down=rng.normal(size=(DIM, 4)).astype(np.float32),
                        up=rng.normal(size=(4, DIM)).astype(np.float32), base_encoder="base@abc")


class FakeEncoder:
    identity = "base@abc"
    dim = DIM

    def __init__(self) -> None:
        self.calls = 0

    def _vectors(self, texts: list[str], salt: int) -> np.ndarray:
        self.calls += 1
        return _unit(np.stack([np.random.default_rng(abs(hash((t, salt))) % 2**32).normal(size=DIM) for t in texts]))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._vectors(list(texts), 1)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._vectors(list(texts), 2)


def test_untrained_adapter_is_the_base_encoder() -> None:
    queries, _ = _task(20, 0)
    zero = QueryAdapter(down=np.ones((DIM, 4), np.float32), up=np.zeros((4, DIM), np.float32), base_encoder="b")
    np.testing.assert_allclose(zero.apply(queries), queries, atol=1e-6)


def test_training_learns_the_response_mapping(one_torch_thread: None) -> None:
    q_train, p_train = _task(1500, 1)
    q_dev, p_dev = _task(300, 2)
    before = recall_at_1(q_dev, p_dev, 10)
    config = AdapterTrainConfig(rank=DIM, epochs=10, batch_size=128)
    adapter, history = train_adapter(q_train, p_train, "base@abc", config, dev=(q_dev, p_dev))
    after = recall_at_1(adapter.apply(q_dev), p_dev, 10)
    assert after > before + 0.2, (before, after)
    assert history[0]["epoch"] == 0 and len(history) == 11
    assert np.allclose(np.linalg.norm(adapter.apply(q_dev), axis=1), 1.0, atol=1e-5)


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    adapter = _adapter()
    manifest = save_adapter(tmp_path / "a", adapter, config={"rank": 4}, data_sha256="d", metrics={})
    loaded, loaded_manifest = load_adapter(tmp_path / "a", base_identity="base@abc")
    assert loaded.identity == adapter.identity
    assert manifest.identity == loaded_manifest.identity == adapter.digest
    assert loaded_manifest.lineage == {"encoder": "base@abc"}
    with pytest.raises(AdapterError, match="repliq train adapter"):
        load_adapter(tmp_path / "a", base_identity="other@123")
    np.savez(tmp_path / "a" / WEIGHTS_NAME, down=adapter.down * 2, up=adapter.up)
    with pytest.raises(AdapterError, match="weights hash"):
        load_adapter(tmp_path / "a")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes(b"truncated")
    with pytest.raises(AdapterError, match="unreadable"):
        load_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match="no query adapter"):
        load_adapter(tmp_path / "missing")


def test_adapted_encoder_maps_queries_only() -> None:
    base, adapter = FakeEncoder(), _adapter()
    adapted = AdaptedEncoder(base, adapter)
    texts = ["hello there", "как дела"]
    np.testing.assert_allclose(adapted.encode_passages(texts), base.encode_passages(texts))
    np.testing.assert_allclose(adapted.encode_queries(texts), adapter.apply(base.encode_queries(texts)), atol=1e-6)
    assert adapted.identity == "base@abc"  # the bank index holds base passage vectors: it stays valid
    assert adapter_identity(CachingEncoder(adapted)) == adapter.identity
    assert adapter_identity(CachingEncoder(base)) == "none"
    foreign = QueryAdapter(down=adapter.down, up=adapter.up, base_encoder="other@1")
    with pytest.raises(AdapterError):
        AdaptedEncoder(base, foreign)


def test_embedding_store_resumes_after_a_crash(tmp_path: Path) -> None:
    encoder = FakeEncoder()
    texts = [f"text {i}" for i in range(10)]
    calls = {"n": 0}

    def flaky(batch: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return encoder.encode_passages(batch)

    with pytest.raises(RuntimeError):
        EmbeddingStore(tmp_path, "enc@1", "passage").encode(texts, flaky, chunk_size=4)
    resumed = EmbeddingStore(tmp_path, "enc@1", "passage")
    assert len(resumed) == 4  # the first chunk survived, the crashed one left nothing behind
    before = encoder.calls
    vectors = resumed.encode(texts, encoder.encode_passages, chunk_size=4)
    assert encoder.calls - before == 2  # only the 6 missing texts, in two chunks
    np.testing.assert_allclose(vectors, encoder.encode_passages(texts), atol=1e-6)
    assert len(EmbeddingStore(tmp_path, "enc@2", "passage")) == 0  # another encoder never reads these

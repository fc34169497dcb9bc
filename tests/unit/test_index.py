"""VectorIndex on synthetic clustered vectors: exactness, HNSW recall, in-place edits, persistence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from core.config import RetrievalConfig
from retriever.index import IndexChecksumError, VectorIndex


def clustered(n: int, dim: int, seed: int, clusters: int = 100, noise: float = 0.6) -> np.ndarray:
    """Embedding-like data: unit vectors bunched around topics, neighbours close together."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    points = centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_search_is_exact_and_padded() -> None:
    vectors = clustered(300, 16, seed=1)
    ids = np.arange(1000, 1300, dtype=np.int64)
    index = VectorIndex.build(ids, vectors, kind="auto")
    assert index.kind == "flat"
    queries = clustered(20, 16, seed=2)
    scores, found = index.search(queries, 5)
    assert np.array_equal(found, brute_force(vectors, ids, queries, 5))
    assert np.allclose(scores[:, 0], np.max(queries @ vectors.T, axis=1), atol=1e-5)
    small = VectorIndex.build([7, 8], vectors[:2])
    scores, found = small.search(queries[:3], 4)
    assert (found[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
    assert set(found[0, :2]) == {7, 8}
    assert faiss.cvar.distance_compute_blas_threshold <= 16


def test_hnsw_recall_at_10_against_exact() -> None:
    vectors = clustered(20_000, 64, seed=3, clusters=200, noise=1.0)
    ids = np.arange(20_000, dtype=np.int64) * 3
    config = RetrievalConfig(flat_max=1000)
    index = VectorIndex.build(ids, vectors, config)
    assert index.kind == "hnsw"
    queries = clustered(200, 64, seed=4, clusters=200, noise=1.0)
    _, found = index.search(queries, 10)
    assert recall(found, brute_force(vectors, ids, queries, 10)) >= 0.95


def test_incremental_edits_equal_full_rebuild() -> None:
    rng = np.random.default_rng(5)
    vectors = clustered(400, 24, seed=6)
    ids = np.arange(400, dtype=np.int64)
    index = VectorIndex.build(ids, vectors)
    final = dict(zip(ids.tolist(), vectors, strict=True))
    removed = rng.choice(400, 40, replace=False)
    index.remove(removed)
    for pid in removed.tolist():
        del final[pid]
    edited = [pid for pid in rng.choice(400, 30, replace=False).tolist() if pid in final]
    new_vectors = clustered(len(edited), 24, seed=7)
    index.upsert(edited, new_vectors)
    final.update(zip(edited, new_vectors, strict=True))
    added = np.arange(1000, 1050, dtype=np.int64)
    added_vectors = clustered(50, 24, seed=8)
    index.add(added, added_vectors)
    final.update(zip(added.tolist(), added_vectors, strict=True))

    rebuilt = VectorIndex.build(list(final), np.stack(list(final.values())))
    queries = clustered(30, 24, seed=9)
    incremental_scores, incremental_ids = index.search(queries, 10)
    rebuilt_scores, rebuilt_ids = rebuilt.search(queries, 10)
    assert np.array_equal(incremental_ids, rebuilt_ids)
    assert np.allclose(incremental_scores, rebuilt_scores, atol=1e-5)
    assert sorted(index.ids.tolist()) == sorted(final)
    assert not set(removed.tolist()) & set(incremental_ids.ravel().tolist())


def test_hnsw_tombstones_are_skipped_and_edits_match_rebuild() -> None:
    config = RetrievalConfig(flat_max=10, hnsw_ef_search=512)
    vectors = clustered(300, 16, seed=10)
    index = VectorIndex.build(np.arange(300), vectors, config)
    assert index.kind == "hnsw"
    index.remove(np.arange(0, 300, 5))
    index.upsert([1, 2], clustered(2, 16, seed=11))
    keep = [i for i in range(300) if i % 5]
    replacement = {1: index.vectors([1])[0], 2: index.vectors([2])[0]}
    final_vectors = np.stack([replacement.get(i, vectors[i]) for i in keep])
    queries = clustered(20, 16, seed=12)
    _, found = index.search(queries, 10)
    truth = brute_force(final_vectors, np.array(keep), queries, 10)
    assert recall(found, truth) >= 0.99
    assert not (found % 5 == 0).any()


def test_compaction_runs_after_a_quarter_dead_and_keeps_results() -> None:
    vectors = clustered(200, 8, seed=13)
    index = VectorIndex.build(np.arange(200), vectors)
    queries = clustered(10, 8, seed=14)
    index.remove(np.arange(40))  # 20% dead: kept as tombstones
    assert index.dead_rows == 40 and index.total_rows == 200
    before = index.search(queries, 5)
    index.remove(np.arange(40, 60))  # 30% dead: compacted from stored vectors
    assert index.dead_rows == 0 and index.total_rows == len(index) == 140
    after = index.search(queries, 5)
    truth = brute_force(vectors[60:], np.arange(60, 200), queries, 5)
    assert np.array_equal(after[1], truth)
    assert not np.array_equal(before[1], after[1]) or (before[1] >= 60).all()
    index.remove(np.arange(60, 70))
    index.compact()
    assert index.total_rows == 130 and np.allclose(index.vectors([150])[0], vectors[150], atol=1e-6)


def test_auto_kind_switches_to_hnsw_when_growing_past_flat_max() -> None:
    config = RetrievalConfig(flat_max=100)
    vectors = clustered(150, 8, seed=15)
    index = VectorIndex.build(np.arange(90), vectors[:90], config)
    assert index.kind == "flat"
    index.add(np.arange(90, 150), vectors[90:])
    assert index.kind == "hnsw" and len(index) == 150
    _, found = index.search(vectors[120:121], 1)
    assert found[0, 0] == 120


def test_bad_input_is_refused_without_changing_the_index() -> None:
    vectors = clustered(10, 8, seed=16)
    index = VectorIndex.build(np.arange(10), vectors)
    with pytest.raises(ValueError, match="already in the index"):
        index.add([3, 50], clustered(2, 8, seed=17))
    with pytest.raises(ValueError, match="shape"):
        index.add([60], np.ones((1, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="unique"):
        index.add([61, 61], clustered(2, 8, seed=18))
    with pytest.raises(ValueError, match="NaN"):
        index.add([62], np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="zero"):
        index.add([63], np.zeros((1, 8), dtype=np.float32))
    assert len(index) == 10 and index.total_rows == 10 and 50 not in index


def test_save_load_round_trip_and_checksum(tmp_path: Path) -> None:
    config = RetrievalConfig(flat_max=50)
    vectors = clustered(120, 12, seed=19)
    index = VectorIndex.build(np.arange(120) + 5, vectors, config)
    index.remove([5, 6, 7])
    checksum = index.save(tmp_path / "shard")
    loaded = VectorIndex.load(tmp_path / "shard", config, expected_checksum=checksum)
    queries = clustered(15, 12, seed=20)
    assert loaded.kind == index.kind == "hnsw"
    assert np.array_equal(loaded.search(queries, 8)[1], index.search(queries, 8)[1])
    assert sorted(loaded.ids.tolist()) == sorted(index.ids.tolist()) and 5 not in loaded

    blob = bytearray((tmp_path / "shard" / "index.faiss").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "shard" / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(IndexChecksumError):
        VectorIndex.load(tmp_path / "shard", config, expected_checksum=checksum)


def test_search_threshold_follows_config_ef_search() -> None:
    config = RetrievalConfig(flat_max=10, hnsw_ef_search=16)
    vectors = clustered(500, 16, seed=21)
    index = VectorIndex.build(np.arange(500), vectors, config)
    index.config = replace(config, hnsw_ef_search=500)
    _, found = index.search(vectors[:20], 10)
    assert recall(found, brute_force(vectors, np.arange(500), vectors[:20], 10)) == 1.0

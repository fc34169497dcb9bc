"""The compressed index kind (IVF-PQ + refine) on small synthetic banks: tuned recall, edits, persistence."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from test_index import brute_force, clustered, recall

from core.config import RetrievalConfig
from retriever import ivf
from retriever.index import IndexChecksumError, VectorIndex, checksum_files

N, DIM = 2000, 32
CONFIG = RetrievalConfig(flat_max=100, ivf_min=1000, ivf_tune_queries=100)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bank and fresh queries drawn around the same topics (the bank's own distribution)."""
    vectors = clustered(N + 200, DIM, seed=3, clusters=60, noise=0.8)
    return np.arange(N, dtype=np.int64) * 7 + 5, vectors[:N], vectors[N:]


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> VectorIndex:
    ids, vectors, _ = data
    return VectorIndex.build(ids, vectors, CONFIG)


def test_recall_target_is_met_and_recorded(built: VectorIndex, data: tuple) -> None:
    ids, vectors, queries = data
    assert built.kind == ivf.KIND and len(built) == N
    tuning = built.tuning
    assert tuning["target_met"] and tuning["recall_at_10"] >= 0.95 and tuning["recall_target"] == 0.95
    assert tuning["nprobe"] < tuning["nlist"], "tuning should not need an exhaustive probe on clustered data"
    inner = faiss.extract_index_ivf(built._index)
    assert inner.nprobe == tuning["nprobe"] and built._index.k_factor == tuning["k_factor"]
    # Queries the tuning never saw reach nearly the same recall against exact search.
    _, found = built.search(queries, 10)
    assert recall(found, brute_force(vectors, ids, queries, 10)) >= 0.9
    # Compressed: PQ codes + SQ8 refine take well under half of the fp32 vectors.
    assert len(faiss.serialize_index(built._index)) < 0.6 * N * DIM * 4


def test_a_lower_target_buys_a_cheaper_search(built: VectorIndex, data: tuple) -> None:
    ids, vectors, _ = data
    loose = VectorIndex.build(ids, vectors, RetrievalConfig(flat_max=100, ivf_min=1000, ivf_tune_queries=100,
                                                            ivf_recall_target=0.6))
    assert loose.tuning["target_met"] and loose.tuning["recall_at_10"] >= 0.6

    def cost(t: dict) -> float:
        return t["nprobe"] * N / t["nlist"] * t["m"] + 10 * t["k_factor"] * DIM

    assert cost(loose.tuning) < cost(built.tuning)


def test_save_load_round_trip_keeps_results_and_tuning(built: VectorIndex, data: tuple, tmp_path: Path) -> None:
    _, _, queries = data
    checksum = built.save(tmp_path / "ivf")
    loaded = VectorIndex.load(tmp_path / "ivf", CONFIG, expected_checksum=checksum)
    assert loaded.kind == ivf.KIND and loaded.tuning == built.tuning
    assert faiss.extract_index_ivf(loaded._index).nprobe == built.tuning["nprobe"]
    assert np.array_equal(loaded.search(queries, 10)[1], built.search(queries, 10)[1])
    assert checksum_files(tmp_path / "ivf") == checksum
    blob = (tmp_path / "ivf" / "index.faiss").read_bytes()
    (tmp_path / "ivf" / "index.faiss").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(IndexChecksumError):
        VectorIndex.load(tmp_path / "ivf", CONFIG, expected_checksum=checksum)


def test_remove_upsert_and_compaction_of_a_query_tuned_index(data: tuple) -> None:
    ids, vectors, queries = data
    index = VectorIndex.build(ids, vectors, CONFIG, tune_queries=queries[:100])
    assert index.tuning["tuned_on"] == "queries" and index.tuning["tuning_queries"] == 100
    first = dict(index.tuning)
    gone = ids[::10]
    assert index.remove(gone) == len(gone)
    _, found = index.search(vectors[::10][:50], 10)
    assert not set(found.ravel()) & set(gone.tolist()), "a removed id came back"
    index.upsert([int(ids[1])], -vectors[1:2])  # an edit: the phrase now points the other way
    _, top = index.search(-vectors[1:2], 1)
    assert top[0, 0] == ids[1]
    assert index.remove(ids[: N // 3]) > 0  # past the dead fraction: rebuilt (retrained) from decoded vectors
    assert index.dead_rows == 0 and index.kind == ivf.KIND
    # The in-memory queries are reused; a loaded index (no queries) would fall back to bank vectors floored
    # by this tuning, which test_floor_keeps_a_query_tuned_search_from_getting_cheaper covers.
    assert index.tuning["tuned_on"] == "queries" and index.tuning["target_met"]
    keep = np.isin(ids, np.concatenate([gone, ids[: N // 3]]), invert=True)
    _, found = index.search(queries[100:], 10)
    assert recall(found, brute_force(vectors[keep], ids[keep], queries[100:], 10)) >= 0.85
    assert first["nlist"] >= index.tuning["nlist"]


def test_floor_keeps_a_query_tuned_search_from_getting_cheaper(built: VectorIndex, data: tuple) -> None:
    ids = data[0]
    chunks = ivf.stored_chunks(built._index, np.arange(N), ids)
    index, shape = ivf.trained_index(DIM, chunks, N, CONFIG)
    for _, part in chunks():
        index.add(part)
    floor = {**built.tuning, "tuned_on": "queries", "nprobe": built.tuning["nlist"], "k_factor": 16}
    tuned = ivf.tune(index, shape, chunks, N, CONFIG, None, floor)
    assert tuned["tuned_on"].startswith("bank, floored") and tuned["nprobe"] == shape["nlist"]
    assert tuned["k_factor"] == 16 and tuned["recall_at_10"] >= 0.95


def test_growth_moves_flat_to_hnsw_to_ivfpq_and_chunked_build_agrees(data: tuple) -> None:
    ids, vectors, queries = data
    index = VectorIndex(DIM, CONFIG)
    index.add(ids[:50], vectors[:50])
    assert index.kind == "flat"
    index.add(ids[50:500], vectors[50:500])
    assert index.kind == "hnsw"
    index.add(ids[500:], vectors[500:])
    assert index.kind == ivf.KIND and len(index) == N and index.tuning["target_met"]

    def chunks():
        for start in range(0, N, 700):
            yield ids[start:start + 700], vectors[start:start + 700]

    chunked = VectorIndex.build_chunked(DIM, chunks, N, CONFIG)
    assert chunked.kind == ivf.KIND and set(chunked.ids.tolist()) == set(ids.tolist())
    _, found = chunked.search(queries, 10)
    assert recall(found, brute_force(vectors, ids, queries, 10)) >= 0.9
    with pytest.raises(ValueError, match=r"2001 expected|expected 2001"):
        VectorIndex.build_chunked(DIM, chunks, N + 1, CONFIG)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="ivf_pq_m = 5 must divide"):
        ivf.layout(10_000, DIM, RetrievalConfig(ivf_pq_m=5))
    with pytest.raises(ValueError, match="ivf_refine must be one of"):
        ivf.layout(10_000, DIM, RetrievalConfig(ivf_refine="pq"))
    shape = ivf.layout(5_000_000, 384, RetrievalConfig())
    assert shape["m"] == 192 and shape["nbits"] == 4 and shape["nlist"] == 4096


def test_bank_index_build_tunes_on_encoded_phrases_and_records_it(tmp_path: Path) -> None:
    """`repliq index build` path: a shard past ivf_min is tuned on its own phrases encoded as queries."""
    from dataclasses import replace

    from core.bank.default import starter_rows
    from core.bank.store import PhraseBank
    from retriever.bank_index import build_index, load_index
    from retriever.encoder import Encoder

    from tiny_models import build_tiny_encoder
    from workspace import make_settings

    settings = make_settings(tmp_path / "home", tmp_path / "models")
    settings = replace(settings, encoder=replace(settings.encoder, name=str(build_tiny_encoder(tmp_path / "enc")),
                                                 backend="torch"),
                       retrieval=replace(settings.retrieval, flat_max=20, ivf_min=100, ivf_tune_queries=80))
    settings.home.mkdir(parents=True)
    rows = starter_rows()
    with PhraseBank(settings.bank_path) as bank:
        assert bank.import_phrases([r for r in rows if r.language == "en"][:200]
                                   + [r for r in rows if r.language == "ru"][:50], who="tests").ok
        encoder = Encoder.from_config(settings)
        manifest = build_index(bank, encoder, settings)
        assert manifest.kinds == {"en": ivf.KIND, "ru": "hnsw"}
        tuning = manifest.params["ivf_tuning"]["en"]
        assert set(manifest.params["ivf_tuning"]) == {"en"} and manifest.params["ivf_min"] == 100
        assert tuning["tuned_on"] == "queries" and tuning["tuning_queries"] == 80 and "recall_at_10" in tuning
        loaded = load_index(settings, encoder, bank)
        assert loaded.shard("en").tuning == tuning
        assert loaded.search(encoder.encode_queries(["How are you?"]), "en", 3)[0]

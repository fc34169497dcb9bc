"""Encoder on a tiny random model: prefixes come from the manifest, rows are normalized float32."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from core.config import EncoderConfig, Settings
from core.models.manifest import MANIFEST_NAME, ModelManifest
from retriever.encoder import Encoder

from tiny_models import build_tiny_encoder

TEXTS = ["hello there", "как дела?", "a much longer sentence, with punctuation!", "ok"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny", query_prefix="query: ",
                              passage_prefix="passage: ")


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> Encoder:
    return Encoder(model_dir, device="auto", batch_size=64)


def raw_vectors(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    rows = SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_prefixes_from_the_manifest_are_applied(encoder: Encoder, model_dir: Path) -> None:
    queries = encoder.encode_queries(TEXTS)
    passages = encoder.encode_passages(TEXTS)
    assert np.allclose(queries, raw_vectors(model_dir, ["query: " + t for t in TEXTS]), atol=1e-5)
    assert np.allclose(passages, raw_vectors(model_dir, ["passage: " + t for t in TEXTS]), atol=1e-5)
    assert not np.allclose(queries, raw_vectors(model_dir, TEXTS), atol=1e-3)
    assert not np.allclose(queries, passages, atol=1e-3)


def test_rows_are_float32_unit_vectors_and_batching_does_not_change_them(encoder: Encoder,
                                                                          model_dir: Path) -> None:
    rows = encoder.encode_passages(TEXTS)
    assert rows.dtype == np.float32 and rows.shape == (len(TEXTS), encoder.dim)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    small_batches = Encoder(model_dir, batch_size=1)
    assert np.allclose(rows, small_batches.encode_passages(TEXTS), atol=1e-5)
    seen: list[tuple[int, int]] = []
    with_progress = small_batches.encode_passages(TEXTS * 5, progress=lambda done, total: seen.append((done, total)))
    assert np.allclose(with_progress[-len(TEXTS):], rows, atol=1e-5)
    assert seen == [(16, 20), (20, 20)]


def test_empty_input_and_identity(encoder: Encoder, model_dir: Path) -> None:
    empty = encoder.encode_queries([])
    assert empty.shape == (0, encoder.dim) and empty.dtype == np.float32
    manifest = ModelManifest.load(model_dir)
    assert encoder.identity == manifest.short_id and encoder.dim == manifest.dim == 32
    assert encoder.device == "cpu"
    with pytest.raises(TypeError):
        encoder.encode_queries("one string")  # type: ignore[arg-type]


def test_from_config_resolves_a_path(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, models_dir=tmp_path / "models",
                        encoder=EncoderConfig(name=str(model_dir), batch_size=3, device="cpu"))
    encoder = Encoder.from_config(settings)
    assert encoder.batch_size == 3 and encoder.identity.startswith("tiny-random-encoder@")


def test_manifest_dim_disagreeing_with_the_model_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / MANIFEST_NAME).write_text(json.dumps({**data, "dim": 64}))
    with pytest.raises(ValueError, match="dim 64"):
        Encoder(copy)


def test_directory_without_manifest_is_described_by_the_model_cache(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "bare"
    shutil.copytree(model_dir, copy)
    (copy / MANIFEST_NAME).unlink()
    described = ModelManifest(model_id="bare", kind="encoder", source_package="local", source_version="",
                              weights_sha256="ab" * 32, dim=32, query_prefix="q> ", passage_prefix="")
    fake_cache = types.ModuleType("core.models.cache")
    fake_cache.describe_local_dir = lambda path: described  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "core.models.cache", fake_cache)
    encoder = Encoder(copy)
    assert encoder.identity == "bare@" + "ab" * 6
    assert np.allclose(encoder.encode_queries(["hi"]), raw_vectors(copy, ["q> hi"]), atol=1e-5)


def test_missing_directory_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="repliq models prepare"):
        Encoder(tmp_path / "nope")

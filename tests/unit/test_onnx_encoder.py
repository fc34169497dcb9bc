"""The ONNX Runtime encoder on a tiny random model: export, parity with torch, the gate's verdicts,
staleness, damaged files and a missing onnxruntime."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import Settings
from retriever.encoder import Encoder
from retriever.onnx_encoder import (
    EXPORT_MANIFEST,
    ONNX_DIR,
    OnnxEncoder,
    OnnxExportError,
    choose_backend,
    read_export,
)
from retriever.onnx_export import export_is_current, export_model
from retriever.onnx_quantize import SENSITIVE_GROUPS, cpu_int8_flags, fp32_nodes

from tiny_models import build_tiny_encoder
from workspace import make_settings

TEXTS = ["hello there", "как дела?", "  a much longer sentence, with punctuation!  ", "ok", "Ёлки-палки, 2024"]
PROBE = [*TEXTS, "what a day", "пойдём гулять", "x" * 400]


def passing_gate(reference: Any, candidate: Any) -> dict[str, dict[str, float]]:
    """Measures nothing real; reports both languages on par so the ladder stops at the first int8."""
    return {"en": {"torch": 0.5, "onnx": 0.5, "n": 10}, "ru": {"torch": 0.5, "onnx": 0.5, "n": 10}}


def int8_loses_russian(reference: Any, candidate: Any) -> dict[str, dict[str, float]]:
    onnx_ru = 0.48 if candidate.variant == "int8" else 0.5  # 2 points down: beyond the 0.5-point budget
    return {"en": {"torch": 0.5, "onnx": 0.5, "n": 10}, "ru": {"torch": 0.5, "onnx": onnx_ru, "n": 10}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = build_tiny_encoder(tmp_path_factory.mktemp("onnx") / "tiny")
    export = export_model(model_dir, passing_gate, ["fake:10"], probe=PROBE)
    assert export["status"] == "built"
    return model_dir


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / model_dir.name
    shutil.copytree(model_dir, target)
    return target


def settings_for(model_dir: Path, tmp_path: Path, backend: str) -> Settings:
    settings = make_settings(tmp_path / "home", tmp_path / "models")
    return replace(settings, encoder=replace(settings.encoder, name=str(model_dir), backend=backend, device="cpu"))


@pytest.mark.parametrize("variant, atol", [("fp32", 1e-4), ("int8", 0.05)])
def test_onnx_vectors_match_torch(exported: Path, variant: str, atol: float) -> None:
    torch_encoder = Encoder(exported, device="cpu")
    onnx_encoder = OnnxEncoder(exported, variant, batch_size=2)
    for encode in ("encode_queries", "encode_passages"):
        ours, theirs = getattr(onnx_encoder, encode)(TEXTS), getattr(torch_encoder, encode)(TEXTS)
        assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), torch_encoder.dim)
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert np.allclose(ours, theirs, atol=atol), (variant, encode, np.sum(ours * theirs, axis=1))
    # Prefixes are applied as torch applies them: queries and passages differ.
    assert not np.allclose(onnx_encoder.encode_queries(TEXTS), onnx_encoder.encode_passages(TEXTS), atol=1e-3)
    assert onnx_encoder.identity == torch_encoder.identity and onnx_encoder.dim == torch_encoder.dim
    assert onnx_encoder.backend == f"onnx-{variant}"


def test_batching_and_empty_input_do_not_change_vectors(exported: Path) -> None:
    one_by_one = OnnxEncoder(exported, "fp32", batch_size=1).encode_passages(TEXTS)
    together = OnnxEncoder(exported, "fp32", batch_size=64).encode_passages(TEXTS)
    assert np.allclose(one_by_one, together, atol=1e-5)
    assert OnnxEncoder(exported, "fp32").encode_queries([]).shape == (0, 32)
    with pytest.raises(TypeError, match="list of texts"):
        OnnxEncoder(exported, "fp32").encode_queries("one string")


def test_manifest_records_source_hash_and_gate(exported: Path) -> None:
    export = read_export(exported)
    source = json.loads((exported / "repliq_manifest.json").read_text())
    assert export["source_weights_sha256"] == source["weights_sha256"]
    assert export["selected"] == "int8" and export["variants"]["int8"]["recipe"] == "int8-per-channel"
    assert export["cpu_int8_flags"] == cpu_int8_flags()
    gate = export["variants"]["int8"]["gate"]
    assert gate["passed"] and gate["mean_cosine"] >= 0.995 and gate["probe_texts"] == len(PROBE)
    assert set(gate["retrieval"]) == {"en", "ru"} and gate["retrieval"]["ru"]["drop_points"] == 0
    assert export["variants"]["fp32"]["gate"]["mean_cosine"] > 0.9999
    assert export_is_current(exported, ["fake:10"]) and not export_is_current(exported, ["other:10"])
    assert export_model(exported, passing_gate, ["fake:10"], probe=PROBE)["status"] == "cached"


def test_int8_failing_the_gate_falls_back_to_fp32_with_the_reason(tmp_path: Path) -> None:
    model_dir = build_tiny_encoder(tmp_path / "tiny")
    said: list[str] = []
    export = export_model(model_dir, int8_loses_russian, ["fake"], probe=PROBE, say=said.append)
    assert export["selected"] == "fp32"
    assert list(export["candidates"]) == ["int8-per-channel", "int8-per-channel-reduce-range",
                                          "int8-reduce-range-sensitive-fp32", "int8-matmul-attention-only"]
    rungs = export["candidates"]
    assert [rungs[name]["reduce_range"] for name in rungs] == [False, True, True, True]
    assert rungs["int8-reduce-range-sensitive-fp32"]["fp32_nodes"] == len(fp32_nodes(
        model_dir / "onnx" / "model.fp32.onnx", SENSITIVE_GROUPS)) > 0
    assert rungs["int8-matmul-attention-only"]["op_types"] == ["MatMul"]
    assert all(not rung["gate"]["passed"] for rung in rungs.values())
    # Only one int8 file is kept: the failed rung closest to torch, for the record.
    assert len(list((model_dir / "onnx").glob("model.int8*.onnx"))) == 1
    assert "ru R@1/10 48.0 is 2.0 points below torch's 50.0" in export["warnings"][0]
    assert any("FAILED" in line for line in said)
    assert OnnxEncoder(model_dir).variant == "fp32"  # "selected" follows the gate
    assert choose_backend("auto", model_dir, "cpu") == "onnx"


def test_unmeasured_language_fails_the_gate_and_auto_keeps_torch(tmp_path: Path) -> None:
    model_dir = build_tiny_encoder(tmp_path / "tiny")
    export = export_model(model_dir, lambda ref, cand: {"en": {"torch": 0.5, "onnx": 0.5, "n": 3}}, probe=PROBE)
    assert export["selected"] is None
    assert "ru retrieval not measured" in export["warnings"][0]
    assert choose_backend("auto", model_dir, "cpu") == "torch"
    assert choose_backend("onnx", model_dir, "cpu") == "onnx"  # insisting still gets the fp32 export


def test_backend_choice_and_from_config(exported: Path, tmp_path: Path) -> None:
    assert isinstance(Encoder.from_config(settings_for(exported, tmp_path, "auto")), OnnxEncoder)
    assert isinstance(Encoder.from_config(settings_for(exported, tmp_path, "torch")), Encoder)
    assert choose_backend("auto", exported, "cuda") == "torch"  # the GPU path stays on torch
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("tensorrt", exported, "cpu")
    bare = build_tiny_encoder(tmp_path / "bare")
    assert isinstance(Encoder.from_config(settings_for(bare, tmp_path, "auto")), Encoder)
    with pytest.raises(OnnxExportError, match="repliq models prepare"):
        Encoder.from_config(settings_for(bare, tmp_path, "onnx"))


def test_stale_export_is_refused_then_rebuilt(exported: Path, tmp_path: Path) -> None:
    model_dir = copy_of(exported, tmp_path)
    retrained = build_tiny_encoder(tmp_path / "retrained", seed=1)
    for name in ("model.safetensors", "repliq_manifest.json"):
        shutil.copy(retrained / name, model_dir / name)
    with pytest.raises(OnnxExportError, match=r"was made from weights .*repliq models prepare"):
        OnnxEncoder(model_dir)
    with pytest.raises(OnnxExportError, match="rebuild it with"):
        choose_backend("onnx", model_dir, "cpu")
    assert choose_backend("auto", model_dir, "cpu") == "torch"
    assert not export_is_current(model_dir, ["fake:10"])
    assert export_model(model_dir, passing_gate, ["fake:10"], probe=PROBE)["status"] == "built"
    assert np.allclose(OnnxEncoder(model_dir, "fp32").encode_queries(TEXTS),
                       Encoder(model_dir, device="cpu").encode_queries(TEXTS), atol=1e-4)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage-with-matching-hash"])
def test_damaged_onnx_file_is_refused_with_the_rebuild_command(exported: Path, tmp_path: Path, damage: str) -> None:
    model_dir = copy_of(exported, tmp_path)
    export = read_export(model_dir)
    path = model_dir / ONNX_DIR / export["variants"]["int8"]["file"]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:  # a file the manifest vouches for that ONNX Runtime still cannot read
        from core.atomic import sha256_file

        path.write_bytes(b"\x00not an onnx model" * 100)
        export["variants"]["int8"].update(bytes=path.stat().st_size, sha256=sha256_file(path))
        (model_dir / ONNX_DIR / EXPORT_MANIFEST).write_text(json.dumps(export))
    expected = "cannot be loaded by ONNX Runtime" if damage.startswith("garbage") else "corrupt or truncated"
    with pytest.raises(OnnxExportError, match=expected) as caught:
        OnnxEncoder(model_dir)
    assert f"`repliq models prepare {model_dir}`" in str(caught.value)
    # auto refuses too: a server must not start half-working on a damaged cache.
    with pytest.raises(OnnxExportError):
        Encoder.from_config(settings_for(model_dir, tmp_path, "auto"))
    assert not export_is_current(model_dir, ["fake:10"])


def test_missing_onnxruntime_falls_back_to_torch_with_one_warning(exported: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import retriever.onnx_encoder as module

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    monkeypatch.setattr(module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="retriever.onnx_encoder"):
        first = Encoder.from_config(settings_for(exported, tmp_path, "auto"))
        second = Encoder.from_config(settings_for(exported, tmp_path, "onnx"))
    assert isinstance(first, Encoder) and isinstance(second, Encoder)
    warnings = [r.getMessage() for r in caplog.records if "onnxruntime cannot be imported" in r.getMessage()]
    assert len(warnings) == 1 and "pip install onnxruntime" in warnings[0]


def test_models_prepare_exports_a_named_local_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`repliq models prepare PATH` exports the model at PATH only (no packaged model is built) and gates
    it on Chit Chat's packaged dev split; without Russian dev dialogues int8 is not enabled."""
    from dialog.cli.main import main
    from dialog.jobs import export_onnx

    model_dir = build_tiny_encoder(tmp_path / "tiny")
    monkeypatch.setenv("REPLIQ_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("REPLIQ_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(export_onnx, "GATE_CONTEXTS", 40)
    monkeypatch.setattr("retriever.onnx_export.PROBE_PER_LANGUAGE", 8)
    assert main(["models", "prepare", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "ru retrieval not measured" in out and "backend auto: torch" in out
    export = read_export(model_dir)
    assert export["gate_data"] == ["en-chitchat-dev:40x10:seed13"] and not (tmp_path / "models").exists()
    english = export["variants"]["fp32"]["gate"]["retrieval"]["en"]
    assert english["n"] == 40 and english["drop_points"] <= 0.5
    assert main(["models", "prepare", str(model_dir)]) == 0
    assert "onnx cached" in capsys.readouterr().out


def test_fp32_node_groups_name_real_nodes_and_refuse_unknown_ones(exported: Path) -> None:
    fp32 = exported / "onnx" / "model.fp32.onnx"
    assert fp32_nodes(fp32, ["word_embeddings"]) == ["/transformer/embeddings/word_embeddings/Gather"]
    ffn = fp32_nodes(fp32, ["ffn_out"])
    assert ffn and all("/output/dense/" in n and "/attention/" not in n for n in ffn)
    assert fp32_nodes(fp32, ["ffn_in"]) and not set(fp32_nodes(fp32, ["ffn_in"])) & set(ffn)
    layer0 = fp32_nodes(fp32, ["layer.0"])
    assert layer0 and all("/layer.0/" in n for n in layer0) and set(ffn) & set(layer0)
    with pytest.raises(ValueError, match="unknown fp32 node group 'attention'"):
        fp32_nodes(fp32, ["attention"])


def test_a_rung_leaves_its_fp32_groups_unquantized(exported: Path, tmp_path: Path) -> None:
    import onnx

    from retriever.onnx_quantize import INT8_LADDER, quantize

    attention_only = next(r for r in INT8_LADDER if r.name == "int8-matmul-attention-only")
    out = tmp_path / "rung.onnx"
    excluded = quantize(exported / "onnx" / "model.fp32.onnx", out, attention_only)
    nodes = {node.name: node.op_type for node in onnx.load(str(out)).graph.node}
    ffn = fp32_nodes(exported / "onnx" / "model.fp32.onnx", ["ffn_in", "ffn_out"])
    assert set(ffn) <= set(excluded) and all(nodes[name] == "MatMul" for name in ffn)
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in nodes.values())
    assert "DequantizeLinear" not in nodes.values()  # MatMul only: the embedding Gather keeps fp32 weights

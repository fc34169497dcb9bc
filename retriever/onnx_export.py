"""Export a sentence-transformers encoder to ONNX (fp32 and dynamic int8) behind a fidelity gate.

The int8 ladder (:data:`retriever.onnx_quantize.INT8_LADDER`) is climbed until a rung passes the gate;
every rung's verdict goes into the export manifest (``candidates``), then fp32 is gated too. Whatever
is chosen, and why the others were not, is recorded, so ``Encoder.from_config`` picks ONNX only where
the gate passed and ``[encoder] backend = "auto"`` serves the first passing int8 rung.

The gate: mean cosine to the torch vectors >= :data:`MIN_MEAN_COSINE` on a fixed bilingual probe set
(the starter bank, encoded as queries and as passages), and, through a ``retrieval_gate`` the caller
supplies (the ranking evaluation lives a floor above this package), R@1/10 within
:data:`MAX_RECALL_DROP_POINTS` of torch in every required language. A language that was not measured
fails the gate: an unmeasured export is not a verified one.
"""

from __future__ import annotations

import fcntl
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_directory, atomic_write_json, sha256_file
from core.types import QueryPassageEncoder
from retriever.encoder import Encoder
from retriever.onnx_encoder import (
    EXPORT_FORMAT,
    EXPORT_MANIFEST,
    ONNX_DIR,
    OnnxEncoder,
    OnnxExportError,
    read_export,
    source_manifest,
    stale_reason,
    verified_file,
)
from retriever.onnx_quantize import INT8_LADDER, cpu_int8_flags, quantize

MIN_MEAN_COSINE = 0.995
MAX_RECALL_DROP_POINTS = 0.5
GATE_VERSION = 2  # 2: the four-rung int8 ladder of retriever.onnx_quantize
OPSET = 17
GATE_LANGUAGES = ("en", "ru")
PROBE_PER_LANGUAGE = 160
# One intra-op thread for the gate's encoding: on a shared 2-core machine two threads spin-wait for a
# busy core and run several times slower.
GATE_THREADS = 1
# (torch reference, candidate) -> per language {"torch": R@1/10, "onnx": R@1/10, "n": contexts}.
RetrievalGate = Callable[[QueryPassageEncoder, QueryPassageEncoder], dict[str, dict[str, float]]]
Say = Callable[[str], None]


def probe_texts(per_language: int | None = None) -> list[str]:
    """The fixed probe set: the first starter-bank phrases of each language (Russian and English), plus
    one text long enough to be truncated, so the export's truncation is checked too."""
    from core.bank.default import starter_rows

    rows, count = starter_rows(), per_language or PROBE_PER_LANGUAGE
    texts = [row.text for lang in ("ru", "en") for row in [r for r in rows if r.language == lang][:count]]
    return [*texts, " ".join(texts[:60])]


def required_languages(model_dir: Path) -> list[str]:
    languages = set(source_manifest(model_dir).languages)
    return [lang for lang in GATE_LANGUAGES if lang in languages or "multilingual" in languages] or ["en"]


def export_is_current(model_dir: Path, gate_data: Sequence[str]) -> bool:
    """True when the export matches the weights, every file verifies, and its gate used the same data."""
    try:
        export = read_export(model_dir)
        if export is None or stale_reason(model_dir, export) or export.get("gate_version") != GATE_VERSION:
            return False
        for variant in export.get("variants") or {}:
            _parse(verified_file(model_dir, export, variant))
    except (OnnxExportError, OSError, ValueError):
        return False
    return sorted(export.get("gate_data") or []) == sorted(gate_data)


def _parse(path: Path) -> None:
    """A file the manifest vouches for must still be an ONNX model (a hand-edited manifest is possible)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxExportError(f"{path} is not an ONNX model ({str(exc)[:120]})") from exc


@contextmanager
def _export_lock(model_dir: Path) -> Iterator[None]:
    with open(Path(model_dir) / ".onnx.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_model(model_dir: Path, retrieval_gate: RetrievalGate | None = None, gate_data: Sequence[str] = (),
                 force: bool = False, say: Say | None = None, probe: Sequence[str] | None = None) -> dict[str, Any]:
    """Export ``model_dir`` to ``<model_dir>/onnx`` (unless a current export exists) and return its manifest.

    ``gate_data`` names the datasets behind ``retrieval_gate``; an export gated on other data is redone.
    ``probe`` replaces the starter-bank probe set (tests use a short one).
    The old export is replaced only when the new one is complete.
    """
    say = say or (lambda _message: None)
    model_dir = Path(model_dir)
    with _export_lock(model_dir):
        if not force and export_is_current(model_dir, gate_data):
            export = read_export(model_dir)
            assert export is not None
            return {**export, "status": "cached"}
        for leftover in model_dir.glob(f".{ONNX_DIR}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.perf_counter()
        with atomic_directory(model_dir / ONNX_DIR) as scratch:
            export = _build(model_dir, scratch, retrieval_gate, gate_data, say, list(probe or probe_texts()))
            export["seconds"] = round(time.perf_counter() - started, 1)
            atomic_write_json(scratch / EXPORT_MANIFEST, export)
            for path in (scratch, *scratch.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
        return {**export, "status": "built"}


def _build(model_dir: Path, scratch: Path, retrieval_gate: RetrievalGate | None, gate_data: Sequence[str],
           say: Say, probe: list[str]) -> dict[str, Any]:
    import torch

    source = source_manifest(model_dir)
    threads_before = torch.get_num_threads()
    try:
        return _build_ladder(model_dir, scratch, retrieval_gate, gate_data, say, probe, source)
    finally:
        torch.set_num_threads(threads_before)  # Encoder(num_threads=...) set it process-wide


def _build_ladder(model_dir: Path, scratch: Path, retrieval_gate: RetrievalGate | None, gate_data: Sequence[str],
                  say: Say, probe: list[str], source: Any) -> dict[str, Any]:
    import onnxruntime
    import torch

    reference = Encoder(model_dir, device="cpu", num_threads=GATE_THREADS)
    say(f"{source.model_id}: exporting to ONNX (opset {OPSET})")
    tokenizer = export_fp32(reference, scratch / "model.fp32.onnx")
    export: dict[str, Any] = {
        "format": EXPORT_FORMAT, "gate_version": GATE_VERSION, "source_model_id": source.model_id,
        "source_identity": source.short_id, "source_weights_sha256": source.weights_sha256, "dim": reference.dim,
        "tokenizer": tokenizer, "opset": OPSET, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(), "cpu_int8_flags": cpu_int8_flags(), "gate_data": sorted(gate_data),
        "thresholds": {
            "min_mean_cosine": MIN_MEAN_COSINE, "max_recall_drop_points": MAX_RECALL_DROP_POINTS,
            "languages": required_languages(model_dir)},
        "variants": {"fp32": _file_entry(scratch / "model.fp32.onnx")}, "candidates": {}, "selected": None,
        "warnings": []}
    say(f"{source.model_id}: torch reference vectors for {len(probe)} probe texts")
    checker = _GateChecker(reference, probe, retrieval_gate, export["thresholds"]["languages"])
    _check_tokenizer(reference, model_dir, scratch, export, probe)
    kept = _climb_ladder(model_dir, scratch, export, checker, say, source.model_id)
    export["variants"]["int8"] = {**_file_entry(scratch / f"model.{kept}.onnx"), "recipe": kept,
                                  "gate": export["candidates"][kept]["gate"]}
    fp32_gate = checker.check(OnnxEncoder(model_dir, "fp32", num_threads=GATE_THREADS, export_dir=scratch))
    export["variants"]["fp32"]["gate"] = fp32_gate
    say(f"{source.model_id}: fp32: {_gate_line(fp32_gate)}")
    if export["selected"] is None:
        why = "; ".join(f"{name}: {', '.join(c['gate']['failures'])}" for name, c in export["candidates"].items())
        if fp32_gate["passed"]:
            export["selected"] = "fp32"
            export["warnings"].append(f"int8 failed the fidelity gate ({why}); ONNX fp32 is used instead")
        else:
            export["warnings"].append(f"no ONNX variant passed the fidelity gate (int8: {why}; fp32: "
                                      f"{'; '.join(fp32_gate['failures'])}); backend auto keeps torch")
    return export


def _climb_ladder(model_dir: Path, scratch: Path, export: dict[str, Any], checker: _GateChecker, say: Say,
                  model_id: str) -> str:
    """Gate each int8 rung in turn, recording every verdict; keep the passing rung's file (else the one
    closest to torch, for the record) and return its name. ``export["selected"]`` becomes "int8" on a pass."""
    best: tuple[float, str] | None = None
    for recipe in INT8_LADDER:
        path = scratch / f"model.{recipe.name}.onnx"
        excluded = quantize(scratch / "model.fp32.onnx", path, recipe)
        export["variants"]["int8"] = _file_entry(path)
        atomic_write_json(scratch / EXPORT_MANIFEST, export)
        gate = checker.check(OnnxEncoder(model_dir, "int8", num_threads=GATE_THREADS, export_dir=scratch))
        export["candidates"][recipe.name] = {**recipe.describe(), "fp32_nodes": len(excluded), "gate": gate,
                                             "bytes": path.stat().st_size}
        say(f"{model_id}: {recipe.name}: {_gate_line(gate)}")
        if best is None or gate["passed"] or gate["mean_cosine"] > best[0]:
            if best is not None:
                (scratch / f"model.{best[1]}.onnx").unlink(missing_ok=True)
            best = (gate["mean_cosine"], recipe.name)
        else:
            path.unlink()  # only the passing rung's file, or the closest failed one, stays
        if gate["passed"]:
            export["selected"] = "int8"
            break
    assert best is not None
    return best[1]


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _gate_line(gate: dict[str, Any]) -> str:
    recall = ", ".join(f"{lang} R@1/10 {row['onnx']:.3f} vs {row['torch']:.3f}"
                       for lang, row in gate.get("retrieval", {}).items())
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"])
    cosine = f"mean cosine {gate['mean_cosine']:.5f} (min {gate['min_cosine']:.4f})"
    return f"{cosine}{', ' + recall if recall else ''}; {verdict}"


class _GateChecker:
    """Torch's probe vectors computed once, every candidate compared against them."""

    def __init__(self, reference: Encoder, probe: list[str], retrieval_gate: RetrievalGate | None,
                 languages: list[str]) -> None:
        self.reference, self.probe, self.retrieval_gate, self.languages = reference, probe, retrieval_gate, languages
        self.torch_vectors = np.vstack([reference.encode_queries(probe), reference.encode_passages(probe)])

    def check(self, candidate: OnnxEncoder) -> dict[str, Any]:
        vectors = np.vstack([candidate.encode_queries(self.probe), candidate.encode_passages(self.probe)])
        cosines = np.sum(vectors * self.torch_vectors, axis=1)
        gate: dict[str, Any] = {"probe_texts": len(self.probe), "mean_cosine": round(float(cosines.mean()), 6),
                                "min_cosine": round(float(cosines.min()), 6), "retrieval": {}, "failures": []}
        if gate["mean_cosine"] < MIN_MEAN_COSINE:
            gate["failures"].append(f"mean cosine {gate['mean_cosine']:.4f} < {MIN_MEAN_COSINE}")
        measured = self.retrieval_gate(self.reference, candidate) if self.retrieval_gate else {}
        for language in self.languages:
            row = measured.get(language)
            if row is None:
                gate["failures"].append(f"{language} retrieval not measured (give `repliq models prepare` dev "
                                        "dialogues in that language)")
                continue
            drop = round(100 * (row["torch"] - row["onnx"]), 3)
            gate["retrieval"][language] = {**row, "drop_points": drop}
            if drop > MAX_RECALL_DROP_POINTS:
                gate["failures"].append(f"{language} R@1/10 {100 * row['onnx']:.1f} is {drop:.1f} points below "
                                        f"torch's {100 * row['torch']:.1f}")
        gate["passed"] = not gate["failures"]
        return gate


def _check_tokenizer(reference: Encoder, model_dir: Path, scratch: Path, export: dict[str, Any],
                     probe: list[str]) -> None:
    """ONNX Runtime gets token ids from our tokenizer call, not sentence-transformers': they must agree."""
    atomic_write_json(scratch / EXPORT_MANIFEST, export)
    onnx_side = OnnxEncoder(model_dir, "fp32", num_threads=GATE_THREADS, export_dir=scratch)
    prefix = reference.manifest.query_prefix
    for start in range(0, len(probe), 64):
        batch = [prefix + text for text in probe[start:start + 64]]
        ours = onnx_side.tokenize(batch)
        theirs = reference._model.preprocess(batch)
        if ours["input_ids"].shape != tuple(theirs["input_ids"].shape) or not np.array_equal(
                ours["input_ids"], theirs["input_ids"].numpy()):
            raise OnnxExportError(f"{model_dir}: the tokenizer the ONNX encoder would use does not reproduce "
                                  f"sentence-transformers' token ids (probe texts {start}-{start + len(batch)}); "
                                  "this model cannot be exported, keep [encoder] backend = \"torch\"")


def _pooled_module(transformer: Any) -> Any:
    import torch

    # Defined here so that importing this module does not import torch.
    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Keywords: transformers 5 rejects positional arguments here.
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return MeanPooled().eval()


def _check_layout(st: Any, model_dir: Path) -> Any:
    """The transformer of a Transformer -> mean Pooling (-> Normalize) model; anything else is refused."""
    kinds = [type(module).__name__ for module in st]
    if kinds[:2] != ["Transformer", "Pooling"] or any(kind != "Normalize" for kind in kinds[2:]):
        raise OnnxExportError(f"{model_dir} is {' -> '.join(kinds)}; the ONNX export handles Transformer -> mean "
                              "Pooling (-> Normalize) only, so keep [encoder] backend = \"torch\" for it")
    config = st[1].get_config_dict()
    if config.get("pooling_mode") not in ("mean", ["mean"]):
        raise OnnxExportError(f"{model_dir} pools with {config.get('pooling_mode')!r}; the ONNX export handles "
                              "mean pooling only, so keep [encoder] backend = \"torch\" for it")
    return st[0]


def export_fp32(reference: Encoder, out_path: Path) -> dict[str, Any]:
    """Write the fp32 graph (token ids and mask in, mean-pooled vector out); return the tokenizer settings."""
    import torch

    st = reference._model
    transformer = _check_layout(st, reference.model_dir)
    module = _pooled_module(transformer.auto_model)
    # A padded row in the example: an all-ones mask lets transformers skip masking, and tracing would bake
    # that shortcut into the graph.
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 5, 2, 0, 0]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape checks that hold for every input we feed
        torch.onnx.export(module, (ids, mask), str(out_path), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"},
                                        "sentence_embedding": {0: "batch"}})
    return {"path": "", "max_seq_length": int(st.max_seq_length),
            "do_lower_case": bool(getattr(transformer, "do_lower_case", False))}

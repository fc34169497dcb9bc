"""Encoder backends side by side: torch fp32, ONNX Runtime fp32 and every int8 rung of the export ladder, in one run.

Per backend: ms per query at batch 1 and at batch 32, and sentences/s at batch 32, on real bilingual
queries (the starter bank, with the model's query prefix). Rounds interleave the backends (torch, fp32,
int8, torch, ...) and the median round is reported, so a burst of load from other processes on a shared
machine hits every backend alike; the ratios to torch are the numbers to read.

Needs the export made by `repliq models prepare` (it also records the fidelity gate quoted here). The
export keeps one int8 file; with ``--rungs`` every rung of ``retriever.onnx_quantize.INT8_LADDER`` is
re-quantized from the export's fp32 model into a scratch directory and timed too, beside the gate
verdict `repliq models prepare` recorded for it.

    python -m bench.bench_encoder_backends [--model e5-small] [--threads 1] [--rounds 5] [--rungs]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import markdown_table, write_results
from core.config import load_settings

NAME = "encoder_backends"


def _queries(count: int) -> list[str]:
    from core.bank.default import starter_rows

    rows = starter_rows()
    english = [r.text for r in rows if r.language == "en"]
    russian = [r.text for r in rows if r.language == "ru"]
    mixed = [text for pair in zip(english, russian, strict=False) for text in pair]
    return (mixed * (count // max(len(mixed), 1) + 1))[:count]


def _ms_per_query(encode: Callable[[list[str]], Any], texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        encode(texts[start:start + batch])
    return 1000 * (time.perf_counter() - started) / len(texts)


def _backends(model: str, threads: int, rungs: Path | None) -> dict[str, Any]:
    import torch

    from core.models.registry import resolve
    from retriever.encoder import Encoder
    from retriever.onnx_encoder import OnnxEncoder

    settings = load_settings()
    model_dir = resolve(model, settings.models_dir)
    torch.set_num_threads(threads)
    backends = {"torch fp32": Encoder(model_dir, device="cpu", num_threads=threads),
                "onnx fp32": OnnxEncoder(model_dir, "fp32", num_threads=threads),
                "onnx int8": OnnxEncoder(model_dir, "int8", num_threads=threads)}
    if rungs is not None:
        for name, export_dir in _rung_exports(model_dir, rungs).items():
            backends[f"rung {name}"] = OnnxEncoder(model_dir, "int8", num_threads=threads, export_dir=export_dir)
    return backends


def _rung_exports(model_dir: Path, scratch: Path) -> dict[str, Path]:
    """One scratch export per ladder rung: the export's manifest with that rung's file as its int8 variant."""
    from core.atomic import atomic_write_json, sha256_file
    from retriever.onnx_encoder import EXPORT_MANIFEST, ONNX_DIR, read_export
    from retriever.onnx_quantize import INT8_LADDER, quantize

    export = read_export(model_dir)
    assert export is not None, f"{model_dir} has no ONNX export; run `repliq models prepare` first"
    fp32 = model_dir / ONNX_DIR / export["variants"]["fp32"]["file"]
    out = {}
    for recipe in INT8_LADDER:
        folder = scratch / recipe.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.int8.onnx"
        quantize(fp32, path, recipe)
        entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        atomic_write_json(folder / EXPORT_MANIFEST, {**export, "variants": {"int8": entry}})
        out[recipe.name] = folder
    return out


def run(model: str, threads: int, rounds: int, singles: int, batched: int, rungs: bool = False) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="rungs-")) if rungs else None
    try:
        backends = _backends(model, threads, scratch)
        return _measure(backends, model, threads, rounds, singles, batched)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _measure(backends: dict[str, Any], model: str, threads: int, rounds: int, singles: int,
             batched: int) -> dict[str, Any]:
    texts = _queries(max(singles, batched))
    for encoder in backends.values():  # warm-up: first calls allocate and tune kernels
        encoder.encode_queries(texts[:32])
        encoder.encode_queries(texts[:1])
    samples: dict[str, dict[str, list[float]]] = {name: {"b1": [], "b32": []} for name in backends}
    for _ in range(rounds):
        for name, encoder in backends.items():
            samples[name]["b1"].append(_ms_per_query(encoder.encode_queries, texts[:singles], 1))
            samples[name]["b32"].append(_ms_per_query(encoder.encode_queries, texts[:batched], 32))
    results = {}
    for name, runs in samples.items():
        b1, b32 = statistics.median(runs["b1"]), statistics.median(runs["b32"])
        results[name] = {"ms_per_query_batch1": round(b1, 2), "ms_per_query_batch32": round(b32, 2),
                         "sentences_per_s_batch32": round(1000 / b32, 1), "rounds_b1": runs["b1"],
                         "rounds_b32": runs["b32"]}
    base = results["torch fp32"]
    for row in results.values():
        row["speedup_batch1"] = round(base["ms_per_query_batch1"] / row["ms_per_query_batch1"], 2)
        row["speedup_batch32"] = round(base["ms_per_query_batch32"] / row["ms_per_query_batch32"], 2)
    onnx = backends["onnx int8"]
    return {"model": model, "threads": threads, "rounds": rounds, "queries_batch1": singles,
            "queries_batch32": batched, "results": results,
            "export": {key: onnx.export.get(key) for key in ("selected", "warnings", "thresholds")},
            "gates": {variant: entry.get("gate") for variant, entry in onnx.export["variants"].items()},
            "int8_recipe": onnx.export["variants"]["int8"].get("recipe"),
            "cpu_int8_flags": onnx.export.get("cpu_int8_flags"),
            "int8_candidates": {name: c["gate"] for name, c in (onnx.export.get("candidates") or {}).items()}}


def section(record: dict[str, Any]) -> str:
    rows = [[name, r["ms_per_query_batch1"], r["ms_per_query_batch32"], r["sentences_per_s_batch32"],
             f"{r['speedup_batch1']:.2f}x", f"{r['speedup_batch32']:.2f}x"] for name, r in record["results"].items()]
    table = markdown_table(["backend", "ms/query, batch 1", "ms/query, batch 32", "sentences/s, batch 32",
                            "vs torch, batch 1", "vs torch, batch 32"], rows)
    gate_rows = []
    for variant, gate in record["gates"].items():
        if not gate:
            continue
        recall = "; ".join(f"{lang} {100 * g['onnx']:.1f} vs {100 * g['torch']:.1f} (n={g['n']})"
                           for lang, g in gate.get("retrieval", {}).items())
        gate_rows.append([f"onnx {variant}", f"{gate['mean_cosine']:.4f}", f"{gate['min_cosine']:.4f}",
                          recall or "not measured", "passed" if gate["passed"] else "failed"])
    gates = markdown_table(["export", "mean cosine to torch", "min cosine", "R@1/10 ONNX vs torch", "gate"],
                           gate_rows)
    return (f"## Encoder backends (issue 13) — `bench/bench_encoder_backends.py`\n\n"
            f"{record['model']}, {record['threads']} intra-op thread(s), real bilingual queries with the query "
            f"prefix; median of {record['rounds']} interleaved rounds ({record['queries_batch1']} single queries "
            f"and {record['queries_batch32']} queries in batches of 32 per round). The machine was shared with "
            "other jobs while this ran (see the load average below), so absolute numbers are pessimistic; the "
            "ratios to torch come from the same rounds.\n\n"
            f"{table}\n\nFidelity gate recorded by `repliq models prepare` (int8 recipe "
            f"`{record['int8_recipe']}`; `backend = \"auto\"` serves `{record['export']['selected']}`; CPU int8 "
            f"features where it ran: {', '.join(record.get('cpu_int8_flags') or []) or 'not recorded'}):\n\n"
            f"{gates}\n\n{_ladder_table(record)}\n")


def _ladder_table(record: dict[str, Any]) -> str:
    """Every rung of the int8 ladder: its gate verdict (from the export manifest) and, when timed, its speed."""
    from retriever.onnx_quantize import INT8_LADDER

    rows = []
    for recipe in INT8_LADDER:
        gate = record.get("int8_candidates", {}).get(recipe.name)
        timed = record["results"].get(f"rung {recipe.name}", {})
        recall = {lang: f"{100 * g['onnx']:.1f} vs {100 * g['torch']:.1f}"
                  for lang, g in (gate or {}).get("retrieval", {}).items()}
        verdict = "not gated (an earlier rung passed)" if gate is None else (
            "passed" if gate["passed"] else "failed: " + "; ".join(gate["failures"]))
        rows.append([f"`{recipe.name}`", f"{gate['mean_cosine']:.4f}" if gate else "-",
                     f"{gate['min_cosine']:.4f}" if gate else "-", recall.get("en", "-"), recall.get("ru", "-"),
                     timed.get("ms_per_query_batch1", "-"), timed.get("ms_per_query_batch32", "-"), verdict])
    return ("The int8 ladder, in the order the export climbs it (the first rung to pass is served; R@1/10 over "
            "300 held-out contexts per language, ONNX vs torch; ms/query from the rounds above when run with "
            "`--rungs`):\n\n" + markdown_table(
                ["rung", "mean cosine", "min cosine", "en R@1/10", "ru R@1/10", "ms/query b1", "ms/query b32",
                 "gate"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="e5-small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=64, help="single queries per round")
    parser.add_argument("--batched", type=int, default=256, help="queries in batches of 32 per round")
    parser.add_argument("--rungs", action="store_true", help="also re-quantize and time every int8 ladder rung")
    args = parser.parse_args()
    record = run(args.model, args.threads, args.rounds, args.singles, args.batched, args.rungs)
    write_results(NAME, record, section(record))
    for name, row in record["results"].items():
        print(f"{name:40} b1 {row['ms_per_query_batch1']:7.2f} ms  b32 {row['ms_per_query_batch32']:7.2f} ms  "
              f"{row['sentences_per_s_batch32']:7.1f}/s  x{row['speedup_batch1']} / x{row['speedup_batch32']}")


if __name__ == "__main__":
    main()

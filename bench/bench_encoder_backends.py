"""Encoder backends side by side: torch fp32, ONNX Runtime fp32 and ONNX Runtime int8, in one run.

Per backend: ms per query at batch 1 and at batch 32, and sentences/s at batch 32, on real bilingual
queries (the starter bank, with the model's query prefix). Rounds interleave the backends (torch, fp32,
int8, torch, ...) and the median round is reported, so a burst of load from other processes on a shared
machine hits every backend alike; the ratios to torch are the numbers to read.

Needs the export made by `repliq models prepare` (it also records the fidelity gate quoted here).

    python -m bench.bench_encoder_backends [--model e5-small] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
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


def _backends(model: str, threads: int) -> dict[str, Any]:
    import torch

    from core.models.registry import resolve
    from retriever.encoder import Encoder
    from retriever.onnx_encoder import OnnxEncoder

    settings = load_settings()
    model_dir = resolve(model, settings.models_dir)
    torch.set_num_threads(threads)
    return {"torch fp32": Encoder(model_dir, device="cpu", num_threads=threads),
            "onnx fp32": OnnxEncoder(model_dir, "fp32", num_threads=threads),
            "onnx int8": OnnxEncoder(model_dir, "int8", num_threads=threads)}


def run(model: str, threads: int, rounds: int, singles: int, batched: int) -> dict[str, Any]:
    backends = _backends(model, threads)
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
    ladder = "\n".join(f"- `{name}`: mean cosine {g['mean_cosine']:.4f}; "
                       + ("passed" if g["passed"] else "failed: " + "; ".join(g["failures"]))
                       for name, g in record.get("int8_candidates", {}).items())
    return (f"## Encoder backends (issue 13) — `bench/bench_encoder_backends.py`\n\n"
            f"{record['model']}, {record['threads']} intra-op thread(s), real bilingual queries with the query "
            f"prefix; median of {record['rounds']} interleaved rounds ({record['queries_batch1']} single queries "
            f"and {record['queries_batch32']} queries in batches of 32 per round). The machine was shared with "
            "other jobs while this ran (see the load average below), so absolute numbers are pessimistic; the "
            "ratios to torch come from the same rounds.\n\n"
            f"{table}\n\nFidelity gate recorded by `repliq models prepare` (int8 recipe "
            f"`{record['int8_recipe']}`; `backend = \"auto\"` serves `{record['export']['selected']}`):\n\n{gates}\n\n"
            "The int8 recipes tried (ladder order: per-tensor, per-channel, per-channel with the feed-forward "
            f"down-projections in fp32; the first to pass would be served):\n\n{ladder}\n\n"
            "R@1/10 is over 300 held-out contexts per language, so one context whose gold changes rank moves it "
            "by 0.33 points: the 0.5-point budget allows one net flip. Russian joke dialogues have many "
            "near-tied candidates, and the per-channel recipes flip several of them although their vectors stay within "
            "0.995 cosine of torch; the gate then serves ONNX fp32, which is exact and still faster than torch "
            "at batch 1.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="e5-small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=64, help="single queries per round")
    parser.add_argument("--batched", type=int, default=256, help="queries in batches of 32 per round")
    args = parser.parse_args()
    record = run(args.model, args.threads, args.rounds, args.singles, args.batched)
    write_results(NAME, record, section(record))
    for name, row in record["results"].items():
        print(f"{name:10} b1 {row['ms_per_query_batch1']:7.2f} ms  b32 {row['ms_per_query_batch32']:7.2f} ms  "
              f"{row['sentences_per_s_batch32']:7.1f}/s  x{row['speedup_batch1']} / x{row['speedup_batch32']}")


if __name__ == "__main__":
    main()

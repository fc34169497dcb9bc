"""Retrieval-only serving benchmark on a 100k-phrase bank, over real gRPC on loopback.

What it measures, per encoder (MiniLM, e5-small):
- encoder throughput (sentences/s, batch 64);
- index build time (exact flat vs HNSW) and HNSW recall@10 against exact search;
- Respond latency p50/p95/p99 and throughput at concurrency 1, 8, 32, with and without
  micro-batching (the ratio is the baseline comparison, measured in the same run).

The 100k bank: encoding 100k sentences takes 8-20 minutes on 2 cores, so the bench encodes
``--real`` real replies (starter + chatterbot + chitchat) and derives the rest as normalized mixes of
two real embeddings plus noise. Queries are real user turns encoded live by the real encoder.
The load generator runs in a separate process (it shares the 2 cores with the server).

    python -m bench.bench_retrieval [--encoders minilm e5-small] [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from bench.report import markdown_table, run_concurrently, write_results
from core.config import RetrievalConfig, ServerConfig, load_settings

CONCURRENCY = (1, 8, 32)


def real_texts(limit: int) -> tuple[list[str], list[str]]:
    """Real replies for the bank and real opening user turns for queries (English)."""
    from core.bank.default import chatterbot_rows, chitchat_rows, starter_rows

    replies = [r.text for r in starter_rows() if r.language == "en"]
    replies += [r.text for r in chatterbot_rows(languages=("en",))[0]]
    replies += [r.text for r in chitchat_rows(limit=limit)]
    replies = list(dict.fromkeys(replies))[:limit]
    queries = [r.text for r in chitchat_rows(limit=limit + 2000, seed=7)][-2000:]
    return replies, queries


def synthetic_bank(base: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``size`` unit vectors: the real ones, then mixes a + 0.5 b + noise of random real pairs."""
    rng = np.random.default_rng(seed)
    extra = size - len(base)
    a, b = rng.integers(0, len(base), extra), rng.integers(0, len(base), extra)
    mixed = base[a] + 0.5 * base[b] + rng.normal(0, 0.02, (extra, base.shape[1])).astype(np.float32)
    vectors = np.vstack([base, mixed]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = np.concatenate([np.stack([np.arange(len(base)), np.full(len(base), -1)], 1), np.stack([a, b], 1)])
    return vectors, pairs


def run_load(port: int, texts: list[str], concurrency: int, n_requests: int) -> dict[str, float]:
    """Runs in a child process: ``concurrency`` threads send ``n_requests`` Respond calls in total."""
    from dialog.serving.client import ChatClient

    client = ChatClient("127.0.0.1", port, timeout_s=30)
    for text in texts[:5]:
        client.respond([("user", text)], top_k=5)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                client.respond([("user", texts[i % len(texts)])], top_k=5)
                with lock:
                    latencies.append(time.perf_counter() - started)
            except Exception:
                with lock:
                    errors += 1

    wall = run_concurrently(worker, concurrency)
    client.close()
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


class _FixedBank:
    """The BankRetriever only asks a bank for its revision (to know when to reload)."""

    revision = 0


def bench_encoder(name: str, replies: list[str], queries: list[str], bank_size: int, n_requests: int,
                  pool: ProcessPoolExecutor) -> dict:
    from dialog.serving.pipeline import Pipeline
    from dialog.serving.server import start_server
    from retriever.bank_index import BankIndex, IndexManifest, PhraseInfo
    from retriever.bank_retriever import BankRetriever
    from retriever.encoder import Encoder
    from retriever.index import VectorIndex
    from retriever.microbatch import MicroBatcher

    settings = load_settings()
    encoder = Encoder.from_config(replace(settings, encoder=replace(settings.encoder, name=name)))
    sample = replies[:512]
    encoder.encode_passages(sample[:64])
    started = time.perf_counter()
    encoder.encode_passages(sample)
    throughput = len(sample) / (time.perf_counter() - started)

    base = encoder.encode_passages(replies)
    vectors, pairs = synthetic_bank(base, bank_size)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    config = RetrievalConfig()
    timings, shards = {}, {}
    for kind in ("flat", "hnsw"):
        started = time.perf_counter()
        shards[kind] = VectorIndex.build(ids, vectors, config, kind=kind)
        timings[kind] = time.perf_counter() - started
    query_vecs = encoder.encode_queries(queries[:1000])
    _, exact = shards["flat"].search(query_vecs, 10)
    _, approx = shards["hnsw"].search(query_vecs, 10)
    recall = float(np.mean([len(set(e) & set(a)) / 10 for e, a in zip(exact, approx, strict=True)]))

    def text_of(i: int) -> str:
        a, b = pairs[i]
        return replies[a] if b < 0 else f"{replies[a]} {replies[b]}"

    phrases = {int(pid): PhraseInfo(text_of(i), "en", "approved") for i, pid in enumerate(ids)}
    manifest = IndexManifest(bank_revision=0, encoder_id=encoder.manifest.model_id, encoder_identity=encoder.identity,
                             encoder_weights_sha256=encoder.manifest.weights_sha256, dim=encoder.dim,
                             counts={"en": len(ids)}, kinds={"en": shards["hnsw"].kind}, params={},
                             shard_checksums={}, phrases_sha256="", content_sha256="", checksum="bench",
                             created="", faiss_version="", repliq_version="")
    bank_index = BankIndex(manifest, {"en": shards["hnsw"]}, phrases)
    serving = []
    for microbatch in (False, True):
        batcher = MicroBatcher(encoder.encode_queries, max_batch=64, max_wait_ms=2.0) if microbatch else None
        retriever = BankRetriever(encoder, bank_index, _FixedBank(), context_turns=3, microbatcher=batcher)
        server = start_server(Pipeline([retriever], pool_k=50), replace(ServerConfig(), port=0, max_workers=32),
                              default_top_k=5)
        for concurrency in CONCURRENCY:
            result = pool.submit(run_load, server.port, queries, concurrency, n_requests).result()
            serving.append({"microbatch": microbatch, **result})
            print(json.dumps({"encoder": name, **serving[-1]}), flush=True)
        server.stop(grace=5)
        if batcher is not None:
            batcher.close()
    return {"encoder": name, "sentences_per_s": throughput, "bank_size": len(ids), "real_vectors": len(base),
            "build_s": timings, "hnsw_recall_at_10": recall, "hnsw_params": {
                "M": config.hnsw_m, "efConstruction": config.hnsw_ef_construction, "efSearch": config.hnsw_ef_search},
            "serving": serving}


def render(results: list[dict], n_requests: int) -> str:
    size = results[0]["bank_size"] if results else 0
    real = results[0]["real_vectors"] if results else 0
    lines = ["## Retrieval serving (issue 2)", "",
             f"{size:,}-phrase English bank ({real:,} real embeddings, the rest derived from them), top-5,"
             f" {n_requests} requests per cell, gRPC on loopback, load generator in "
             "a second process on the same 2 cores. Targets (MiniLM): p99 ≤ 50 ms at concurrency 1, "
             "≥ 100 requests/s at concurrency 32.", ""]
    rows = []
    for result in results:
        by_key = {(s["microbatch"], s["concurrency"]): s for s in result["serving"]}
        for (microbatch, concurrency), cell in sorted(by_key.items()):
            base = by_key[(False, concurrency)]
            rows.append([result["encoder"], concurrency, "on" if microbatch else "off", cell["p50_ms"], cell["p95_ms"],
                         cell["p99_ms"], cell["rps"], cell["rps"] / base["rps"], cell["errors"]])
    lines.append(markdown_table(["encoder", "concurrency", "micro-batching", "p50 ms", "p95 ms", "p99 ms",
                                 "requests/s", "rps vs no batching", "errors"], rows))
    lines += ["", markdown_table(
        ["encoder", "sentences/s (batch 64)", "flat build s", "HNSW build s", "HNSW recall@10 vs exact"],
        [[r["encoder"], r["sentences_per_s"], r["build_s"]["flat"], r["build_s"]["hnsw"], r["hnsw_recall_at_10"]]
         for r in results])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["minilm", "e5-small"])
    parser.add_argument("--bank-size", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=6000, help="real replies encoded for the bank")
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    replies, queries = real_texts(args.real)
    results = []
    with ProcessPoolExecutor(1) as pool:
        for name in args.encoders:
            results.append(bench_encoder(name, replies, queries, args.bank_size, args.requests, pool))
    write_results("retrieval", {"args": vars(args), "results": results}, render(results, args.requests))
    print(render(results, args.requests))


if __name__ == "__main__":
    main()

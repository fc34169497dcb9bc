"""A bank of millions: the compressed index (IVF-PQ + refine) at 1M and 5M phrases, search alone.

What it measures per bank size: build time (train + add + recall tuning), memory (process RSS before and
after the build, its peak, and the serialized index bytes), recall@10 of real e5-small queries against
exact search over the same synthetic bank, and single-query search latency p50/p99 (``VectorIndex.search``
on one query, no encoder, no gRPC). Target at 5M (issue 19): recall@10 >= 0.95, p99 <= 20 ms.

The bank: like the 100k bench (bench/bench_retrieval.py), ``--real`` real English replies are encoded by
e5-small and the rest are normalized mixes a + 0.5 b + noise of random real pairs. Vectors are generated
chunk by chunk from a per-chunk seed, so a pass over 5M x 384 fp32 (7.7 GB) never holds more than one
chunk; the index is built with ``VectorIndex.build_chunked`` and the exact top-10 of the queries is a
streamed brute-force pass. Queries are real user turns encoded live with the query prefix.

    flock /tmp/repliq-heavy.lock nice -n 5 python -m bench.bench_scale --sizes 1000000
    flock /tmp/repliq-heavy.lock nice -n 5 python -m bench.bench_scale --sizes 5000000   # merged into scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from bench.report import RESULTS, markdown_table, write_results
from core.config import RetrievalConfig, load_settings

CACHE = Path("/tmp/repliq-bench-scale-base.npz")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_embeddings(n_real: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """e5-small passage vectors of real replies and query vectors of real user turns (cached in /tmp)."""
    if CACHE.is_file():
        cached = np.load(CACHE)
        if len(cached["base"]) >= n_real and len(cached["queries"]) >= n_queries:
            return cached["base"][:n_real], cached["queries"][:n_queries]
    from bench.bench_retrieval import real_texts
    from retriever.encoder import Encoder

    replies, queries = real_texts(n_real)
    encoder = Encoder.from_config(load_settings())
    base = encoder.encode_passages(replies).astype(np.float32)
    query_vecs = encoder.encode_queries(queries[:n_queries]).astype(np.float32)
    np.savez(CACHE, base=base, queries=query_vecs)
    return base, query_vecs


def chunk_source(base: np.ndarray, size: int, chunk: int):
    """Chunks (ids, unit vectors) of a ``size``-row bank: the real vectors first, then seeded mixes."""
    dim = base.shape[1]

    def chunks():
        for number, start in enumerate(range(0, size, chunk)):
            rows = np.arange(start, min(size, start + chunk))
            real = rows[rows < len(base)]
            n_mixed = len(rows) - len(real)
            rng = np.random.default_rng([19, number])
            a, b = rng.integers(0, len(base), n_mixed), rng.integers(0, len(base), n_mixed)
            mixed = base[a] + 0.5 * base[b] + 0.02 * rng.standard_normal((n_mixed, dim), dtype=np.float32)
            vectors = np.vstack([base[real], mixed]).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            yield rows + 1, vectors

    return chunks


def latencies_ms(index, queries: np.ndarray, warmup: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU milliseconds per single-query search, on one FAISS thread as serving runs it
    (``[server] search_threads = 1``). On a shared machine the wall p99 carries other jobs' scheduling; the
    calling thread's CPU time is the search's own work, so the two together say which one a tail came from."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for query in queries[:warmup]:
            index.search(query[None, :], 10)
        wall, cpu = [], []
        for query in queries:
            started, started_cpu = time.perf_counter(), time.thread_time()
            index.search(query[None, :], 10)
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - started_cpu) * 1000)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.array(wall), np.array(cpu)


def bench_size(size: int, base: np.ndarray, queries: np.ndarray, tune_queries: np.ndarray, config: RetrievalConfig,
               chunk: int, latency_queries: int) -> dict:
    import faiss

    from retriever import ivf
    from retriever.index import VectorIndex

    chunks = chunk_source(base, size, chunk)
    rss_before = rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    index = VectorIndex.build_chunked(base.shape[1], chunks, size, config, kind=ivf.KIND, tune_queries=tune_queries)
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    rss_after = rss_mb()
    print(json.dumps({"size": size, "build_s": build_s, "tuning": index.tuning}), flush=True)
    index_bytes = len(faiss.serialize_index(index._index))
    id_bytes = index._row_ids.nbytes + index._live.nbytes

    started = time.perf_counter()
    exact_rows = ivf.exact_neighbours(queries, np.full(len(queries), -1), chunks, 10)
    exact_s = time.perf_counter() - started
    _, found = index.search(queries, 10)
    recall = ivf.recall_at(found, exact_rows + 1)
    load_before = os.getloadavg()[0]
    lat, lat_cpu = latencies_ms(index, np.vstack([queries] * (1 + latency_queries // len(queries)))[:latency_queries])
    return {"size": size, "dim": base.shape[1], "kind": index.kind, "tuning": index.tuning,
            "build_s": build_s, "build_cpu_s": build_cpu_s, "exact_search_s": exact_s,
            "recall_at_10": recall, "queries": len(queries),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                           "mean": float(lat.mean()), "n": len(lat), "search_threads": 1,
                           "load_average_before": load_before},
            "cpu_ms": {"p50": float(np.percentile(lat_cpu, 50)), "p99": float(np.percentile(lat_cpu, 99))},
            "index_bytes": index_bytes, "id_arrays_bytes": id_bytes, "bytes_per_phrase": index_bytes / size,
            "fp32_bytes": size * base.shape[1] * 4,
            "rss_mb": {"before_build": rss_before, "after_build": rss_after, "peak": peak_rss_mb()},
            "faiss_threads": faiss.omp_get_max_threads(), "chunk_rows": chunk}


def render(results: list[dict]) -> str:
    lines = ["## A bank of millions (issue 19) — `bench/bench_scale.py`", "",
             "Compressed index (`retriever/ivf.py`: IVF-PQ + SQ8 refine, nprobe and k-factor tuned at build to "
             "recall@10 ≥ 0.95 on 1,000 real user-turn query vectors). Synthetic banks from real e5-small "
             "embeddings plus noise (as the 100k bench); recall of 1,000 other real user-turn queries against exact "
             "search over the same bank; "
             "latency of `VectorIndex.search` for one query on one FAISS thread, as served (no encoder, no gRPC): "
             "wall time, and the search thread's own CPU time, which other jobs on a shared machine cannot inflate; "
             "`load` is the 1-minute load average when the latency run started. Targets at 5M: recall@10 ≥ 0.95, "
             "p99 ≤ 20 ms.", ""]
    rows = []
    for r in sorted(results, key=lambda r: r["size"]):
        t = r["tuning"]
        rows.append([f"{r['size']:,}", f"IVF{t['nlist']},PQ{t['m']}x{t['nbits']}fs+{t['refine']}",
                     f"{t['nprobe']} / {t['k_factor']:g}", t["recall_at_10"], r["recall_at_10"],
                     r["latency_ms"]["p50"], r["latency_ms"]["p99"],
                     r.get("cpu_ms", {}).get("p99", "-"), r["latency_ms"].get("load_average_before", "-"), r["build_s"],
                     r["index_bytes"] / 2**20, r["bytes_per_phrase"], r["fp32_bytes"] / 2**20,
                     r["rss_mb"]["after_build"], r["rss_mb"]["peak"]])
    lines.append(markdown_table(
        ["phrases", "index", "nprobe / k-factor", "tuning recall@10", "recall@10 (real queries)",
         "p50 ms", "p99 ms", "CPU p99 ms", "load", "build s", "index MiB", "bytes/phrase", "fp32 vectors MiB",
         "RSS after build MiB",
         "peak RSS MiB"], rows))
    lines += ["", "RSS includes the Python id map of the index (a dict of phrase id → row, ~100 bytes per phrase) "
              "and the real embeddings; the peak includes one generated chunk and the training sample."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 5_000_000])
    parser.add_argument("--real", type=int, default=6000, help="real replies encoded for the bank")
    parser.add_argument("--queries", type=int, default=1000, help="real user-turn queries for recall")
    parser.add_argument("--latency-queries", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=200_000, help="rows generated and added at a time")
    parser.add_argument("--refine", default=RetrievalConfig().ivf_refine)
    parser.add_argument("--dry-run", action="store_true", help="print the results, write nothing")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base, all_queries = real_embeddings(args.real, 2 * args.queries)
    queries, tune_queries = all_queries[:args.queries], all_queries[args.queries:]  # disjoint: tune, then measure
    config = RetrievalConfig(ivf_refine=args.refine)
    previous = RESULTS / "scale.json"
    results = json.loads(previous.read_text())["results"] if previous.is_file() else []
    for size in args.sizes:
        result = {**bench_size(size, base, queries, tune_queries, config, args.chunk, args.latency_queries),
                  "args": vars(args)}
        print(json.dumps(result), flush=True)
        results = [r for r in results if r["size"] != size] + [result]
        if not args.dry_run:
            write_results("scale", {"results": results}, render(results))


if __name__ == "__main__":
    main()

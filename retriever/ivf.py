"""Compressed vectors for banks of millions: FAISS IVF-PQ with a refine stage, tuned to a recall target.

Flat and HNSW keep every fp32 vector (1.5 KB per 384-d phrase, HNSW ~1.7 KB with its graph), which stops
fitting a serving machine's memory in the millions. IVF-PQ keeps a short code per vector (``m`` 4-bit
codes, scanned with SIMD "fast scan") and scans only the ``nprobe`` nearest of ``nlist`` clusters; the
refine stage (SQ8 codes by default, dim bytes) re-scores ``k_factor`` x k shortlisted rows, buying back
the ranking precision PQ loses. Measured on e5 vectors (docs/scaling.md), 4-bit fast scan with m = dim/2
reached recall@10 0.98 at a third of the latency of 8-bit PQ with m = dim/8, whose shortlist capped recall
below 0.95 even with an exhaustive probe and k_factor 16. The search parameters are
measured, not guessed: at build a sample of the bank's own vectors is held out as queries, their exact
top-10 among the other vectors is computed, and nprobe / k_factor are raised until recall@10 reaches
``[retrieval] ivf_recall_target``; the choice and the measured recall are kept with the index (its
``tuning``), and the bank index manifest records them.

Vectors arrive as a chunk source (a callable returning an iterable of (ids, unit vectors) in row order),
read three times: training sample, add, exact neighbours of the tuning queries. Only one chunk and the
compressed index are in memory at once, so a 5M-phrase bank never needs its 7.7 GB of fp32 vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faiss
import numpy as np

from core.config import RetrievalConfig

KIND = "ivfpq"
REFINES = {"sq8": "SQ8", "fp16": "SQfp16", "flat": "Flat"}
TUNE_K = 10
CHUNK_ROWS = 65_536
# faiss wants at least 39 training points per k-means centroid (coarse clusters and PQ codebooks).
MIN_POINTS_PER_CENTROID = 39
K_FACTORS = (64, 32, 16, 8, 4, 2, 1)
Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def _default_m(dim: int) -> int:
    """Two dimensions per 4-bit sub-quantizer, and a divisor of ``dim`` (PQ splits it evenly)."""
    return next(m for m in range(max(1, dim // 2), 0, -1) if dim % m == 0)


def layout(n: int, dim: int, config: RetrievalConfig) -> dict[str, Any]:
    """nlist, m, nbits, refine and the training sample size for ``n`` vectors; bad settings name the key."""
    if config.ivf_refine not in REFINES:
        raise ValueError(f"[retrieval] ivf_refine must be one of {', '.join(REFINES)}, got {config.ivf_refine!r}")
    if not 0 < config.ivf_recall_target <= 1:
        raise ValueError(f"[retrieval] ivf_recall_target must be in (0, 1], got {config.ivf_recall_target}")
    if config.ivf_nlist < 0 or config.ivf_pq_m < 0 or config.ivf_tune_queries < 1:
        raise ValueError("[retrieval] ivf_nlist and ivf_pq_m must be 0 (auto) or positive, ivf_tune_queries >= 1")
    m = config.ivf_pq_m or _default_m(dim)
    if dim % m:
        raise ValueError(f"[retrieval] ivf_pq_m = {m} must divide the vector dimension {dim}; set it to 0 (auto)")
    cap = 2 ** int(math.log2(max(1, n // MIN_POINTS_PER_CENTROID)))
    nlist = min(config.ivf_nlist or 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n)))), cap)
    train_rows = min(n, max(64 * nlist, 20_000))
    nbits = 4  # fast scan: 16 centroids per sub-quantizer, distances looked up in SIMD registers
    return {"nlist": nlist, "m": m, "nbits": nbits, "refine": config.ivf_refine, "train_rows": train_rows}


def gather(chunks: Chunks, rows: np.ndarray, dim: int) -> np.ndarray:
    """The vectors at sorted row numbers ``rows``, read in one pass over the chunks."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    offset = filled = 0
    for _, vectors in chunks():
        end = np.searchsorted(rows, offset + len(vectors))
        out[filled:end] = vectors[rows[filled:end] - offset]
        filled, offset = end, offset + len(vectors)
    if filled != len(rows):
        raise ValueError(f"the vector chunks hold {offset} rows, fewer than the {rows[-1] + 1} expected")
    return out


def trained_index(dim: int, chunks: Chunks, total: int, config: RetrievalConfig,
                  seed: int = 0) -> tuple[faiss.Index, dict[str, Any]]:
    """An empty IVF-PQ (+ refine) index trained on a random sample of the chunks, and its layout."""
    shape = layout(total, dim, config)
    rows = np.sort(np.random.default_rng(seed).choice(total, shape["train_rows"], replace=False))
    spec = f"IVF{shape['nlist']},PQ{shape['m']}x{shape['nbits']}fs,Refine({REFINES[shape['refine']]})"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    index.train(gather(chunks, rows, dim))
    return index, shape


def apply(index: faiss.Index, nprobe: int, k_factor: float) -> None:
    """Set the search parameters on the index itself (they are serialized with it)."""
    faiss.extract_index_ivf(index).nprobe = int(nprobe)
    if hasattr(index, "k_factor"):
        index.k_factor = float(k_factor)


def exact_neighbours(queries: np.ndarray, rows: np.ndarray, chunks: Chunks, k: int) -> np.ndarray:
    """Row numbers of each query's exact top-k among the chunks, the query's own row left out."""
    best_scores = np.full((len(queries), k + 1), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k + 1), -1, dtype=np.int64)
    offset = 0
    for _, vectors in chunks():
        scores, found = faiss.knn(queries, vectors, min(k + 1, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
        all_scores = np.hstack([best_scores, scores])
        all_rows = np.hstack([best_rows, found + offset])
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, : k + 1]
        best_scores = np.take_along_axis(all_scores, order, 1)
        best_rows = np.take_along_axis(all_rows, order, 1)
        offset += len(vectors)
    return _without_self(best_rows, rows, k)


def _without_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    keep = found != rows[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in rank order
    return np.take_along_axis(found, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def query_probe(texts: list[str], encode: Callable[[list[str]], np.ndarray],
                config: RetrievalConfig, seed: int = 2) -> np.ndarray | None:
    """Tuning queries for a bank that gets the compressed kind: a sample of its own texts encoded as queries.

    Query vectors (query prefix, adapter) sit elsewhere than passage vectors; tuned on held-out passages
    alone, a 30k e5 bank chose nprobe 2 of 256 and real queries then found 0.43 of their top-10.
    """
    if len(texts) <= config.ivf_min:
        return None
    picks = np.random.default_rng(seed).choice(len(texts), min(len(texts), config.ivf_tune_queries), replace=False)
    return np.asarray(encode([texts[i] for i in sorted(picks)]), dtype=np.float32)


def tune(index: faiss.Index, shape: dict[str, Any], chunks: Chunks, total: int, config: RetrievalConfig,
         queries: np.ndarray | None = None, floor: dict[str, Any] | None = None, seed: int = 1) -> dict[str, Any]:
    """Choose the cheapest (nprobe, k_factor) whose recall@10 on tuning queries meets the target.

    ``queries`` (unit query vectors, e.g. :func:`query_probe`) are what serving will see; without them
    held-out bank vectors stand in, and a ``floor`` (the previous tuning, when it was done on queries)
    keeps a rebuild from choosing a cheaper search than real queries needed. Returns the layout plus the
    choice and its measured recall; ``target_met`` is false when even an exhaustive probe with the widest
    refine falls short (then the best measured pair is used).
    """
    if queries is not None and len(queries):
        rows, tuned_on = np.full(len(queries), -1, dtype=np.int64), "queries"
    else:
        n_queries = min(config.ivf_tune_queries, max(1, total // 10))
        rows, tuned_on = np.sort(np.random.default_rng(seed).choice(total, n_queries, replace=False)), "bank"
        queries = gather(chunks, rows, index.d)
    truth = exact_neighbours(queries, rows, chunks, TUNE_K)

    def measure(nprobe: int, k_factor: float) -> float:
        apply(index, nprobe, k_factor)
        _, found = index.search(queries, TUNE_K + 1)
        return recall_at(_without_self(found, rows, TUNE_K), truth)

    nlist, target = shape["nlist"], config.ivf_recall_target
    nprobes = sorted({min(2 ** i, nlist) for i in range(int(math.log2(nlist)) + 2)})
    k_factors = K_FACTORS
    best: tuple[float, int, int, float] | None = None  # (cost, nprobe, k_factor, recall)
    fallback = (0.0, nlist, k_factors[0])
    start = 0
    for k_factor in k_factors:  # a smaller k_factor never needs a smaller nprobe: resume where the last stopped
        for position in range(start, len(nprobes)):
            # Work per query: PQ code lookups in the probed lists, plus dim-long re-scoring of the shortlist.
            cost = nprobes[position] * total / nlist * shape["m"] + TUNE_K * k_factor * index.d
            if best is not None and cost >= best[0]:
                break
            recall = measure(nprobes[position], k_factor)
            fallback = max(fallback, (recall, nprobes[position], k_factor))
            if recall >= target:
                best, start = (cost, nprobes[position], k_factor, recall), position
                break
        if best is None:  # the widest refine fell short: a narrower one cannot do better
            break
    nprobe, k_factor, recall = (best[1], best[2], best[3]) if best else (fallback[1], fallback[2], fallback[0])
    if tuned_on == "bank" and floor and floor.get("tuned_on") == "queries":
        nprobe = max(nprobe, min(nlist, round(floor["nprobe"] * nlist / floor["nlist"])))
        k_factor = max(k_factor, floor["k_factor"])
        recall, tuned_on = measure(nprobe, k_factor), "bank, floored by the previous query tuning"
    apply(index, nprobe, k_factor)
    return {**shape, "nprobe": nprobe, "k_factor": k_factor, "recall_at_10": round(recall, 4),
            "recall_target": target, "target_met": recall >= target, "tuning_queries": len(queries),
            "tuned_on": tuned_on}


def stored_chunks(index: faiss.Index, rows: np.ndarray, ids: np.ndarray,
                  extra: tuple[np.ndarray, np.ndarray] | None = None) -> Chunks:
    """A chunk source over the live ``rows`` of an existing index (decoded, no re-encoding), then ``extra``."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start:start + CHUNK_ROWS]
            yield ids[start:start + CHUNK_ROWS], index.reconstruct_batch(part.astype(np.int64))
        if extra is not None and len(extra[0]):
            yield extra

    return chunks

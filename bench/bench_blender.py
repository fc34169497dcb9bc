"""Per-request overhead of the blender at a pool of 50 bank candidates (budget: 10 ms).

Trains a blender on chitchat-dataset contexts with a fixed number of rounds (no early stopping, so
the model is at least as large as a real early-stopped one), then times ``Blender.rerank`` on pools of
bank phrases that carry retrieval scores, as they arrive from the retriever. Features are bank-only:
no LM scorer and no specificity scorer. Writes ``bench/results/blender.json`` and prints a table.

Run: ``python bench/bench_blender.py [--requests 300] [--pool 50] [--rounds 300]``
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import lightgbm as lgb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.atomic import atomic_write_json  # noqa: E402
from core.corpora import context_response_pairs, read_chitchat  # noqa: E402
from core.types import SOURCE_BANK, Candidate  # noqa: E402
from ranker.annotators import AnnotatorResources, build_annotators  # noqa: E402
from ranker.blender import Blender  # noqa: E402
from ranker.dataset import BuilderConfig, build_ranking_dataset  # noqa: E402
from ranker.idf import IdfTable  # noqa: E402
from ranker.train import BlenderTrainConfig, train_blender  # noqa: E402

BUDGET_MS = 10.0


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _turn_timings(encoder_name: str, bank: list[Candidate], pairs: list, pool_size: int,
                  rng: np.random.Generator) -> dict[str, list[float]]:
    """The turn annotator's cost per request with bank vectors already cached (as serving reads them from
    the index), against the baseline of encoding the retrieval query once, on the same contexts."""
    from core.config import default_models_dir
    from core.models.registry import resolve
    from ranker.features.turn import TurnAnnotator
    from retriever.encoder import Encoder
    from retriever.encoder_cache import CachingEncoder

    encoder = Encoder(resolve(encoder_name, default_models_dir()))
    pools = [[bank[i] for i in rng.choice(len(bank), pool_size, replace=False)] for _ in pairs]
    texts = sorted({c.text for pool in pools for c in pool})
    cached = CachingEncoder(encoder)
    cached.seed_passages(texts, encoder.encode_passages(texts))
    turn = TurnAnnotator(AnnotatorResources(encoder=cached))
    out: dict[str, list[float]] = {"retrieval_query_encode": [], "turn_features": []}
    for pair, pool in zip(pairs, pools, strict=True):
        start = time.perf_counter()
        encoder.encode_queries([pair.context.as_query_text(3)])
        mid = time.perf_counter()
        turn.annotate([pair.context], [pool])
        out["retrieval_query_encode"].append(mid - start)
        out["turn_features"].append(time.perf_counter() - mid)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pool", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "blender.json")
    parser.add_argument("--encoder", help="also time the turn annotator with this encoder (cache name or path), "
                        "beside the retrieval query encoding serving already pays for the same context")
    parser.add_argument("--turn-requests", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    dialogues = [d for d in read_chitchat() if len(d.turns) >= 6]
    train_dialogues, bank_dialogues = dialogues[:500], dialogues[500:]
    pairs = [p for d in train_dialogues for p in islice(context_response_pairs([d]), 2, 6)]
    bank = [Candidate(t.text, SOURCE_BANK, "en", phrase_id=i)
            for i, t in enumerate(t for d in bank_dialogues for t in d.turns)]
    idf = IdfTable.build([c.text for c in bank] + [t.text for d in train_dialogues for t in d.turns])
    annotators = build_annotators(AnnotatorResources(idf=idf))
    dataset = build_ranking_dataset(pairs, annotators, bank, config=BuilderConfig(k_random=19),
                                    resources={"idf": idf.hash})
    config = BlenderTrainConfig(rounds=args.rounds, early_stopping=0)
    with tempfile.TemporaryDirectory() as tmp:
        train_blender(dataset, config, Path(tmp) / "blender", idf=idf, annotators=annotators)
        blender = Blender.load(Path(tmp) / "blender")

    rng = np.random.default_rng(0)
    eval_pairs = list(islice(context_response_pairs(bank_dialogues[-300:]), args.requests))

    def pool() -> list[Candidate]:
        picks = rng.choice(len(bank), args.pool, replace=False)
        return [replace(bank[i], stage_scores={"retrieval": 0.9 - 0.005 * r, "retrieval_rank": float(r)})
                for r, i in enumerate(picks)]

    timings: dict[str, list[float]] = {"rerank": [], "rerank_explain": [], "features": [], "booster_predict": []}
    for i, pair in enumerate(eval_pairs * 2):
        warm = i >= 20
        candidates = pool()
        start = time.perf_counter()
        X = blender.features(pair.context, candidates)
        mid = time.perf_counter()
        blender.raw_scores(X)
        end = time.perf_counter()
        if warm:
            timings["features"].append(mid - start)
            timings["booster_predict"].append(end - mid)
        for key, explain in (("rerank", False), ("rerank_explain", True)):
            candidates = pool()
            start = time.perf_counter()
            blender.rerank(pair.context, candidates, explain=explain)
            if warm:
                timings[key].append(time.perf_counter() - start)

    if args.encoder:
        timings.update(_turn_timings(args.encoder, bank, eval_pairs[:args.turn_requests], args.pool, rng))
    results = {name: _stats(samples) for name, samples in timings.items()}
    report = {
        "benchmark": "blender per-request overhead",
        "pool": args.pool, "requests": len(timings["rerank"]), "budget_ms": BUDGET_MS,
        "within_budget": results["rerank"]["median_ms"] <= BUDGET_MS,
        "trees": blender.booster.num_trees(), "features": len(blender.feature_names),
        "feature_set": "bank-only (no LM, no specificity scorer)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "lightgbm": lgb.__version__,
                    "platform": platform.platform(),
                    "load_average_1m": os.getloadavg()[0]},
        "results": results,
    }
    atomic_write_json(args.out, report)
    print(f"Blender overhead, pool {args.pool}, {report['trees']} trees, {report['features']} features, "
          f"{report['requests']} requests (budget {BUDGET_MS} ms)\n")
    print("| step | median ms | p95 ms | p99 ms | mean ms |\n|---|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} | {row['mean_ms']:.2f} |")
    print(f"\nwritten to {args.out}")
    return 0 if report["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

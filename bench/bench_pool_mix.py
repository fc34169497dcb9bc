"""Which negatives should the blender's training pools hold? One dataset, several pool mixes, one evaluation.

    python -m bench.bench_pool_mix DATA_DIR [--variants all,no-retrieved,corpus-only,no-retrieved/no-turn]

``DATA_DIR`` is what `repliq train blender --retrieved-negatives 10 --random-negatives 10
--corpus-negatives 30 --out <home>/artifacts/NAME` saved as ``NAME-data`` (the richest pool). Each
variant drops rows of some origins from every pool (``ranker.dataset.restrict_origins``, which
recomputes the pool-relative columns for the smaller pools), trains a blender and scores it with
`repliq eval ranking`'s held-out sets next to the bi-encoder the data was built with (``REPLIQ_HOME``'s
``[encoder]``). A ``/no-turn`` suffix blanks the turn annotator's columns, so the trees cannot use them.

Development only: it reads ``../shared/data``. Writes ``bench/results/blender_pool_mix.json`` and its
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.report import markdown_table, write_results
from core.config import load_settings
from ranker.annotators import build_annotators
from ranker.blender_scorer import BlenderScorer
from ranker.dataset import RankingDataset, restrict_origins
from ranker.evaluation import BiEncoderScorer, evaluate_ranking, russian_dataset, topicalchat_dataset
from ranker.idf import IdfTable
from ranker.train import BlenderTrainConfig, train_blender
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from rl.blender_setup import annotator_resources, load_blender

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KEEP = {
    "all": {"gold", "retrieved", "random", "corpus"},
    "no-retrieved": {"gold", "random", "corpus"},
    "corpus-only": {"gold", "corpus"},
}
TURN_COLUMNS = ("last_turn_cosine", "last_turn_cosine_gap", "last_two_cosine", "last_two_cosine_gap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="the NAME-data folder `repliq train blender` saved")
    parser.add_argument("--variants", default="all,no-retrieved,corpus-only,no-retrieved/no-turn")
    parser.add_argument("--contexts", type=int, default=500, help="held-out contexts per language")
    parser.add_argument("--work", type=Path, default=Path("/tmp/repliq-pool-mix"), help="where variant blenders go")
    args = parser.parse_args()

    settings = load_settings()
    data = RankingDataset.load(args.data_dir / "dataset.npz")
    idf = IdfTable.load(args.data_dir.with_name(args.data_dir.name.removesuffix("-data")) / "idf.json")
    encoder = CachingEncoder(Encoder.from_config(settings))
    datasets = [topicalchat_dataset(SHARED / "topicalchat_valid", n_contexts=args.contexts),
                russian_dataset(SHARED / "ru" / "koziev_anekdot_dialogues.tar.xz", n_contexts=args.contexts)]
    encoder_name = Path(settings.encoder.name).name
    baseline = evaluate_ranking(datasets, [BiEncoderScorer(encoder, name=encoder_name)], say=lambda _: None)
    results: dict[str, dict] = {}
    for variant in args.variants.split(","):
        mix, _, ablation = variant.partition("/")
        resources, _ = annotator_resources(settings, encoder, idf)
        annotators = build_annotators(resources)
        part = restrict_origins(data, KEEP[mix], annotators)
        if ablation == "no-turn":
            X = part.X.copy()
            X[:, [part.feature_names.index(c) for c in TURN_COLUMNS if c in part.feature_names]] = np.nan
            part = replace(part, X=X)
        out = args.work / variant.replace("/", "-")
        started = time.perf_counter()
        metrics = train_blender(part, BlenderTrainConfig(), out, idf=idf, annotators=annotators)
        blender = load_blender(replace(settings, ranker=replace(settings.ranker, blender=str(out))), encoder)
        scorer = BlenderScorer(blender, encoder, context_turns=settings.retrieval.context_turns,
                               rerank_depth=settings.retrieval.pool_k, name=variant)
        report = evaluate_ranking(datasets, [scorer], say=lambda _: None)
        results[variant] = {"training": metrics, "seconds": time.perf_counter() - started, "eval": report}
        print(variant, {ds: round(m[variant]["r1_of_10"], 3) for ds, m in report["results"].items()}, flush=True)

    def row(name: str, report: dict, training: dict | None) -> list:
        cells: list = [name]
        for ds in datasets:
            m = report["results"][ds.name][name]
            cells += [m["r1_of_10"], m["r1_of_100"], m["mrr"]]
        return cells + ([int(training["best_iteration"]), training["dev_r@1"]] if training else ["—", "—"])

    headers = ["scorer", "en R@1/10", "en R@1/100", "en MRR", "ru R@1/10", "ru R@1/100", "ru MRR",
               "trees", "dev R@1 (own pools)"]
    rows = [row(encoder_name, baseline, None)] + [row(v, r["eval"], r["training"]) for v, r in results.items()]
    section = (f"### Blender pool mix (issue 4) — `bench/bench_pool_mix.py`\n\nOne dataset ({len(data.group_sizes)} "
               f"contexts, pools of gold + 10 retrieved + 10 random bank phrases + 30 same-corpus replies), "
               f"variants by origin; held-out sets as in `repliq eval ranking`, {args.contexts} contexts each.\n\n"
               + markdown_table(headers, rows))
    write_results("blender_pool_mix", {"data": str(args.data_dir), "baseline": baseline, "variants": results}, section)
    print(section)


if __name__ == "__main__":
    main()

"""Fine-tune the bi-encoder and compare it with BM25 and the off-the-shelf encoder on both dev sets.

    python -m bench.bench_ranking train [--per-language 2000] [--hard-negatives]
    python -m bench.bench_ranking eval [--encoders e5-small e5-small-ft] [--n 500] [--bank-size 2000]
                                       [--merge earlier_report.json] [--blender .repliq/artifacts/blender]

Development only: it reads the shared data folder (``../shared/data``). Results go to
``bench/results/ranking_eval.{json,md,png}`` and the training report to the work directory; the
Markdown table is printed for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import default_models_dir

if TYPE_CHECKING:
    from ranker.blender_scorer import BlenderScorer
    from retriever.encoder_cache import CachingEncoder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RUSSIAN = SHARED / "ru" / "koziev_anekdot_dialogues.tar.xz"
TOPICALCHAT = SHARED / "topicalchat_valid"
RESULTS = ROOT / "bench" / "results"


def encoder_dir(name: str, models_dir: Path) -> Path:
    """A packaged name through the registry, else a fine-tuned model in the cache, else a path."""
    from core.models.registry import ModelNotPrepared, resolve

    try:
        return resolve(name, models_dir)
    except ModelNotPrepared:
        if (models_dir / name).is_dir():
            return models_dir / name
        raise


def train(args: argparse.Namespace) -> None:
    from retriever.encoder import Encoder
    from retriever.pairs import bilingual_pairs, cached_pairs, mine_hard_negatives, pairs_hash
    from retriever.train import RetrieverTrainConfig, train_retriever

    config = RetrieverTrainConfig(base=args.base, name=args.name, max_seq_length=args.max_seq_length,
                                  batch_size=args.batch_size, learning_rate=args.lr, num_threads=args.threads)
    splits = bilingual_pairs({"train": args.per_language, "dev": args.dev_per_language}, args.russian,
                             seed=config.seed)
    pairs = splits["train"]
    if args.hard_negatives:
        base = Encoder(encoder_dir(args.base, args.models_dir), device="cpu")
        pairs = cached_pairs(args.work / "mined_pairs.json", pairs_hash(pairs),
                             lambda: mine_hard_negatives(splits["train"], base, seed=config.seed))
    result = train_retriever(config, pairs, args.models_dir, args.work, dev_pairs=splits["dev"], say=print)
    print(f"model: {result.model_dir}\nreport: {result.report_path}\nplot: {result.plot_path}")
    print("metrics:", result.manifest.extra["metrics"])


def merge_reports(old: dict, new: dict) -> dict:
    """Scorers of an earlier run on the very same datasets, so a new model is compared without rerunning the rest."""
    if old["datasets"] != new["datasets"]:
        raise SystemExit("the earlier report was built on other datasets (size, seed or bank); rerun every scorer")
    order = old["scorers"] + [name for name in new["scorers"] if name not in old["scorers"]]
    results = {name: {s: (scores.get(s) or old["results"][name][s]) for s in order}
               for name, scores in new["results"].items()}
    return {**new, "scorers": order, "results": results, "merged_from": old["created"]}


def blender_scorer(directory: Path, models_dir: Path, encoders: dict[str, CachingEncoder],
                   threads: int | None) -> BlenderScorer:
    """The blender scored with the very encoder (same weights hash) whose retrieval scores it learned from.

    ``encoders`` maps names to the caching encoders of the bi-encoder rows; the blender shares one when
    it names the same model, so that model's texts are encoded once.
    """
    from dataclasses import replace

    from core.config import Settings
    from dialog.jobs.eval_ranking import settings_for_blender
    from ranker.blender_scorer import BlenderScorer
    from retriever.encoder import Encoder
    from retriever.encoder_cache import CachingEncoder
    from rl.blender_setup import load_blender

    settings = settings_for_blender(replace(Settings(), models_dir=models_dir), directory)
    name = settings.encoder.name
    if name not in encoders:
        encoders[name] = CachingEncoder(Encoder(encoder_dir(name, models_dir), device="cpu", num_threads=threads))
    blender = load_blender(settings, encoders[name].encoder)
    return BlenderScorer(blender, encoders[name], context_turns=settings.retrieval.context_turns,
                         rerank_depth=settings.retrieval.pool_k)


def evaluate(args: argparse.Namespace) -> None:
    from dialog.jobs.eval_ranking import write_blender_importance
    from ranker.evaluation import (
        BiEncoderScorer,
        BM25Scorer,
        evaluate_ranking,
        ranking_table,
        russian_dataset,
        topicalchat_dataset,
        write_report,
    )
    from retriever.encoder import Encoder
    from retriever.encoder_cache import CachingEncoder

    options = {"n_contexts": args.n, "bank_size": args.bank_size or None, "seed": args.seed}
    datasets = [russian_dataset(args.russian, **options), topicalchat_dataset(args.topicalchat, **options)]
    scorers = [BM25Scorer()]
    threads = args.threads or None
    encoders = {name: CachingEncoder(Encoder(encoder_dir(name, args.models_dir), device="cpu", num_threads=threads))
                for name in args.encoders}
    scorers += [BiEncoderScorer(encoder, name) for name, encoder in encoders.items()]
    blender = blender_scorer(args.blender, args.models_dir, encoders, threads) if args.blender else None
    scorers += [blender] if blender is not None else []
    report = evaluate_ranking(datasets, scorers, say=print)
    if args.merge:
        report = merge_reports(json.loads(args.merge.read_text(encoding="utf-8")), report)
    paths = write_report(report, args.out)
    if blender is not None:
        paths["importance"] = write_blender_importance(blender.blender, args.out)
    print(ranking_table(report))
    print("written:", ", ".join(str(p) for p in paths.values()))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--russian", type=Path, default=RUSSIAN)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--base", default="e5-small")
    t.add_argument("--name", default="e5-small-ft")
    t.add_argument("--per-language", type=int, default=2000)
    t.add_argument("--dev-per-language", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-seq-length", type=int, default=80)
    t.add_argument("--lr", type=float, default=3e-5)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--hard-negatives", action="store_true")
    t.add_argument("--work", type=Path, default=ROOT / ".repliq" / "work" / "retriever-ft")
    e = sub.add_parser("eval")
    e.add_argument("--encoders", nargs="+", default=["e5-small", "e5-small-ft"])
    e.add_argument("--topicalchat", type=Path, default=TOPICALCHAT)
    e.add_argument("--n", type=int, default=500)
    e.add_argument("--bank-size", type=int, default=2000, help="0 = every dev response")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, default=RESULTS)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--merge", type=Path, help="an earlier report on the same datasets whose other scorers to keep")
    e.add_argument("--blender", type=Path, help="a trained blender directory to add as the scorer 'blender'")
    args = parser.parse_args()
    (train if args.command == "train" else evaluate)(args)


if __name__ == "__main__":
    main()

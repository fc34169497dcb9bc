"""`repliq rl tune` and `repliq eval ranking`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("rl", help="RL tuning of the blender toward sensible and specific replies")
    sub = parser.add_subparsers(dest="rl_command", metavar="ACTION", required=True)
    tune = sub.add_parser("tune", help="tune the blender as a policy (needs the blender, proxy and relevance models)")
    tune.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.2, 1.0, 3.0], help="KL coefficients to sweep")
    tune.add_argument("--beta", type=float, default=None,
                      help="the β whose policy is saved as blender-rl (default: the most specific one whose dev "
                           "R@1 stays within --max-r1-drop of the supervised blender)")
    tune.add_argument("--max-r1-drop", type=float, default=0.02,
                      help="relevance guard for choosing β: allowed fall in dev R@1 (default 0.02)")
    tune.add_argument("--alpha", type=float, default=0.02, help="entropy bonus")
    tune.add_argument("--iterations", type=int, default=4)
    tune.add_argument("--standardize", choices=("per_language", "pooled"), default="per_language",
                      help="specificity reward scale: one per language (default) or one pooled over all")
    tune.add_argument("--out", type=Path, help="run directory (default: <home>/artifacts/rl-run)")
    tune.set_defaults(func=run_tune)

    ev = commands.add_parser("eval", help="evaluate rankers")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    ranking = ev_sub.add_parser("ranking", help="R@1/10, R@1/100, MRR, bank recall@10: BM25, bi-encoders, blender")
    ranking.add_argument("--topicalchat", type=Path, help="folder with Topical-Chat valid_freq/valid_rare.json; "
                         "dev+test hash splits are used (train may adapt the retriever)")
    ranking.add_argument("--russian", type=Path, help="Russian dialogues (.tar.xz); dev hash split is used")
    ranking.add_argument("--corpus", type=Path, action="append", default=[], help="a JSONL dialogue file")
    ranking.add_argument("--encoder", action="append", default=[], help="encoder names/paths to compare")
    ranking.add_argument("--contexts", type=int, default=300, help="contexts per dataset")
    ranking.add_argument("--out", type=Path, help="report directory (default: <home>/artifacts/eval)")
    which = ranking.add_mutually_exclusive_group()
    which.add_argument("--blender", type=Path, help="blender directory to score (default: the workspace blender)")
    which.add_argument("--no-blender", action="store_true", help="leave the blender out")
    ranking.set_defaults(func=run_eval)


def run_tune(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.rl_tune import RLRunConfig, run_rl_tune
    from rl.rewards import RewardConfig

    config = RLRunConfig(betas=tuple(args.betas), main_beta=args.beta, alpha=args.alpha, iterations=args.iterations,
                         max_r_at_1_drop=args.max_r1_drop, reward=RewardConfig(standardize=args.standardize))
    report = run_rl_tune(settings, config, args.out, progress=lambda row: print(json.dumps(row)))
    print(json.dumps({"reference": report["reference"], "selection": report["selection"], "targets": report["targets"],
                      "tuned_blender": report["tuned_blender"]}, indent=2))
    return 0


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.eval_ranking import ranking_scorers, write_blender_importance
    from ranker.evaluation import (
        evaluate_ranking,
        jsonl_datasets,
        ranking_table,
        russian_dataset,
        topicalchat_dataset,
        write_report,
    )

    datasets = []
    if args.topicalchat:
        datasets.append(topicalchat_dataset(args.topicalchat, n_contexts=args.contexts))
    if args.russian:
        datasets.append(russian_dataset(args.russian, n_contexts=args.contexts))
    for path in args.corpus:
        datasets += jsonl_datasets(path, n_contexts=args.contexts)
    if not datasets:
        raise ValueError("no evaluation data: give --topicalchat, --russian or --corpus")
    scorers, blender = ranking_scorers(settings, args.encoder or [settings.encoder.name], args.blender,
                                       use_blender=not args.no_blender)
    report = evaluate_ranking(datasets, scorers, say=print)
    out = args.out or settings.artifacts_dir / "eval"
    write_report(report, out)
    if blender is not None:
        write_blender_importance(blender, out)
    print(ranking_table(report))
    return 0

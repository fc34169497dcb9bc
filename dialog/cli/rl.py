"""`repliq rl tune`, `repliq eval ranking` and `repliq eval teachers`."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from core.config import Settings
from core.job_configs import STANDARDIZE, EvalRankingConfig, RLRunConfig


def register(commands: argparse._SubParsersAction) -> None:
    register_tune(commands)
    register_eval(commands)


def register_tune(commands: argparse._SubParsersAction) -> None:
    run = RLRunConfig()
    parser = commands.add_parser("rl", help="RL tuning of the blender toward sensible and specific replies")
    sub = parser.add_subparsers(dest="rl_command", metavar="ACTION", required=True)
    tune = sub.add_parser("tune", help="tune the blender as a policy (needs the blender, proxy and relevance models)")
    tune.add_argument("--betas", type=float, nargs="+", default=list(run.betas), help="KL coefficients to sweep")
    tune.add_argument("--beta", type=float, default=run.main_beta,
                      help="the β whose policy is saved as blender-rl (default: the most specific one whose dev "
                           "R@1 stays within --max-r1-drop of the supervised blender)")
    tune.add_argument("--max-r1-drop", type=float, default=run.max_r_at_1_drop,
                      help=f"relevance guard for choosing β: allowed fall in dev R@1 (default {run.max_r_at_1_drop})")
    tune.add_argument("--alpha", type=float, default=run.policy.alpha, help="entropy bonus")
    tune.add_argument("--iterations", type=int, default=run.policy.iterations)
    tune.add_argument("--standardize", choices=STANDARDIZE, default=run.reward.standardize,
                      help="specificity reward scale: one per language (default) or one pooled over all")
    tune.add_argument("--out", type=Path, help="run directory (default: <home>/artifacts/rl-run)")
    register_tune_evaluation(tune, run)
    tune.set_defaults(func=run_tune)


def register_tune_evaluation(tune: argparse.ArgumentParser, run: RLRunConfig) -> None:
    """How the policies are judged (issue 14): dev set size, seeds, the sensibleness judge, best-of-N."""
    ev = run.evaluation
    tune.add_argument("--seeds", type=int, nargs="+", default=list(ev.seeds),
                      help="policy seeds per β (the first one's policy is saved); ≥ 3 report a spread, with --bagging")
    tune.add_argument("--bagging", type=float, default=run.policy.bagging_fraction,
                      help="row fraction each boosting round fits (< 1 makes seeds differ)")
    tune.add_argument("--dev-contexts", type=int, default=ev.dev_contexts,
                      help="dev contexts per language to judge on, built from the dev hash split of the corpora "
                           "below with the blender's pool recipe (0: the blender dataset's own dev split)")
    tune.add_argument("--dev-chitchat", type=int, default=ev.corpora.chitchat_conversations,
                      help="chit-chat conversations read for --dev-contexts (only their dev split is kept)")
    tune.add_argument("--dev-russian", type=Path, help="Russian dialogues (Koziev .tar.xz) for --dev-contexts")
    tune.add_argument("--dev-russian-conversations", type=int, default=ev.corpora.russian_conversations,
                      help="Russian conversations read for --dev-contexts")
    tune.add_argument("--dev-corpus", type=Path, action="append", default=[],
                      help="a JSONL dialogue file for --dev-contexts (repeatable)")
    tune.add_argument("--judge", type=Path, help="sensibleness judge directory (`repliq train judge`) scoring each "
                      "chosen reply; without it no β can meet the target")
    tune.add_argument("--no-best-of-n", action="store_true", help="skip the best-of-N baseline")
    tune.add_argument("--best-of-n-draws", type=int, default=ev.best_of_n_draws,
                      help="best-of-N samplings per β, seeded by the first policy seeds (each is judged)")


def register_eval(commands: argparse._SubParsersAction) -> None:
    defaults = EvalRankingConfig()
    ev = commands.add_parser("eval", help="evaluate rankers")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    ranking = ev_sub.add_parser("ranking", help="R@1/10, R@1/100, MRR, bank recall@10: BM25, bi-encoders, blender")
    ranking.add_argument("--topicalchat", type=Path, help="folder with Topical-Chat valid_freq/valid_rare.json; "
                         "dev+test hash splits are used (train may adapt the retriever)")
    ranking.add_argument("--russian", type=Path, help="Russian dialogues (.tar.xz); dev hash split is used")
    ranking.add_argument("--corpus", type=Path, action="append", default=[], help="a JSONL dialogue file")
    ranking.add_argument("--encoder", action="append", default=[], help="encoder names/paths to compare")
    ranking.add_argument("--contexts", type=int, default=defaults.contexts, help="contexts per dataset")
    ranking.add_argument("--out", type=Path, help="report directory (default: <home>/artifacts/eval)")
    which = ranking.add_mutually_exclusive_group()
    which.add_argument("--blender", type=Path, help="blender directory to score (default: the workspace blender)")
    which.add_argument("--no-blender", action="store_true", help="leave the blender out")
    ranking.set_defaults(func=run_eval)
    register_teachers(ev_sub)
    from dialog.cli.offpolicy import register_offpolicy

    register_offpolicy(ev_sub)


def register_teachers(ev_sub: argparse._SubParsersAction) -> None:
    teachers = ev_sub.add_parser("teachers", help="which specificity teacher adds most beyond reply length, on the "
                                                  "dev human signals (partial Spearman with bootstrap intervals)")
    teachers.add_argument("--data", type=Path, help="folder with convai2/, topicalchat_valid/ and ru/koziev_anekdot_"
                          "dialogues.tar.xz; dev hash splits are judged on, train fits the length model")
    teachers.add_argument("--hand-labels", type=Path,
                          help="hand-labelled JSONL (tests/data/specificity_hand_labels.jsonl)")
    teachers.add_argument("--no-chitchat", action="store_true", help="leave the chitchat-dataset ratings out")
    teachers.add_argument("--limit", type=int, help="replies per signal at most (default 1500)")
    teachers.add_argument("--resamples", type=int, help="bootstrap resamples (default 1000)")
    teachers.add_argument("--train-per-language", type=int,
                          help="train replies per language the length model is fitted on (default 400)")
    teachers.add_argument("--idf", type=Path, help="IDF table for NIDF rarity (default: the shipped blender's)")
    teachers.add_argument("--out", type=Path, help="report directory (default: <home>/artifacts/eval-teachers)")
    teachers.set_defaults(func=run_teachers)


def run_teachers(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.eval_teachers import TeacherEvalConfig, eval_teachers

    given = (("limit", args.limit), ("resamples", args.resamples), ("train_per_language", args.train_per_language))
    sizes = {key: value for key, value in given if value is not None}
    config = TeacherEvalConfig(data=args.data, hand_labels=args.hand_labels, chitchat=not args.no_chitchat,
                               idf=args.idf, out=args.out, **sizes)
    report = eval_teachers(settings, config)
    print(json.dumps({k: report["choice"][k] for k in ("chosen", "met", "informative")}, indent=2))
    return 0


def run_tune(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.rl_tune import run_rl_tune

    run = RLRunConfig()
    corpora = replace(run.evaluation.corpora, chitchat_conversations=args.dev_chitchat,
                      russian_dialogues=args.dev_russian, russian_conversations=args.dev_russian_conversations,
                      jsonl=list(args.dev_corpus))
    evaluation = replace(run.evaluation, seeds=tuple(args.seeds), dev_contexts=args.dev_contexts, corpora=corpora,
                         judge=args.judge, best_of_n=not args.no_best_of_n, best_of_n_draws=args.best_of_n_draws)
    config = replace(run, betas=tuple(args.betas), main_beta=args.beta, max_r_at_1_drop=args.max_r1_drop,
                     policy=replace(run.policy, alpha=args.alpha, iterations=args.iterations,
                                    bagging_fraction=args.bagging),
                     reward=replace(run.reward, standardize=args.standardize), evaluation=evaluation)
    report = run_rl_tune(settings, config, args.out, progress=lambda row: print(json.dumps(row)))
    print(json.dumps({"reference": report["reference"], "selection": report["selection"], "targets": report["targets"],
                      "binding": report["evaluation"]["binding"], "tuned_blender": report["tuned_blender"]}, indent=2))
    return 0


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.eval_ranking import eval_ranking
    from ranker.evaluation import ranking_table

    config = EvalRankingConfig(topicalchat=args.topicalchat, russian=args.russian, corpora=list(args.corpus),
                               encoders=list(args.encoder), contexts=args.contexts, blender=args.blender,
                               use_blender=not args.no_blender, out=args.out)
    report = eval_ranking(settings, config, say=print)
    print(ranking_table(report))
    return 0

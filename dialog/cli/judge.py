"""`repliq train judge`: argument parsing for the cross-encoder sensibleness judge (dialog/jobs/train_judge.py).

It joins the existing ``train`` group, so this module registers after dialog.cli.train.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from core.config import Settings
from core.judge_config import JudgeJobConfig

# Where `--data DIR` finds each corpus (the layout of the project's shared data folder).
DATA_LAYOUT = {"russian": "ru/koziev_anekdot_dialogues.tar.xz", "topicalchat": "topicalchat_valid",
               "convai2": "convai2"}


def _train_group(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    parser = commands.choices.get("train")
    actions = [a for a in getattr(parser, "_actions", []) if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        raise RuntimeError("`repliq train` must be registered before dialog.cli.judge")
    return actions[0]


def register(commands: argparse._SubParsersAction) -> None:
    job, train = JudgeJobConfig(), JudgeJobConfig().train
    parser = _train_group(commands).add_parser(
        "judge", help="cross-encoder sensibleness judge: gold vs same-corpus, retrieved and random replies (resumable)")
    parser.add_argument("--data", type=Path, help="folder holding ru/, topicalchat_valid/ and convai2/ (fills the "
                        "three flags below unless given)")
    parser.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz)")
    parser.add_argument("--topicalchat", type=Path, help="folder with Topical-Chat valid_freq/valid_rare.json")
    parser.add_argument("--convai2", type=Path, help="folder with ConvAI2 data_*.json (human replies are gold)")
    parser.add_argument("--chitchat", type=int, default=job.chitchat_conversations,
                        help=f"chitchat-dataset conversations to read (default {job.chitchat_conversations})")
    parser.add_argument("--train-contexts", type=int, default=job.train_contexts,
                        help=f"train-split contexts per language (default {job.train_contexts})")
    parser.add_argument("--dev-contexts", type=int, default=job.dev_contexts,
                        help=f"dev-split contexts per language for the AUCs (default {job.dev_contexts})")
    parser.add_argument("--base", default=train.base, help=f"base encoder in the model cache (default {train.base})")
    parser.add_argument("--frozen-layers", type=int, default=train.frozen_layers,
                        help=f"lowest transformer layers kept frozen (default {train.frozen_layers})")
    parser.add_argument("--max-length", type=int, default=train.max_length,
                        help=f"tokens of context + reply (default {train.max_length})")
    parser.add_argument("--epochs", type=int, default=train.epochs, help=f"default {train.epochs}")
    parser.add_argument("--retrieved-label", type=float, default=train.retrieved_label,
                        help=f"soft target of a retrieved bank phrase (default {train.retrieved_label})")
    parser.add_argument("--threads", type=int, default=train.threads, help=f"torch threads (default {train.threads})")
    parser.add_argument("--max-minutes", type=float, default=train.max_minutes,
                        help="training minutes for this invocation (0 = no limit); then checkpoint, judge what is "
                             "trained, and resume on the next run")
    parser.add_argument("--relevance", type=Path, help="relevance model to compare with (default: the workspace's, "
                        "else one fitted on the judge's train contexts)")
    parser.add_argument("--out", type=Path, help="judge directory (default: <home>/artifacts/judge)")
    parser.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an earlier run")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> JudgeJobConfig:
    paths = {name: getattr(args, name) for name in DATA_LAYOUT}
    if args.data is not None:
        for name, relative in DATA_LAYOUT.items():
            if paths[name] is None and (args.data / relative).exists():
                paths[name] = args.data / relative
    base = JudgeJobConfig()
    train = replace(base.train, base=args.base, frozen_layers=args.frozen_layers, max_length=args.max_length,
                    epochs=args.epochs, retrieved_label=args.retrieved_label, threads=args.threads,
                    max_minutes=args.max_minutes)
    config = replace(base, chitchat_conversations=args.chitchat, train_contexts=args.train_contexts,
                     dev_contexts=args.dev_contexts, relevance=args.relevance, out=args.out, train=train, **paths)
    config.validate()
    return config


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.train_judge import run_train_judge

    report = run_train_judge(settings, config_from_args(args), resume=not args.restart)
    print(json.dumps({k: report[k] for k in ("judge", "dev", "latency", "artifact_bytes")}, indent=2))
    return 0

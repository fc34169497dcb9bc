"""`repliq train blender|retriever|reward`: every trained artifact lands in the workspace with a manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train the blender, the retriever or a reward model")
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    blender = sub.add_parser("blender", help="train the LightGBM blender on dialogue corpora against the live bank")
    blender.add_argument("--chitchat", type=int, default=1500,
                         help="English chitchat-dataset conversations to read (0 = none; default 1500)")
    blender.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz or .txt)")
    blender.add_argument("--russian-conversations", type=int, default=3000)
    blender.add_argument("--corpus", type=Path, action="append", default=[],
                         help="extra corpus in the repliq JSONL dialogue format (repeatable)")
    blender.add_argument("--max-pairs", type=int, default=2500, help="contexts per language (default 2500)")
    blender.add_argument("--rounds", type=int, default=500, help="maximum boosting rounds (early stopping on dev)")
    blender.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/blender)")
    blender.set_defaults(func=run_blender)


def run_blender(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.blender_training import BlenderCorpora, train_workspace_blender
    from ranker.train import BlenderTrainConfig

    corpora = BlenderCorpora(chitchat_conversations=args.chitchat, russian_dialogues=args.russian,
                             russian_conversations=args.russian_conversations, jsonl=list(args.corpus),
                             max_pairs_per_language=args.max_pairs)
    metrics = train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=args.rounds), out_dir=args.out)
    print(json.dumps(metrics, indent=2))
    return 0

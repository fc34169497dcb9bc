"""`repliq index build`: full build or incremental update of the bank index."""

from __future__ import annotations

import argparse

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="build and update the FAISS index of approved phrases")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="bring the index up to date with the bank (incremental when possible)",
        description="Re-encodes only phrases added, edited or retired since the index was built; "
        "a missing index or another encoder means a full build.",
    )
    build.add_argument("--full", action="store_true", help="rebuild from scratch instead of updating")
    build.add_argument("--encoder", help="encoder name or local model directory (overrides the config)")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from core.bank.store import PhraseBank
    from retriever.bank_index import build_index, update_index
    from retriever.encoder import Encoder

    if args.encoder:
        settings = replace(settings, encoder=replace(settings.encoder, name=args.encoder))
    if not settings.bank_path.exists():
        raise FileNotFoundError(f"no phrase bank at {settings.bank_path}; run `repliq bank init --default` first")
    bank = PhraseBank(settings.bank_path)
    encoder = Encoder.from_config(settings)
    bar = tqdm(desc="encoding", unit="phrase")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        if args.full:
            manifest = build_index(bank, encoder, settings, progress=progress)
            bar.close()
            print(f"built index: {manifest.counts} phrases, encoder {encoder.identity}, "
                  f"bank revision {manifest.bank_revision}")
        else:
            report = update_index(bank, encoder, settings, progress=progress)
            bar.close()
            print(f"index up to date: {report}")
    finally:
        bank.close()
    return 0

"""`repliq` command line: one sub-command module per area, each with --help.

Global flags (before the sub-command) pick the workspace, config and model cache, so every command
sees the same settings the server would.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from core.config import ConfigError, Settings, load_settings
from dialog.cli import artifacts, bank, editor, index, judge, models, prompts, rl, serve, ssa, train


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repliq",
        description="Bilingual retrieval-based dialogue system: phrase bank, retriever, ranker, gRPC server.",
    )
    parser.add_argument("--home", type=Path, help="workspace directory (default: $REPLIQ_HOME or ./.repliq)")
    parser.add_argument("--config", type=Path, help="TOML config file (default: <home>/config.toml if present)")
    parser.add_argument(
        "--models-dir", type=Path, help="model cache (default: $REPLIQ_MODELS or ~/.cache/repliq/models)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (models, bank, index, serve, ssa, train, rl, editor, artifacts, prompts, judge):
        module.register(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if args.home is not None:
        environ["REPLIQ_HOME"] = str(args.home)
    settings = load_settings(args.config, environ)
    if args.models_dir is not None:
        settings = replace(settings, models_dir=args.models_dir)
    return settings


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already tells the user what to do: printed without a traceback."""
    from ranker.blender import BlenderMismatchError
    from retriever.bank_index import BankIndexError

    return (ConfigError, UserError, FileNotFoundError, ValueError, KeyError, BankIndexError, BlenderMismatchError)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from dialog.serving.logs import setup_logging

    setup_logging(args.log_level)
    try:
        settings = settings_from_args(args)
        return int(args.func(args, settings) or 0)
    except user_errors() as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"repliq: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        from core.atomic import is_storage_full

        if not is_storage_full(exc):
            raise
        home = args.home or os.environ.get("REPLIQ_HOME", ".repliq")
        print(f"repliq: error: the disk is full (or failing) while writing under {home}: {exc}. The previous state "
              "is intact (every write is all-or-nothing); free some space and run the command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

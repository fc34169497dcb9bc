"""`repliq models prepare|list`."""

from __future__ import annotations

import argparse

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="prepare and list the packaged models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prepare = sub.add_parser(
        "prepare", help="build packaged models into the model cache (does nothing when already built)"
    )
    prepare.add_argument("names", nargs="*", help="model names (default: every default model)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when the cache has the model")
    prepare.set_defaults(func=run_prepare)
    listing = sub.add_parser("list", help="show known models, their licences, languages and cache state")
    listing.set_defaults(func=run_list)


def run_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from core.models.cache import prepare

    results = prepare(args.names or None, settings.models_dir, force=args.force, progress=print)
    for result in results:
        print(f"{result.name:16} {result.status:7} {result.seconds:7.1f}s  {result.path}")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from core.models.cache import list_models

    print(f"model cache: {settings.models_dir}")
    print(f"{'name':16} {'kind':8} {'prepared':9} {'languages':28} licence")
    for info in list_models(settings.models_dir):
        languages = ",".join(info.languages)
        print(f"{info.name:16} {info.kind:8} {'yes' if info.prepared else 'no':9} {languages:28} {info.license}")
    return 0

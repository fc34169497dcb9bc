"""`repliq artifacts list [--json]`: every artifact in the workspace, its lineage, and whether it is stale."""

from __future__ import annotations

import argparse
import json

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("artifacts", help="list the workspace's trained and built artifacts")
    sub = parser.add_subparsers(dest="artifacts_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", help="kind, identity, creation time, lineage and staleness of each artifact",
        description="Reads only manifests: <home>/artifacts/*, the live index snapshots and encoders trained "
        "into the model cache. A stale artifact was built on something that has since changed; the "
        "command that rebuilds it is printed beside it.")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    listing.set_defaults(func=run_list)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from core.artifact_list import format_table, list_artifacts

    entries = list_artifacts(settings)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], ensure_ascii=False, indent=2))
    else:
        print(format_table(entries))
    return 0

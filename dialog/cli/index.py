"""`repliq index build`: full build or incremental update of the bank index."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from core.config import Settings
from core.job_configs import IndexBuildConfig
from dialog.cli.executor import add_executor_flags, executor_config

if TYPE_CHECKING:
    from retriever.bank_index import UpdateReport


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
    build.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_executor_flags(build)
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from dialog.jobs.index_build import index_build

    bar = tqdm(desc="encoding", unit="phrase")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        config = IndexBuildConfig(full=args.full, encoder=args.encoder, executor=executor_config(args))
        report = index_build(settings, config, progress=progress)
    finally:
        bar.close()
    print(json.dumps(report_json(report), ensure_ascii=False) if args.json else summary(report))
    return 0


def report_json(report: UpdateReport) -> dict[str, object]:
    manifest = report.manifest
    return {"full_rebuild": report.full_rebuild, "reason": report.reason, "added": report.added,
            "edited": report.edited, "removed": report.removed, "unchanged": report.unchanged,
            "seconds": round(report.seconds, 3), "phrases": manifest.total, "counts": dict(manifest.counts),
            "encoder": manifest.encoder_identity, "bank_revision": manifest.bank_revision,
            "snapshot": manifest.snapshot, "checksum": manifest.checksum}


def summary(report: UpdateReport) -> str:
    """Two or three short lines: what changed, what is served now, and why a full build happened."""
    manifest = report.manifest
    counts = ", ".join(f"{n} {language}" for language, n in sorted(manifest.counts.items()))
    served = f"{manifest.total} phrases ({counts or 'none'})"
    if report.full_rebuild:
        head = f"index: full build, {served} in {report.seconds:.1f} s"
    elif report.reason == "up to date":
        head = f"index up to date: {served}"
    else:
        head = (f"index updated: {report.added} added, {report.edited} edited, {report.removed} removed, "
                f"{report.unchanged} unchanged; now {served} in {report.seconds:.1f} s")
    lines = [head, f"  encoder {manifest.encoder_identity}, bank revision {manifest.bank_revision}, "
                   f"snapshot {manifest.snapshot}"]
    if report.full_rebuild and report.reason != "--full":
        lines.append(f"  why a full build: {report.reason.split('; run `')[0]}")
    return "\n".join(lines)

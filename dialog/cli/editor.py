"""`repliq editor ...`: the web app for editors, its user accounts, and `repliq bank lint`.

`repliq editor --host H --port P` serves the app over the workspace's bank; it refuses to start without
an enabled admin (create one with `repliq editor users add NAME --role admin`), except with
`--insecure-local` on a loopback address, where every visitor acts as a local admin.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys

from core.bank.schema import ROLES
from core.bank.store import PhraseBank
from core.config import Settings


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("editor", help="web app to browse, edit, review and lint the phrase bank")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--insecure-local", action="store_true",
                        help="no login: every visitor is a local admin (only allowed on a loopback address)")
    parser.add_argument("--secure-cookies", action="store_true",
                        help="mark cookies Secure (default only off loopback; use behind an HTTPS proxy)")
    parser.set_defaults(func=run_editor)
    sub = parser.add_subparsers(dest="editor_command", metavar="ACTION")
    users = sub.add_parser("users", help="manage editor accounts")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user (password asked, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(func=run_users_add)
    listing = actions.add_parser("list", help="list users")
    listing.set_defaults(func=run_users_list)
    disable = actions.add_parser("disable", help="disable a user and end their sessions")
    disable.add_argument("name")
    disable.set_defaults(func=run_users_disable)


def register_bank_lint(bank_actions: argparse._SubParsersAction) -> None:
    """`repliq bank lint`, registered under `repliq bank` by dialog/cli/bank.py."""
    lint = bank_actions.add_parser("lint", help="check every phrase; JSON + HTML report (<home>/lint/)")
    lint.add_argument("--probe", help="dev dialogues (JSONL, core.corpora format) for dead and hub phrases")
    lint.add_argument("--logs", metavar="DIR", help="decision logs whose served contexts join the probe set "
                      "(default <home>/decisions when it holds decisions with their text; log_user_text)")
    lint.add_argument("--json", help="JSON report path (default <home>/lint/report.json)")
    lint.add_argument("--html", help="HTML report path (default <home>/lint/report.html)")
    lint.add_argument("--text-only", action="store_true", help="only the text rules (no models, seconds)")
    lint.set_defaults(func=run_bank_lint)


def register_bank_gaps(bank_actions: argparse._SubParsersAction) -> None:
    """`repliq bank gaps`, registered under `repliq bank` by dialog/cli/bank.py."""
    gaps = bank_actions.add_parser("gaps", help="LM-drafted replies for contexts the bank answers poorly (as drafts)")
    source = gaps.add_mutually_exclusive_group(required=True)
    source.add_argument("--probe", help="dev dialogues (JSONL, core.corpora format); never test dialogues")
    source.add_argument("--from-logs", nargs="?", const="", metavar="DIR",
                        help="served contexts from the decision log (default <home>/decisions; needs log_user_text)")
    gaps.add_argument("--limit", type=int, default=20, help="worst-answered contexts to draft for (default 20)")
    gaps.add_argument("--replies", type=int, default=3, help="drafts asked of the LM per context (default 3)")
    gaps.add_argument("--max-score", type=float, default=None,
                      help="only contexts whose best bank cosine is below this (default: just the worst --limit)")
    gaps.add_argument("--budget", type=float, default=300.0, help="LM seconds per context (default 300)")
    gaps.add_argument("--who", default="", help="name in the drafts' history (default: gaps:<your login>)")
    gaps.set_defaults(func=run_bank_gaps)


def _open(settings: Settings) -> PhraseBank:
    from dialog.jobs.common import open_bank

    return open_bank(settings)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_editor(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from dialog.editor.app import create_app
    from dialog.editor.users import Users

    if args.insecure_local and not _loopback(args.host):
        raise ValueError(f"--insecure-local serves without login, so it only binds loopback; {args.host} is not "
                         "(use --host 127.0.0.1)")
    bank = _open(settings)
    if not args.insecure_local and not Users(bank).has_admin():
        raise ValueError("no enabled admin user: run `repliq editor users add NAME --role admin` first "
                         "(or --insecure-local on 127.0.0.1 for a single local editor)")
    app = create_app(bank, settings, secure_cookies=args.secure_cookies or not _loopback(args.host),
                     insecure_local=args.insecure_local)
    print(f"repliq editor on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def run_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.editor.users import Users

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ; run the command again")
    with _open(settings) as bank:
        user = Users(bank).add(args.name, password, args.role, who=f"cli:{getpass.getuser()}")
    print(f"added {user.role} {user.name}")
    return 0


def run_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.editor.users import Users

    with _open(settings) as bank:
        for user in Users(bank).list():
            print(f"{user.name}\t{user.role}\t{'disabled' if user.disabled else 'active'}")
    return 0


def run_users_disable(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.editor.users import Users

    with _open(settings) as bank:
        Users(bank).disable(args.name, who=f"cli:{getpass.getuser()}")
    print(f"disabled {args.name}; their sessions ended")
    return 0


def run_bank_lint(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from dialog.editor.lint import BLOCKLIST_FILE, REPORT_FILE, LintOptions, read_blocklist, write_report
    from dialog.editor.lint_bank import lint_bank, load_probe, logged_probe
    from dialog.editor.lint_html import render_report

    options = LintOptions(blocklist=read_blocklist(settings.home / BLOCKLIST_FILE))
    probe = load_probe(Path(args.probe), settings.retrieval.context_turns) if args.probe else []
    log_dir = Path(args.logs) if args.logs else Path(settings.logging.dir or settings.home / "decisions")
    logged = logged_probe(log_dir, settings.retrieval.context_turns)
    if args.logs and not logged:
        print(f"  {log_dir}: no served contexts with their text (serve with [logging] log_user_text = true)")
    probe = (probe + logged) or None
    if logged:
        print(f"probe set: {len(probe) - len(logged)} dev contexts + {len(logged)} served contexts from {log_dir}")
    with _open(settings) as bank:
        report = lint_bank(bank, None if args.text_only else settings, probe, options)
    json_path = Path(args.json) if args.json else settings.home / REPORT_FILE
    html_path = Path(args.html) if args.html else json_path.with_suffix(".html")
    write_report(report, json_path, html_path, render_report)
    counts = ", ".join(f"{rule} {n}" for rule, n in report.counts().items()) or "no warnings"
    print(f"{report.stats.get('phrases', 0)} phrases: {counts}")
    for rule, why in report.skipped.items():
        print(f"  not checked: {rule}: {why}")
    print(f"report: {json_path} and {html_path}")
    return 0


def run_bank_gaps(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from dialog.editor.gaps import REPORT_FILE, GapOptions, logged_contexts, probe_contexts, run_gaps, write_report

    if args.probe:
        contexts = probe_contexts(Path(args.probe), settings.retrieval.context_turns)
    else:
        contexts = logged_contexts(Path(args.from_logs) if args.from_logs else
                                   Path(settings.logging.dir or settings.home / "decisions"))
    options = GapOptions(limit=args.limit, replies=args.replies, max_score=args.max_score, budget_s=args.budget)
    with _open(settings) as bank:
        report = run_gaps(bank, settings, contexts, options, who=args.who or f"gaps:{getpass.getuser()}",
                          progress=lambda message: print(message, file=sys.stderr, flush=True))
    write_report(report, settings.home / REPORT_FILE)
    print(f"{report['contexts']} contexts, {len(report['gaps'])} gaps, {report['drafts']} drafts queued "
          f"(source generated, status draft); report: {settings.home / REPORT_FILE}")
    for gap in report["gaps"][:10]:
        last = gap["context"][-1][1][:70] if gap["context"] else ""
        print(f"  {gap['best_score']:+.3f} [{gap['language']}] {last!r}: {len(gap['drafts'])} drafts")
    return 0

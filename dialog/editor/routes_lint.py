"""The bank-wide lint report page; an editor can re-run lint from it.

`repliq bank lint` writes ``<home>/lint/report.json``, which this page and the phrase pages read at start;
a re-run from the page replaces it in memory (the file is the command's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from dialog.editor import auth
from dialog.editor.lint import LintReport
from dialog.editor.lint_bank import lint_bank
from dialog.editor.pages import render

router = APIRouter()
SHOWN = 500


@router.get("/lint")
def lint_page(request: Request, rule: str = "") -> Response:
    auth.require(request, "viewer")
    report: LintReport | None = request.app.state.lint_report
    warnings = [w for w in report.warnings if not rule or w.rule == rule] if report else []
    return render(request, "lint.html", {"report": report, "warnings": warnings[:SHOWN], "rule": rule,
                                         "shown": SHOWN, "matching": len(warnings)})


@router.post("/lint")
async def run_lint(request: Request) -> Response:
    """Re-run lint: every rule the workspace allows (the text rules alone without one). Dead and hub
    phrases need a probe set, so they come only from `repliq bank lint --probe`; their last findings stay."""
    await auth.require_form(request, "editor")
    state = request.app.state
    meaning = state.meaning
    encoder = meaning.encoder if meaning is not None else None
    report = await run_in_threadpool(lint_bank, state.bank, state.settings, None, state.lint_options, encoder)
    previous: LintReport | None = state.lint_report
    if previous is not None and "probe" in previous.stats:
        kept = [w for w in previous.warnings if w.rule in ("dead", "hub")]
        report.warnings.extend(kept)
        report.texts.update({w.phrase_id: previous.texts.get(w.phrase_id, "") for w in kept})
        report.stats["probe"] = previous.stats["probe"]
        for rule in ("dead", "hub"):
            report.skipped.pop(rule, None)
    state.lint_report = report
    return RedirectResponse("/lint", status_code=303)

"""Browse, search, add and edit phrases. A bad form is shown again with the user's input and the field
named; a save over someone else's newer change is refused, never silently lost."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from core.bank.schema import BankError, EditConflict, PhraseNotFound
from dialog.editor import auth, workflow
from dialog.editor.lint import phrase_warnings
from dialog.editor.pages import MODEL_ERRORS, int_field, render, split_tags

router = APIRouter()
PAGE_SIZE = 50
FILTERS = ("q", "language", "status", "source", "tag", "meaning")


@router.get("/phrases")
def browse(request: Request, page: str = "1") -> Response:
    auth.require(request, "viewer")
    bank = request.app.state.bank
    filters = {name: request.query_params.get(name, "").strip()[:200] for name in FILTERS}
    page_number = max(1, int(page)) if page.isdigit() else 1
    ids, scores, notice = None, {}, ""
    if filters["meaning"]:
        meaning = request.app.state.meaning
        if meaning is None:
            notice = "Search by meaning needs the workspace's encoder and index; start the editor with a workspace."
        else:
            try:
                hits = meaning.search(filters["meaning"], filters["language"])
                ids, scores = [pid for pid, _ in hits], dict(hits)
            except MODEL_ERRORS as exc:
                notice = f"Search by meaning is unavailable: {exc}"
    phrases, total = bank.search(text=filters["q"], language=filters["language"], status=filters["status"],
                                 source=filters["source"], tag=filters["tag"], ids=ids,
                                 offset=(page_number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
    return render(request, "phrases.html", {
        "phrases": phrases, "total": total, "page": page_number, "pages": pages, "filters": filters, "scores": scores,
        "query": query, "notice": notice, "bank_total": bank.search(limit=0)[1], "revision": bank.revision})


def _form_values(form: dict[str, str]) -> dict[str, object]:
    return {"text": form.get("text", ""), "language": form.get("language", ""),
            "tags": split_tags(form.get("tags", "")), "source": form.get("source", "") or "editor"}


@router.get("/phrases/new")
def new_page(request: Request) -> Response:
    auth.require(request, "editor")
    return render(request, "new.html", {"form": {"text": "", "language": "", "tags": "", "source": "editor"},
                                        "error": ""})


@router.post("/phrases/new")
async def create(request: Request) -> Response:
    session, form = await auth.require_form(request, "editor")
    values = _form_values(form)
    try:
        phrase = request.app.state.bank.add(str(values["text"]), str(values["language"]), tags=values["tags"],
                                            status="draft", source=str(values["source"]), who=session.user.name,
                                            why=form.get("why", "")[:500])
    except BankError as exc:
        return render(request, "new.html", {"form": form, "error": str(exc)}, 422)
    return RedirectResponse(f"/phrases/{phrase.id}?saved=1", status_code=303)


def phrase_page_with_error(request: Request, phrase_id: int, form: dict[str, str] | None = None, error: str = "",
                 status_code: int = 200) -> Response:
    session = auth.require(request, "viewer")
    bank = request.app.state.bank
    try:
        phrase = bank.get(phrase_id)
    except PhraseNotFound as exc:
        return render(request, "error.html", {"title": "No such phrase", "message": str(exc)}, 404)
    shown = form or {"text": phrase.text, "language": phrase.language, "tags": ", ".join(phrase.tags),
                     "source": phrase.source, "version": str(phrase.version)}
    return render(request, "phrase.html", {
        "phrase": phrase, "form": shown, "error": error, "history": list(reversed(bank.history(phrase_id))),
        "actions": workflow.available(phrase, session.user), "can_edit": session.user.can("editor"),
        "warnings": phrase_warnings(request.app.state, phrase), "saved": request.query_params.get("saved")},
        status_code)


@router.get("/phrases/{phrase_id}")
def phrase_page(request: Request, phrase_id: int) -> Response:
    return phrase_page_with_error(request, phrase_id)


@router.post("/phrases/{phrase_id}")
async def save(request: Request, phrase_id: int) -> Response:
    session, form = await auth.require_form(request, "editor")
    bank = request.app.state.bank
    try:
        version = int_field(form, "version")
        phrase = bank.get(phrase_id)
        changes = _form_values(form)
        status = workflow.edit_status(phrase, changes, session.user)
        if status:
            changes["status"] = status
        bank.update(phrase_id, who=session.user.name, why=form.get("why", "")[:500], expected_version=version,
                    **changes)
    except (BankError, ValueError) as exc:
        return phrase_page_with_error(request, phrase_id, form, str(exc), 409 if isinstance(exc, EditConflict) else 422)
    return RedirectResponse(f"/phrases/{phrase_id}?saved=1", status_code=303)

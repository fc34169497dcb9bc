"""The review queue and the review actions (submit, approve, reject with a comment, retire, reopen)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from core.bank.schema import BankError, EditConflict
from dialog.editor import auth, workflow
from dialog.editor.pages import int_field, render
from dialog.editor.routes_phrases import phrase_page_with_error

router = APIRouter()
QUEUE_SIZE = 100


@router.get("/review")
def queue(request: Request) -> Response:
    auth.require(request, "viewer")
    bank = request.app.state.bank
    waiting, total = bank.search(status="in_review", limit=QUEUE_SIZE)
    rejected, rejected_total = bank.search(status="rejected", limit=QUEUE_SIZE)
    last = {p.id: bank.history(p.id)[-1] for p in waiting + rejected}
    return render(request, "review.html", {"waiting": waiting, "total": total, "rejected": rejected,
                                           "rejected_total": rejected_total, "last": last})


@router.post("/phrases/{phrase_id}/review")
async def review(request: Request, phrase_id: int) -> Response:
    session, form = await auth.require_form(request, "editor")
    bank = request.app.state.bank
    try:
        workflow.transition(bank, phrase_id, form.get("action", ""), session.user, form.get("comment", ""),
                            int_field(form, "version"))
    except (BankError, ValueError) as exc:
        return phrase_page_with_error(request, phrase_id, None, str(exc), 409 if isinstance(exc, EditConflict) else 422)
    back = form.get("back", "")
    return RedirectResponse(back if back in ("/review",) else f"/phrases/{phrase_id}", status_code=303)

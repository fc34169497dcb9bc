"""The "Try it" page: a dialogue in, the live answers and the answers with drafts side by side."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dialog.editor import auth
from dialog.editor.pages import MODEL_ERRORS, render

router = APIRouter()
MAX_DIALOGUE_CHARS = 4000


@router.get("/try")
def try_page(request: Request) -> Response:
    auth.require(request, "viewer")
    return render(request, "try.html", {"dialogue": "", "language": "", "result": None, "error": "",
                                        "available": request.app.state.tryit is not None})


@router.post("/try")
async def try_run(request: Request) -> Response:
    _, form = await auth.require_form(request, "viewer")
    dialogue, language = form.get("dialogue", ""), form.get("language", "")
    context = {"dialogue": dialogue, "language": language, "result": None, "error": "",
               "available": request.app.state.tryit is not None}
    if context["available"]:
        turns = [line.strip() for line in dialogue.splitlines() if line.strip()]
        try:
            if len(dialogue) > MAX_DIALOGUE_CHARS:
                raise ValueError(f"dialogue: {len(dialogue)} characters, the limit is {MAX_DIALOGUE_CHARS}")
            if language not in ("", "ru", "en", "uk"):
                raise ValueError(f"language: {language[:10]!r} is not one of ru, en, uk (or empty to detect)")
            live, draft = request.app.state.tryit.compare(turns, language)
            context["result"] = {"live": live, "draft": draft}
        except MODEL_ERRORS as exc:
            context["error"] = str(exc)
            return render(request, "try.html", context, 422)
    return render(request, "try.html", context)

"""User management for admins: list accounts, add one, disable one (sessions end at once)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from core.bank.schema import BankError
from dialog.editor import auth
from dialog.editor.pages import render

router = APIRouter()


@router.get("/users")
def users_page(request: Request) -> Response:
    auth.require(request, "admin")
    store = auth.users(request)
    return render(request, "users.html", {"users": store.list(), "audit": store.audit(), "error": "", "form": {}})


@router.post("/users")
async def users_action(request: Request) -> Response:
    session, form = await auth.require_form(request, "admin")
    store = auth.users(request)
    try:
        if form.get("action") == "disable":
            if form.get("name") == session.user.name:
                raise BankError("you cannot disable your own account; ask another admin")
            store.disable(form.get("name", ""), who=session.user.name)
        else:
            store.add(form.get("name", ""), form.get("password", ""), form.get("role", ""), who=session.user.name)
    except BankError as exc:
        return render(request, "users.html", {"users": store.list(), "audit": store.audit(), "error": str(exc),
                                              "form": {"name": form.get("name", ""), "role": form.get("role", "")}},
                      422)
    return RedirectResponse("/users", status_code=303)

"""The editor web app: FastAPI with server-rendered Jinja2 pages over one phrase bank.

Pages are plain HTML forms (no JavaScript needed); every form posts a CSRF token; all text is escaped by
Jinja2's autoescaping and every SQL value is a bound parameter. Requests over ``MAX_BODY_BYTES`` are
refused before they are read.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from core.bank.store import PhraseBank
from dialog.editor import (
    auth,
    routes_admin,
    routes_lint,
    routes_phrases,
    routes_publish,
    routes_review,
    routes_try,
)
from dialog.editor.lint import BLOCKLIST_FILE, REPORT_FILE, LintOptions, read_blocklist, read_report
from dialog.editor.pages import TEMPLATES, render
from dialog.editor.users import Session, User, Users

if TYPE_CHECKING:
    from core.config import Settings

MAX_BODY_BYTES = 64 * 1024


def create_app(bank: PhraseBank, settings: Settings | None = None, *, secure_cookies: bool = True,
               insecure_local: bool = False) -> FastAPI:
    """The app over ``bank``. ``settings`` (workspace, models) enable search by meaning, lint's model-based
    rules and "Try it"; without them those pages say what is missing. ``secure_cookies=False`` only for
    plain-HTTP tests: browsers then send the session cookie over unencrypted connections.
    ``insecure_local`` (loopback only, checked by the command) makes every visitor the admin "local"."""
    app = FastAPI(title="repliq editor", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bank = bank
    app.state.settings = settings
    app.state.users = Users(bank)
    app.state.secure_cookies = secure_cookies
    local = Session(User("local", "admin", False), secrets.token_urlsafe(24))
    app.state.local_session = local if insecure_local else None
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES))
    app.state.meaning = app.state.tryit = app.state.lint_report = None
    app.state.lint_options = LintOptions()
    if settings is not None:
        from dialog.editor.semantic import MeaningSearch
        from dialog.editor.tryit import TryIt

        app.state.meaning = MeaningSearch(settings, bank)
        app.state.tryit = TryIt(settings, bank, app.state.meaning)
        app.state.lint_options = LintOptions(blocklist=read_blocklist(settings.home / BLOCKLIST_FILE))
        app.state.lint_report = read_report(settings.home / REPORT_FILE)

    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length", "")
        if request.method == "POST" and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return HTMLResponse(f"Request body missing a length or over {MAX_BODY_BYTES} bytes; shorten the input.",
                                status_code=413)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.exception_handler(auth.LoginRequired)
    async def to_login(request: Request, exc: auth.LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_url)}", status_code=303)

    @app.exception_handler(auth.Forbidden)
    async def forbidden(request: Request, exc: auth.Forbidden) -> Response:
        return render(request, "error.html", {"title": "Not allowed", "message": str(exc)}, 403)

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/phrases", status_code=303)

    for module in (auth, routes_phrases, routes_review, routes_lint, routes_try, routes_admin, routes_publish):
        app.include_router(module.router)
    return app

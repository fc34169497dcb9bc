"""Who is asking and may they: session cookies, role checks and CSRF tokens for every form.

Each session carries its own CSRF token (stored server-side), rendered into every form and compared in
constant time on every POST. The login form has no session yet, so it uses a double-submit cookie.
A missing session redirects to the login page; a too-low role is a 403 that names the needed role.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dialog.editor.users import Session, Users

SESSION_COOKIE = "repliq_session"
LOGIN_CSRF_COOKIE = "repliq_login_csrf"
router = APIRouter()


class LoginRequired(Exception):
    """No valid session: the app answers with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class Forbidden(Exception):
    """A valid session without the right: the message says which role or token is needed."""


def users(request: Request) -> Users:
    return request.app.state.users


def current(request: Request) -> Session | None:
    cached = getattr(request.state, "session", False)
    if cached is not False:
        return cached
    session = users(request).session(request.cookies.get(SESSION_COOKIE, "")) or request.app.state.local_session
    request.state.session = session
    return session


def require(request: Request, role: str = "viewer") -> Session:
    session = current(request)
    if session is None:
        raise LoginRequired(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
    if not session.user.can(role):
        raise Forbidden(f"{session.user.name} is a {session.user.role}; this needs the {role} role or higher. "
                        "Ask an admin to change your role.")
    return session


async def require_form(request: Request, role: str) -> tuple[Session, dict[str, str]]:
    """The session (with ``role``) and the submitted form, refused unless its CSRF token matches."""
    session = require(request, role)
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    if not hmac.compare_digest(form.get("csrf_token", ""), session.csrf):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and submit again")
    return session, form


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.app.state.secure_cookies, path="/")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/phrases", error: str = "") -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = request.app.state.templates.TemplateResponse(
        request, "login.html", {"session": None, "csrf": token, "next": _safe_next(next), "error": error},
        status_code=401 if error else 200)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, 3600)
    return response


def _safe_next(next_url: str) -> str:
    """Only same-site paths: a crafted ``next`` must not send a user elsewhere after logging in."""
    return next_url if next_url.startswith("/") and not next_url.startswith("//") else "/phrases"


@router.post("/login")
async def login(request: Request) -> Response:
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(form.get("csrf_token", ""), cookie):
        raise Forbidden("the login form's CSRF token is missing or stale; reload the login page")
    token = users(request).login(form.get("name", ""), form.get("password", ""))
    next_url = _safe_next(form.get("next", "/phrases"))
    if token is None:
        return RedirectResponse(f"/login?error=wrong+name+or+password&next={quote(next_url)}", status_code=303)
    response = RedirectResponse(next_url, status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, token, 12 * 3600)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await require_form(request, "viewer")
    users(request).logout(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

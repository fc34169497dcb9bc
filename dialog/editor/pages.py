"""Rendering shared by every page: the template environment's common context and form helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from core.bank.schema import ROLES, STATUSES
from dialog.editor import auth
from retriever.bank_index import BankIndexError

TEMPLATES = Path(__file__).parent / "templates"
# What a missing or mismatched model, index or artifact raises (each message says what to run): shown on
# the page instead of failing the request.
MODEL_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, RuntimeError, BankIndexError)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A page with the session (for the menu and the forms' CSRF token) and the bank's vocabularies."""
    session = auth.current(request)
    base = {"session": session, "csrf": session.csrf if session else "", "statuses": STATUSES, "roles": ROLES,
            "path": request.url.path}
    return request.app.state.templates.TemplateResponse(request, template, {**base, **context},
                                                        status_code=status_code)


def split_tags(value: str) -> list[str]:
    """Tags typed as one comma-separated field."""
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def int_field(form: dict[str, str], name: str) -> int:
    value = form.get(name, "")
    if not value.strip().lstrip("-").isdigit():
        raise ValueError(f"{name}: expected a whole number, got {value[:20]!r}; reload the page")
    return int(value)

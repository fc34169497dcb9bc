"""Shared set-up for the editor tests: a bank with one user per role and a logged-in TestClient."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from core.bank.store import PhraseBank
from dialog.editor.app import create_app
from dialog.editor.users import Users

if TYPE_CHECKING:
    from core.config import Settings

PASSWORD = "correct-horse-1"
ROLES = ("viewer", "editor", "reviewer", "admin")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_bank(tmp_path: Path) -> PhraseBank:
    bank = PhraseBank(tmp_path / "bank.db")
    users = Users(bank)
    for role in ROLES:
        users.add(role, PASSWORD, role)
    return bank


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def client(bank: PhraseBank, **kwargs: object) -> TestClient:
    return TestClient(create_app(bank, secure_cookies=False, **kwargs))


def login(test_client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token (read from a page)."""
    token = csrf_of(test_client.get("/login").text)
    response = test_client.post("/login", data={"name": name, "password": password, "csrf_token": token,
                                                "next": "/phrases"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/phrases", response.text
    return csrf_of(test_client.get("/phrases").text)


def as_user(bank: PhraseBank, name: str) -> tuple[TestClient, str]:
    test_client = client(bank)
    return test_client, login(test_client, name)


def tiny_settings(tmp_path: Path, encoder_dir: Path) -> Settings:
    """A workspace under ``tmp_path`` whose encoder is a tiny random model (no blender, no proxy)."""
    from dataclasses import replace

    from workspace import make_settings

    settings = make_settings(tmp_path / "home", tmp_path / "models")
    return replace(settings, encoder=replace(settings.encoder, name=str(encoder_dir)))

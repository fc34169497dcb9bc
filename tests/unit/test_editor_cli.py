"""`repliq editor users ...`, the start-up refusals of `repliq editor`, and `repliq bank lint`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from core.bank.store import PhraseBank
from dialog.cli.main import main
from dialog.editor.users import Users


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("REPLIQ_HOME", str(home))
    with PhraseBank(_bank_path(home)) as bank:
        bank.add("Привет! *машет рукой*", "ru")
        bank.add("Nice to meet you.", "en")
    return home


def _bank_path(home: Path) -> Path:
    from core.config import load_settings

    return load_settings(environ={"REPLIQ_HOME": str(home)}).bank_path


def test_users_add_list_disable(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    assert main(["editor", "users", "add", "ann", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["editor", "users", "add", "bob", "--role", "editor", "--password-stdin"]) == 2
    assert "shorter than 8" in capsys.readouterr().err
    assert main(["editor", "users", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["ann\tadmin\tactive"]
    assert main(["editor", "users", "disable", "ann"]) == 0
    assert main(["editor", "users", "disable", "nobody"]) == 2
    with PhraseBank(_bank_path(home)) as bank:
        assert not Users(bank).has_admin() and Users(bank).list()[0].disabled
        assert [(who.startswith("cli:"), action, target) for who, _, action, target, _ in Users(bank).audit()] == [
            (True, "disable user", "ann"), (True, "add user", "ann")]


def test_editor_refuses_to_start_without_an_admin_or_insecurely_off_loopback(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["editor", "--port", "0"]) == 2
    assert "repliq editor users add NAME --role admin" in capsys.readouterr().err
    assert main(["editor", "--insecure-local", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "only binds loopback" in capsys.readouterr().err


def test_bank_lint_text_only_writes_json_and_html(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    (home / "blocklist.txt").write_text("nice\n", encoding="utf-8")
    assert main(["bank", "lint", "--text-only", "--json", str(tmp_path / "lint.json")]) == 0
    out = capsys.readouterr().out
    assert "narration 1" in out and "blocklisted 1" in out and "not checked: near-duplicate" in out
    report = json.loads((tmp_path / "lint.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"blocklisted": 1, "narration": 1}
    assert {w["text"] for w in report["warnings"]} == {"Привет! *машет рукой*", "Nice to meet you."}
    assert "машет рукой" in (tmp_path / "lint.html").read_text(encoding="utf-8")

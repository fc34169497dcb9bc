"""Commands end with a short human summary (and ``--json`` for machines), never a Python repr.

Outside-run defect: ``repliq index build`` ended with a dataclass repr several hundred characters long.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialog.cli.main import main

from tiny_models import build_tiny_encoder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_index_build_prints_a_summary_or_json(tmp_path: Path, tiny_encoder: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    phrases = tmp_path / "p.csv"
    phrases.write_text("text,language\nHello there.,en\nHow are you?,en\nПривет!,ru\n", encoding="utf-8")
    _run(capsys, "--home", home, "bank", "import", str(phrases))
    out = _run(capsys, "--home", home, "index", "build", "--encoder", str(tiny_encoder))
    lines = out.strip().splitlines()
    assert "Report(" not in out and "Manifest(" not in out
    assert 1 <= len(lines) <= 3 and all(len(line) <= 160 for line in lines), out
    assert "3 phrases (2 en, 1 ru)" in lines[0] and "full build" in lines[0]
    assert "tiny-random-encoder@" in out and "bank revision 3" in out
    again = json.loads(_run(capsys, "--home", home, "index", "build", "--encoder", str(tiny_encoder), "--json"))
    assert again["full_rebuild"] is False and again["reason"] == "up to date"
    assert (again["phrases"], again["counts"], again["added"], again["bank_revision"]) == (3, {"en": 2, "ru": 1}, 0, 3)
    assert "up to date" in _run(capsys, "--home", home, "index", "build", "--encoder", str(tiny_encoder))

"""The editor on the real default encoder (e5-small) and the starter bank: search by meaning finds
the topic, "Try it" shows a phrase in review only on the draft side, and bank lint runs its model rules.

Works on a copy of the session's ``real_home``: the editor brings the index up to date when the bank
changes, and the shared workspace must stay as the other real tests expect it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.bank.store import PhraseBank
from dialog.editor.app import create_app
from dialog.editor.lint import LintOptions
from dialog.editor.lint_bank import lint_bank
from dialog.editor.users import Users

from editor_helpers import PASSWORD, login
from workspace import make_settings

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def editor_home(real_home: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("editor-real") / "home"
    shutil.copytree(real_home, home)
    settings = make_settings(home, models_dir)
    bank = PhraseBank(settings.bank_path)
    Users(bank).add("admin", PASSWORD, "admin")
    yield settings, bank
    bank.close()


def test_meaning_search_and_try_it_on_the_real_encoder(editor_home) -> None:
    settings, bank = editor_home
    client = TestClient(create_app(bank, settings, secure_cookies=False))
    csrf = login(client, "admin")
    page = client.get("/phrases", params={"meaning": "what is the weather like today?", "language": "en"}).text
    top = re.findall(r'<td><a href="/phrases/\d+">#\d+</a></td>\s*<td>([^<]*)</td>', page)[:3]
    assert top and any("weather" in text.lower() or "rain" in text.lower() for text in top), top

    draft = bank.add("Завтра обещают солнце и плюс двадцать пять, самое время для пляжа.", "ru",
                     status="in_review", who="admin")
    response = client.post("/try", data={"csrf_token": csrf, "dialogue": "Какая завтра будет погода? Жарко?"})
    assert response.status_code == 200, response.text
    live, with_drafts = (response.text.split('id="try-draft"')[0], response.text.split('id="try-draft"')[1])
    assert draft.text not in live and draft.text in with_drafts
    assert "retrieval=" in with_drafts and "language ru" in live


def test_bank_lint_runs_the_model_rules_on_the_real_bank(editor_home) -> None:
    settings, bank = editor_home
    probe = [("en", "Do you like rainy weather?"), ("en", "What music do you listen to?"),
             ("ru", "Какую музыку ты любишь?"), ("ru", "Как прошли выходные?")]
    report = lint_bank(bank, settings, probe, LintOptions(duplicate_cosine=0.97))
    assert report.stats["probe"]["en"]["contexts"] == 2 and report.stats["probe"]["ru"]["contexts"] == 2
    counts = report.counts()
    approved = len(bank.phrases(status="approved"))
    assert counts.get("dead", 0) >= approved - 4 * 5  # 4 contexts x top 5 retrieve at most 20 phrases
    assert "generic" in report.skipped or "generic" in counts
    for warning in report.warnings:
        assert warning.why and warning.fix

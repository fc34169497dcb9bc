"""Gap suggestions with tiny random models: the worst-answered probe contexts get LM drafts, queued as drafts
with source "generated" (never served), shown on the Gaps page; `repliq bank gaps` wires it up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.bank.store import PhraseBank

from editor_helpers import PASSWORD, csrf_of, tiny_settings
from tiny_models import build_tiny_decoder, build_tiny_encoder

APPROVED = ("What a lovely weather today!", "I like coffee in the morning.", "Какая сегодня погода?")


def _probe(path: Path) -> Path:
    dialogues = [
        {"id": "d1", "language": "en", "turns": [{"speaker": "A", "text": "Do you play chess at all?"},
                                                 {"speaker": "B", "text": "Sometimes."}]},
        {"id": "d2", "language": "en", "turns": [{"speaker": "A", "text": "I like coffee in the morning."},
                                                 {"speaker": "B", "text": "Me too."}]},
        {"id": "d3", "language": "en", "turns": [{"speaker": "A", "text": "Which quantum library works?"},
                                                 {"speaker": "B", "text": "No idea."}]},
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gaps")
    # No prefixes: a context equal to an approved phrase then scores cosine 1, the best answered of all.
    encoder = build_tiny_encoder(root / "enc", query_prefix="", passage_prefix="")
    settings = tiny_settings(root, encoder)
    settings = replace(settings, retrieval=replace(settings.retrieval, context_turns=1),
                       lm=replace(settings.lm, name=str(build_tiny_decoder(root / "lm")), threads=1))
    with PhraseBank(settings.bank_path) as bank:
        for text in APPROVED:
            bank.add(text, "ru" if "погода" in text else "en")
    return settings, _probe(root / "dev.jsonl")


def test_worst_contexts_get_generated_drafts_that_are_never_served(workspace) -> None:
    import torch

    from dialog.editor.gaps import GapOptions, probe_contexts, run_gaps

    settings, probe = workspace
    torch.manual_seed(0)
    contexts = probe_contexts(probe, settings.retrieval.context_turns)
    assert len(contexts) == 3
    options = GapOptions(limit=2, replies=2, check_language=False, keep_truncated=True, max_new_tokens=8,
                         budget_s=30)
    with PhraseBank(settings.bank_path) as bank:
        approved_before = {p.id for p in bank.phrases(status="approved")}
        report = run_gaps(bank, settings, contexts, options, who="gaps:test")
        gaps = report["gaps"]
        assert len(gaps) == 2 and gaps[0]["best_score"] <= gaps[1]["best_score"] < 0.999
        assert all(g["context"][-1][1] != "I like coffee in the morning." for g in gaps)  # answered exactly
        drafts = [d for g in gaps for d in g["drafts"]]
        assert drafts and report["drafts"] == len(drafts)
        for draft in drafts:
            phrase = bank.get(draft["id"])
            assert (phrase.status, phrase.source, phrase.tags) == ("draft", "generated", ("gap",))
            assert bank.history(phrase.id)[0].why.startswith("gap (best bank cosine")
        assert {p.id for p in bank.phrases(status="approved")} == approved_before


def test_cli_writes_the_report_and_the_gaps_page_shows_it(workspace, monkeypatch, capsys) -> None:
    from fastapi.testclient import TestClient

    from dialog.cli.main import main
    from dialog.editor.app import create_app
    from dialog.editor.gaps import REPORT_FILE
    from dialog.editor.users import Users

    settings, probe = workspace
    (settings.home / "config.toml").write_text(
        f'[encoder]\nname = "{settings.encoder.name}"\n[lm]\nname = "{settings.lm.name}"\nthreads = 1\n'
        '[retrieval]\ncontext_turns = 1\n', encoding="utf-8")
    monkeypatch.setenv("REPLIQ_HOME", str(settings.home))
    monkeypatch.setenv("REPLIQ_MODELS", str(settings.models_dir))
    assert main(["bank", "gaps", "--probe", str(probe), "--limit", "1", "--replies", "1", "--who", "cli"]) == 0
    out = capsys.readouterr().out
    assert "3 contexts, 1 gaps" in out
    report = json.loads((settings.home / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["contexts"] == 3 and len(report["gaps"]) == 1
    with PhraseBank(settings.bank_path) as bank:
        Users(bank).add("viewer", PASSWORD, "viewer")
        client = TestClient(create_app(bank, settings, secure_cookies=False))
        token = csrf_of(client.get("/login").text)
        client.post("/login", data={"name": "viewer", "password": PASSWORD, "csrf_token": token, "next": "/gaps"})
        page = client.get("/gaps")
        generated, _ = bank.search(source="generated", status="draft", limit=100)
    assert page.status_code == 200 and report["gaps"][0]["context"][-1][1] in page.text
    assert generated and all(f'href="/phrases/{p.id}"' in page.text for p in generated)
    assert 'id="no-report"' not in page.text

"""Lint rules: each fires on what it should, stays quiet otherwise, and says why and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.bank.schema import Phrase
from core.bank.store import PhraseBank
from dialog.editor.lint import LintOptions, LintReport, read_blocklist, read_report, text_warnings, write_report
from dialog.editor.lint_bank import dead_and_hubs, generic_phrases, lint_bank, load_probe, logged_probe
from dialog.editor.lint_html import render_report
from retriever.bank_index import load_index, update_index
from retriever.encoder import Encoder

from editor_helpers import tiny_settings
from tiny_models import build_tiny_encoder


def phrase(text: str, language: str = "en", pid: int = 1) -> Phrase:
    return Phrase(pid, text, language, (), "approved", "editor", "", "", "t", "t", 1)


def rules(text: str, language: str = "en", options: LintOptions | None = None) -> list[str]:
    return [w.rule for w in text_warnings(phrase(text, language), options or LintOptions())]


def test_clean_phrases_raise_nothing() -> None:
    for text, language in (("Sounds like a great trip!", "en"), ("Кажется, будет дождь.", "ru"),
                           ("Добрий день!", "uk"), ("Привет", "uk"), ("42", "en"), ("Todos los días.", "en")):
        assert rules(text, language) == [], text


@pytest.mark.parametrize(("text", "language", "rule"), [
    ("?", "en", "too-short"),
    ("word " * 80, "en", "too-long"),
    ("Как дела?", "en", "language-mismatch"),
    ("How are you?", "ru", "language-mismatch"),
    ("Їжачок і ґанок", "ru", "language-mismatch"),
    ("TODO: write a real answer", "en", "blocklisted"),
    ("Lorem ipsum dolor sit amet.", "en", "blocklisted"),
    ("*smiles* Sure, why not.", "en", "narration"),
    ("Sure (laughs) why not.", "en", "narration"),
    ("User: what do you think?", "en", "narration"),
    ("— Пойдём, — сказала она.", "ru", "narration"),
    ('"Let\'s go," she said.', "en", "narration"),
])
def test_each_text_rule_fires(text: str, language: str, rule: str) -> None:
    warnings = text_warnings(phrase(text, language))
    assert rule in [w.rule for w in warnings]
    found = next(w for w in warnings if w.rule == rule)
    assert found.why and found.fix and found.phrase_id == 1


def test_blocklist_matches_whole_words_and_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text("# editors' list\nDarn  # mild\n\nэх\n", encoding="utf-8")
    terms = read_blocklist(path)
    assert "darn" in terms and "эх" in terms and "todo" in terms
    options = LintOptions(blocklist=terms)
    assert rules("Darn it!", options=options) == ["blocklisted"]
    assert rules("Darnell is here.", options=options) == []
    assert rules("Эх, жаль.", "ru", options=options) == ["blocklisted"]
    assert read_blocklist(tmp_path / "missing.txt") == read_blocklist(None)


def test_report_round_trips_through_json_and_html_escapes(tmp_path: Path) -> None:
    report = LintReport(texts={7: "<b>bold</b>"}, skipped={"generic": "no proxy"})
    report.warnings.extend(text_warnings(phrase("<b>bold</b> *grins*", pid=7)))
    write_report(report, tmp_path / "r.json", tmp_path / "r.html", render_report)
    again = read_report(tmp_path / "r.json")
    assert again is not None and again.counts() == report.counts() == {"narration": 1}
    assert again.skipped == {"generic": "no proxy"} and again.texts[7] == "<b>bold</b>"
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    assert json.loads((tmp_path / "r.json").read_text())["warnings"][0]["phrase_id"] == 7
    assert read_report(tmp_path / "none.json") is None


class LengthProxy:
    """Scores a phrase by its length: enough to test the bottom-decile rule itself."""

    def score(self, texts: list[str], passages: object = None) -> list[float]:
        return [float(len(t)) for t in texts]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture
def workspace(tmp_path: Path, encoder_dir: Path):
    settings = tiny_settings(tmp_path, encoder_dir)
    bank = PhraseBank(settings.bank_path)
    for i in range(20):
        bank.add(f"{'x' * (i % 10)} reply about topic {i} " + "words " * i, "en")
    bank.add("Where did you travel last summer?", "en")
    bank.add("Where did you travel last summer??", "en")
    yield settings, bank, Encoder.from_config(settings)
    bank.close()


def test_generic_flags_the_bottom_decile_per_language(workspace) -> None:
    settings, bank, encoder = workspace
    update_index(bank, encoder, settings)
    index = load_index(settings, encoder, bank)
    found, cutoffs = generic_phrases(index, LengthProxy(), LintOptions())
    lengths = sorted(len(p.text) for p in bank.phrases())
    flagged = {w.phrase_id for w in found}
    assert flagged and all(len(bank.get(pid).text) <= cutoffs["en"] for pid in flagged)
    assert len(flagged) == sum(1 for n in lengths if n <= cutoffs["en"]) and len(flagged) <= 4
    assert all("bottom 10% of en" in w.why for w in found)


def test_dead_and_hub_phrases_over_a_probe_set(workspace) -> None:
    settings, bank, encoder = workspace
    update_index(bank, encoder, settings)
    index = load_index(settings, encoder, bank)
    query = "Where did you travel?"
    top = index.search(encoder.encode_queries([query]), "en", 1)[0][0][0]
    probe = [("en", query)] * 30 + [("ru", "Привет")]
    found, stats = dead_and_hubs(index, encoder, probe, LintOptions(top_k=1))
    by_rule = {rule: {w.phrase_id for w in found if w.rule == rule} for rule in ("dead", "hub")}
    assert by_rule["hub"] == {top}
    assert by_rule["dead"] == {p.id for p in bank.phrases()} - {top}
    assert stats["en"]["contexts"] == 30 and stats["en"]["never_retrieved"] == 21 and "ru" not in stats


def test_lint_bank_runs_every_rule_it_can_and_says_which_it_could_not(workspace) -> None:
    settings, bank, encoder = workspace
    draft = bank.add("Where did you travel last summer?!", "en", status="draft")
    bank.add("Bonjour *waves*", "en", status="in_review")
    report = lint_bank(bank, settings, probe=None, options=LintOptions(duplicate_cosine=0.97), encoder=encoder)
    duplicates = {(w.phrase_id, w.related) for w in report.warnings if w.rule == "near-duplicate"}
    twins = {bank.find_text("Where did you travel last summer?").id, bank.find_text("Where did you travel last "
                                                                                    "summer??").id}
    assert {(a, b) for a, b in duplicates if a in twins} == {(a, b) for a in twins for b in twins if a != b}
    assert any(pid == draft.id and related in twins for pid, related in duplicates)
    assert "narration" in report.counts()
    assert "no reward-specificity artifact" in report.skipped["generic"]
    assert "--probe" in report.skipped["dead"] and "--probe" in report.skipped["hub"]
    text_only = lint_bank(bank, None)
    assert set(text_only.skipped) == {"near-duplicate", "generic", "dead", "hub"}


def test_probe_file_gives_one_context_per_reply(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    dialogue = {"id": "dev:1", "language": "ru", "turns": [{"speaker": "A", "text": "Привет"},
                                                           {"speaker": "B", "text": "Привет!"},
                                                           {"speaker": "A", "text": "Как дела?"}]}
    path.write_text(json.dumps(dialogue, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_probe(path, context_turns=2) == [("ru", "Привет"), ("ru", "Привет\nПривет!")]


def test_the_shared_abuse_lists_are_checked_in_the_phrase_language() -> None:
    from core.blocklist import packaged_blocklists

    for language, shared in packaged_blocklists().items():
        word = sorted(shared.words)[0]
        warnings = text_warnings(phrase(f"Well {word} indeed", language))
        assert any(w.rule == "blocklisted" and repr(word) in w.why for w in warnings), (language, word)
    stem = sorted(packaged_blocklists()["en"].stems)[0]
    assert "blocklisted" in rules(f"so {stem}ing annoying")


def _decision(request_id: str, language: str, context: list[dict[str, str]] | None) -> dict:
    record = {"schema": "repliq.decision/1", "request_id": request_id, "language": language, "policy": "p",
              "candidates": [{"text": "a", "propensity": 1.0}], "chosen": 0, "versions": {}}
    if context is not None:
        record["context"] = context
    return record


def test_served_contexts_join_the_probe_set_only_when_logged_with_their_text(tmp_path: Path) -> None:
    assert logged_probe(tmp_path / "missing") == []
    logs = tmp_path / "decisions"
    logs.mkdir()
    assert logged_probe(logs) == []  # a log folder with no files yet
    lines = [_decision("r1", "ru", [{"speaker": "user", "text": "Привет! Как дела?"}]),
             _decision("r2", "en", None),  # served without log_user_text: only hashes
             _decision("r3", "en", [{"speaker": "user", "text": "hi"}, {"speaker": "bot", "text": "hello"},
                                    {"speaker": "user", "text": "any plans for tonight?"}])]
    (logs / "decisions-0001.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    probe = logged_probe(logs, context_turns=2)
    assert [lang for lang, _ in probe] == ["ru", "en"]
    assert "Привет" in probe[0][1] and "any plans for tonight?" in probe[1][1] and "hi" not in probe[1][1].split()
    (logs / "decisions-0001.jsonl").write_text(json.dumps(lines[1]) + "\n", encoding="utf-8")
    assert logged_probe(logs) == []

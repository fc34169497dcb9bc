from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bank.default import (
    STARTER_FILES,
    build_default_bank,
    chatterbot_rows,
    is_clean_reply,
    select_replies,
    starter_rows,
)
from core.bank.store import BankError, PhraseBank

JUNK = [
    "Check this out http://example.com it is great.",
    "Visit www.example.org for more info.",
    "😂😂😂😂😂😂😂😂",
    "That is so funny 😂 I cannot stop laughing.",
    "What are you doing today!!!!",
    "Really??? That is wild to me.",
    "WHAT ARE YOU EVEN TALKING ABOUT RIGHT NOW?",
    "Lol that is what I was thinking too.",
    "Hahahaha that is amazing, I love it.",
    "That movie was so fucking good, honestly.",
    "Hi! How are you doing?",
    "Hello there, nice to meet you!",
    "Im going to the store later today.",
    "Yes i think that is a good idea.",
    "That is great, u should try it sometime.",
    "That sounds soooo good to me right now.",
    "No no no, that is not what I meant.",
    "That is cool :) I like that a lot.",
    "ok.",
    "too short",
    "this one has no capital letter at the start.",
    "This one never ends with punctuation at all",
    "Word " * 40 + "end.",
    "Call 555 123 4567 or 555 765 4321 now.",
]
OVERLAP = "My favourite season is autumn, because of the colours."
GOOD = [
    "I love hiking in the mountains on weekends.",
    "What kind of music do you usually listen to?",
    "My sister just started learning to play the violin!",
    "That sounds like a wonderful way to spend a summer.",
]


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[PhraseBank]:
    store = PhraseBank(tmp_path / "bank.sqlite")
    yield store
    store.close()


@pytest.fixture
def starters(tmp_path: Path) -> list[Path]:
    ru = tmp_path / "starter_ru.jsonl"
    en = tmp_path / "starter_en.jsonl"
    common = {"source": "repliq-starter", "license": "Apache-2.0", "author": "editors"}
    ru.write_text(json.dumps({"text": "Привет! Как настроение?", "tags": ["greetings"], **common},
                             ensure_ascii=False) + "\n", encoding="utf-8")
    en.write_text("".join(json.dumps({"text": t, "language": "en", **common}) + "\n"
                          for t in ("Hey! Nice to see you.", OVERLAP)), encoding="utf-8")
    return [ru, en]


@pytest.fixture
def chitchat(tmp_path: Path) -> Path:
    """A miniature chitchat-dataset.json: openers must be left out, junk filtered, duplicates dropped."""
    def message(*texts: str) -> list[dict]:
        return [{"sender": "a", "text": t, "timestamp": "2018-01-01T00:00:00Z"} for t in texts]

    data = {
        "c1": {"messages": [message("Opening line that is long enough to keep."),
                            message(GOOD[0], JUNK[0]), message(GOOD[1]), message(GOOD[0].upper())]},
        "c2": {"messages": [message("Hello"), message(GOOD[2], "lol"), message(GOOD[3]),
                            message(OVERLAP)]},  # already in the bank from the starter set
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("text", JUNK)
def test_filter_drops_junk(text: str) -> None:
    assert not is_clean_reply(text)


@pytest.mark.parametrize("text", GOOD)
def test_filter_keeps_tidy_replies(text: str) -> None:
    assert is_clean_reply(text)


def test_selection_dedupes_and_is_deterministic() -> None:
    texts = [f"This is reply number {i} of many." for i in range(200)]
    texts += ["this is reply number 3 of many!".capitalize(), *JUNK]
    everything = select_replies(texts, 10_000)
    assert everything == texts[:200]  # order kept; the case/punctuation variant and all junk dropped
    picked = select_replies(texts, 20, seed=1)
    assert len(picked) == 20 and picked == select_replies(texts, 20, seed=1)
    assert picked != select_replies(texts, 20, seed=2)
    assert picked == sorted(picked, key=texts.index)


def test_default_build_from_fixtures_and_real_chatterbot(bank: PhraseBank, starters: list[Path],
                                                         chitchat: Path) -> None:
    messages: list[str] = []
    counts = build_default_bank(bank, starter_files=starters, chitchat_path=chitchat, progress=messages.append)
    assert counts["starter"] == 3
    assert counts["chitchat-dataset"] == 4  # GOOD[0..3]; opener, junk, shouting copy, starter overlap dropped
    assert counts["chatterbot-corpus"] > 1000
    assert len(messages) == 3 and "chatterbot-corpus" in messages[1]
    assert "added 4 of 5, skipped 1 duplicate" in messages[2]
    stats = bank.stats()
    assert stats["total"] == sum(counts.values()) == stats["revision"]
    assert set(stats["by_language"]) == {"ru", "en", "uk"}
    assert stats["by_source"]["chitchat-dataset"] == 4
    assert bank.find_text("Привет! Как настроение?").language == "ru"  # language from the file name
    for phrase in bank.phrases():
        assert phrase.source.lower() in phrase.tags and phrase.license.lower() in phrase.tags
        if phrase.source == "chatterbot-corpus":
            assert phrase.license == "BSD-3-Clause" and len(phrase.tags) >= 3  # + the file's category
        if phrase.source == "chitchat-dataset":
            assert phrase.license == "MIT" and phrase.language == "en"
    assert {p.text for p in bank.phrases() if p.source == "chitchat-dataset"} == set(GOOD)

    revision = bank.revision
    again = build_default_bank(bank, starter_files=starters, chitchat_path=chitchat)
    assert again == {"starter": 0, "chatterbot-corpus": 0, "chitchat-dataset": 0}
    assert bank.revision == revision


def test_real_chitchat_sample_is_clean_and_bounded(bank: PhraseBank, starters: list[Path]) -> None:
    counts = build_default_bank(bank, starter_files=starters, chitchat_limit=300, seed=7)
    assert 250 <= counts["chitchat-dataset"] <= 300
    sample = [p.text for p in bank.phrases() if p.source == "chitchat-dataset"]
    assert all(is_clean_reply(text) for text in sample)


def test_chitchat_can_be_left_out(bank: PhraseBank, starters: list[Path]) -> None:
    counts = build_default_bank(bank, starter_files=starters, chitchat_limit=0)
    assert "chitchat-dataset" not in counts and "chitchat-dataset" not in bank.stats()["by_source"]


def test_broken_starter_file_stops_the_build(bank: PhraseBank, tmp_path: Path) -> None:
    broken = tmp_path / "starter_en.jsonl"
    broken.write_text('{"text": "Fine.", "language": "en"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(BankError, match=r"starter_en\.jsonl:2"):
        build_default_bank(bank, starter_files=[broken], chitchat_limit=0)
    with pytest.raises(BankError, match="missing"):
        build_default_bank(bank, starter_files=[tmp_path / "nope.jsonl"], chitchat_limit=0)
    assert bank.revision == 0


def test_malformed_chatterbot_entries_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "english"
    folder.mkdir(parents=True)
    (folder / "a.yml").write_text("categories: [AI]\nconversations:\n- - Q?\n  - A good answer.\n"
                                  "- a stray string\n- - Q2?\n  - '" + "x" * 1200 + "'\n", encoding="utf-8")
    rows, errors = chatterbot_rows(tmp_path / "data", languages=["en"])
    assert [r.text for r in rows] == ["A good answer."]
    assert rows[0].tags == ("AI",) and rows[0].language == "en"
    assert [e.line for e in errors] == [5, 7]


def test_packaged_starter_files_are_valid(bank: PhraseBank) -> None:
    from importlib import resources

    if not all(resources.files("core.data").joinpath(name).is_file() for name in STARTER_FILES):
        pytest.skip("starter files not written yet")
    rows = starter_rows()
    report = bank.import_phrases(rows, who="test", dry_run=True)
    assert report.ok, report.errors[:5]
    assert {r.language for r in rows} >= {"ru", "en"}

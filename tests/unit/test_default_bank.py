from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bank.default import (
    STARTER_FILES,
    build_default_bank,
    chatterbot_rows,
    curated_ru_rows,
    is_clean_reply,
    select_replies,
    starter_rows,
)
from core.bank.store import BankError, PhraseBank
from core.corpora import Dialogue

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
    assert len(messages) == 4 and "chatterbot-corpus" in messages[1] and "koziev-anekdot-dialogues" in messages[2]
    assert "added 4 of 5, skipped 1 duplicate" in messages[3]
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
        if phrase.source == "koziev-anekdot-dialogues":
            assert phrase.license == "CC0-1.0" and phrase.language == "ru"
    assert {p.text for p in bank.phrases() if p.source == "chitchat-dataset"} == set(GOOD)

    revision = bank.revision
    again = build_default_bank(bank, starter_files=starters, chitchat_path=chitchat)
    assert again == {"starter": 0, "chatterbot-corpus": 0, "koziev-anekdot-dialogues": 0, "chitchat-dataset": 0}
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

    missing = [name for name in STARTER_FILES if not resources.files("core.data").joinpath(name).is_file()]
    assert not missing, f"packaged starter files missing from core/data: {missing}"
    rows = starter_rows()
    report = bank.import_phrases(rows, who="test", dry_run=True)
    assert report.ok, report.errors[:5]
    assert {r.language for r in rows} >= {"ru", "en"}


# ---- the curated Russian bank (core/data/bank_ru.jsonl.xz, dialog.jobs.curate_ru) -------------------------

def test_packaged_curated_russian_file_is_clean_and_matches_its_provenance() -> None:
    from importlib import resources

    from core.blocklist import Blocklist, packaged_blocklists
    from core.hygiene import similarity_key
    from core.text import detect_language, normalize_text, word_tokens
    from dialog.jobs.curate_ru import DATA_NAME, PROVENANCE_NAME

    data = Path(str(resources.files("core.data").joinpath(DATA_NAME)))
    provenance = json.loads(Path(str(resources.files("core.data").joinpath(PROVENANCE_NAME))).read_text("utf-8"))
    rows = curated_ru_rows()
    assert data.stat().st_size <= 1_000_000
    assert len(rows) == provenance["phrases"] == provenance["counts"]["kept"] >= 2600
    assert provenance["license"] == "CC0-1.0" and provenance["rules"]["limit"] == len(rows)
    blocklist = Blocklist.merge(packaged_blocklists().values())
    keys = [similarity_key(r.text) for r in rows]
    assert len(set(keys)) == len(keys)
    for row in rows:
        assert row.language == "ru" == detect_language(row.text) and row.text == normalize_text(row.text)
        assert not blocklist.hits(word_tokens(row.text)), row.text
        assert row.source == "koziev-anekdot-dialogues" and row.license == "CC0-1.0"


def test_default_bank_has_3000_russian_phrases(bank: PhraseBank) -> None:
    counts = build_default_bank(bank, chitchat_limit=0)
    assert counts["koziev-anekdot-dialogues"] >= 2600
    assert bank.stats()["by_language"]["ru"] >= 3000


def test_curated_russian_phrases_come_only_from_train_conversations(shared_data: Path) -> None:
    from core.corpora import read_anekdot_dialogues, split_of
    from core.hygiene import similarity_key

    train_replies: set[str] = set()
    held_out: set[str] = set()
    for dialogue in read_anekdot_dialogues(shared_data / "ru" / "koziev_anekdot_dialogues.tar.xz"):
        if split_of(dialogue.id) == "train":
            train_replies.update(turn.text for turn in dialogue.turns[1:])
        else:  # any turn of a held-out conversation, compared loosely (case, punctuation, ё)
            held_out.update(similarity_key(turn.text) for turn in dialogue.turns)
    shipped = [row.text for row in curated_ru_rows()]
    assert set(shipped) <= train_replies  # verbatim replies of train conversations
    leaked = {similarity_key(text) for text in shipped} & held_out
    assert not leaked, sorted(leaked)[:5]


def _xz(tmp_path: Path, text: str) -> Path:
    import lzma

    path = tmp_path / "bank_ru.jsonl.xz"
    path.write_bytes(lzma.compress(text.encode("utf-8")))
    return path


def test_broken_curated_file_stops_the_build_naming_the_row(bank: PhraseBank, tmp_path: Path,
                                                             starters: list[Path]) -> None:
    good = json.dumps({"text": "Хорошая погода сегодня, правда?", "language": "ru"}, ensure_ascii=False)
    broken = _xz(tmp_path, good + "\n" + '{"text": \n' + json.dumps({"text": "Ok then.", "language": "en"}) + "\n")
    with pytest.raises(BankError, match=r"has 2 bad row\(s\)[\s\S]*bank_ru\.jsonl\.xz:2: broken JSON[\s\S]*:3: "):
        build_default_bank(bank, starter_files=starters, curated_ru_path=broken, chitchat_limit=0)
    not_xz = tmp_path / "plain.jsonl.xz"
    not_xz.write_text(good, encoding="utf-8")
    with pytest.raises(BankError, match=r"not xz-compressed.*curate_ru"):
        curated_ru_rows(not_xz)
    with pytest.raises(BankError, match="missing"):
        curated_ru_rows(tmp_path / "absent.jsonl.xz")
    assert [r.text for r in curated_ru_rows(_xz(tmp_path, good + "\n\n"))] == ["Хорошая погода сегодня, правда?"]


def _dialogue_in(split: str, *texts: str, salt: str = "") -> Dialogue:
    """A dialogue whose id hashes into ``split``."""
    from core.corpora import DialogueTurn, split_of

    n = 0
    while split_of(f"anekdot:{salt}{n}") != split:
        n += 1
    turns = tuple(DialogueTurn("AB"[i % 2], t) for i, t in enumerate(texts))
    return Dialogue(f"anekdot:{salt}{n}", "ru", turns)


@pytest.mark.parametrize(("text", "reason"), [
    ("Да.", "length"),
    ("Нет... я так не думаю, правда.", "shape"),
    ("А у вас есть 100 рублей до завтра?", "shape"),
    ("Нет. Второй: - А я тогда как же?", "shape"),
    ("Ну ты и сказал сейчас, я не поверю.", "narration"),
    ("А вот Рабинович так не думает вообще.", "name"),
    ("Абраша, успокойся и посиди тихо.", "name"),
    ("Доктор, а я буду жить долго?", "vocative"),
    ("Да, девочка, мы сейчас полетим.", "vocative"),
    ("Мне нужна водка и хорошая закуска.", "crude"),
    ("Шо ты такой хмурый сегодня утром?", "dialect"),
    ("А почему она так долго не звонит?", "pronoun"),
    ("Хорошая погода сегодня, правда?", None),
])
def test_curation_rules_name_the_first_broken_rule(text: str, reason: str | None) -> None:
    from core.blocklist import Blocklist
    from dialog.jobs.curate_ru import CRUDE, CorpusStats, CurationRules, reject_reason

    stats = CorpusStats.of([_dialogue_in("train", "Привет.", text, "Ладно.")])
    stats.lowercase_counts.update({"хорошая": 9, "ну": 9, "нет": 9, "а": 9, "доктор": 9, "да": 9, "мне": 9,
                                   "шо": 9})
    rules = CurationRules(min_word_count=1)
    assert reject_reason(text, stats, rules, Blocklist.from_lines(CRUDE), Blocklist.from_lines([])) == reason


def test_curation_keeps_train_replies_only_and_is_deterministic() -> None:
    from core.hygiene import similarity_key
    from dialog.jobs.curate_ru import CurationRules, curate, encode_phrases

    lines = ["Какой чудесный сегодня день выдался!", "А ты любишь гулять по вечерам?",
             "Мне больше нравится читать дома.", "Завтра будет дождь и сильный ветер."]
    dialogues = [
        _dialogue_in("train", "Начало разговора здесь.", lines[0], lines[1], "Последняя строка шутки тут.", salt="a"),
        _dialogue_in("train", "Привет, как жизнь?", lines[2], "Это конец анекдота совсем.", salt="b"),
        _dialogue_in("train", "Ещё одно начало.", "Какой чудесный сегодня день выдался?", "Конец.", salt="c"),
        _dialogue_in("dev", "Начало в отложенной части.", lines[3], "Конец отложенной части.", salt="d"),
        _dialogue_in("train", "Зачин разговора.", lines[3].replace(".", "!"), "Финал разговора.", salt="e"),
        # Sentence-initial words must also occur in lower case somewhere, or the name rule takes them.
        _dialogue_in("train", "и какой, а мне завтра", salt="f"),
    ]
    rules = CurationRules(min_word_count=1, limit=10)
    curated = curate(dialogues, existing=[lines[2].replace("читать", "почитать")], rules=rules)
    # lines[0]: kept; its "?" twin: repeat; lines[1]: kept; lines[2]: near duplicate of an existing phrase;
    # lines[3] with "!" is held out: the dev dialogue has it with "."; first turns and punchlines are never used.
    assert sorted(curated.phrases) == sorted(lines[:2])
    assert curated.counts["near_duplicate"] == 1 and curated.counts["repeat"] == 1
    assert curated.counts["punchline"] == 4 and curated.counts["kept"] == 2
    assert curated.counts["held_out"] == 1
    again = curate(list(reversed(dialogues)), existing=[], rules=rules)
    assert encode_phrases(curate(dialogues, [], rules).phrases) == encode_phrases(curate(dialogues, [], rules).phrases)
    assert {similarity_key(t) for t in again.phrases} == {similarity_key(t) for t in lines[:3]}  # no "existing"
    limited = curate(dialogues, [], CurationRules(min_word_count=1, limit=1))
    assert len(limited.phrases) == 1 and limited.counts["not_sampled"] == 2

from __future__ import annotations

import sqlite3
import threading
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from core.bank.formats import Origin, PhraseRow
from core.bank.schema import MIGRATIONS, SCHEMA_VERSION
from core.bank.store import (
    BankError,
    DuplicatePhrase,
    PhraseBank,
    PhraseNotFound,
    SchemaError,
)


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[PhraseBank]:
    store = PhraseBank(tmp_path / "bank.sqlite")
    yield store
    store.close()


def dump(path: Path) -> list[str]:
    """Every table's rows as SQL: equal dumps mean the bank did not change at all."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_fresh_bank_has_all_migrations_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "bank.sqlite"
    PhraseBank(path).close()
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"phrases", "history", "lm_scores", "schema_version"} <= tables
    columns = [(r[1], r[2], r[3], r[5]) for r in conn.execute("PRAGMA table_info(lm_scores)")]
    assert columns == [
        ("phrase_id", "INTEGER", 1, 1), ("phrase_version", "INTEGER", 1, 0), ("lm_id", "TEXT", 1, 2),
        ("sum_logprob", "REAL", 1, 0), ("mean_logprob", "REAL", 1, 0), ("n_tokens", "INTEGER", 1, 0),
        ("scored_at", "TEXT", 1, 0),
    ]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_old_bank_is_migrated_and_keeps_its_phrases(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
    conn.execute("INSERT INTO phrases (text, language, status, source, created, updated) "
                 "VALUES ('Old one.', 'en', 'approved', 'editor', 't', 't')")
    conn.close()
    with PhraseBank(path) as bank:
        assert [p.text for p in bank.phrases()] == ["Old one."]
        with bank.connect() as db:
            db.execute("INSERT INTO lm_scores VALUES (1, 1, 'lm', -3.0, -1.5, 2, 'now')")
    with PhraseBank(path) as bank, bank.connect() as db:  # reopening must not re-run migrations
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT lm_id FROM lm_scores").fetchall() == [("lm",)]


def test_newer_schema_is_refused_without_touching_it(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    PhraseBank(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = dump(path)
    with pytest.raises(SchemaError, match=rf"schema version {SCHEMA_VERSION + 1}.*[Uu]pgrade repliq"):
        PhraseBank(path)
    assert dump(path) == before


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BankError, match="not a usable bank database"):
        PhraseBank(path)


def test_add_normalizes_and_writes_history(bank: PhraseBank) -> None:
    phrase = bank.add("  Hello,\n  world! ", "EN", tags=["Greeting", "greeting", " Small  Talk "], who="ann",
                      why="first")
    assert (phrase.text, phrase.language, phrase.tags) == ("Hello, world!", "en", ("greeting", "small talk"))
    assert phrase.version == 1 and phrase.created == phrase.updated
    assert datetime.fromisoformat(phrase.created).utcoffset().total_seconds() == 0
    assert bank.get(phrase.id) == phrase
    [entry] = bank.history(phrase.id)
    assert (entry.who, entry.why, entry.before) == ("ann", "first", None)
    assert entry.after == phrase.to_dict()
    assert bank.revision == entry.id == 1


def test_update_and_retire_record_before_and_after(bank: PhraseBank) -> None:
    first = bank.add("Good morning!", "en", who="ann")
    edited = bank.update(first.id, who="bob", why="warmer", text="Good morning to you!", tags=["morning"])
    assert edited.version == 2 and edited.created == first.created and edited.updated >= first.updated
    retired = bank.retire(first.id, who="cid", why="stale")
    assert (retired.status, retired.version) == ("retired", 3)
    entries = bank.history(first.id)
    assert [(e.who, e.why) for e in entries] == [("ann", ""), ("bob", "warmer"), ("cid", "stale")]
    assert entries[1].before == first.to_dict() and entries[1].after == edited.to_dict()
    assert entries[2].before["status"] == "approved" and entries[2].after["status"] == "retired"
    assert bank.revision == 3
    assert bank.update(first.id, who="dan", status="retired") == retired  # no change, no new version
    assert bank.revision == 3 and len(bank.history()) == 3


def test_duplicates_are_refused_with_a_pointer(bank: PhraseBank) -> None:
    original = bank.add("See you soon.", "en")
    other = bank.add("Something else.", "en")
    revision = bank.revision
    with pytest.raises(DuplicatePhrase, match=rf"#{original.id}.*See you soon\.") as caught:
        bank.add("See   you soon.", "en")
    assert caught.value.existing_id == original.id
    with pytest.raises(DuplicatePhrase, match=f"#{original.id}"):
        bank.update(other.id, who="ann", text="See you soon.")
    assert bank.revision == revision and bank.get(other.id) == other
    assert bank.add("See you soon.", "uk").language == "uk"  # same words, another language: allowed


def test_composed_and_decomposed_text_are_the_same_phrase(bank: PhraseBank) -> None:
    composed = "Мой"  # U+0439
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    phrase = bank.add(decomposed, "ru")
    assert phrase.text == composed
    with pytest.raises(DuplicatePhrase):
        bank.add(composed, "ru")
    assert bank.find_text(decomposed) == phrase
    assert bank.find_text(composed, language="en") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "   "}, "text is empty"),
        ({"text": "x" * 1001}, "1001 characters"),
        ({"language": "xx"}, "unknown language 'xx'"),
        ({"language": "rus"}, "unknown language"),
        ({"language": ""}, "language is missing"),
        ({"status": "published"}, "unknown status"),
        ({"tags": "greeting"}, "tags must be a list"),
        ({"tags": ["a|b"]}, "contains '|'"),
        ({"source": " "}, "source is empty"),
        ({"who": ""}, "who is empty"),
    ],
)
def test_invalid_fields_are_refused_before_writing(bank: PhraseBank, kwargs: dict, message: str) -> None:
    values = {"text": "Fine text.", "language": "en", **kwargs}
    with pytest.raises(BankError, match=message):
        bank.add(values.pop("text"), values.pop("language"), **values)
    assert bank.revision == 0 and bank.phrases() == []


def test_update_refuses_unknown_fields_and_missing_ids(bank: PhraseBank) -> None:
    phrase = bank.add("Nice.", "en")
    with pytest.raises(BankError, match="cannot change version"):
        bank.update(phrase.id, who="ann", version=7)
    with pytest.raises(PhraseNotFound, match="no phrase #99") as caught:
        bank.update(99, who="ann", text="x")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(KeyError):
        bank.get(99)
    assert bank.revision == 1


def test_listing_filters_stats_and_changes(bank: PhraseBank) -> None:
    a = bank.add("One.", "en", source="editor")
    b = bank.add("Два.", "ru", status="draft", source="import")
    c = bank.add("Три.", "ru", source="import")
    assert [p.id for p in bank.phrases()] == [a.id, b.id, c.id]
    assert [p.id for p in bank.phrases(language="ru", status="approved")] == [c.id]
    with pytest.raises(BankError, match="unknown status"):
        bank.phrases(status="aproved")
    seen = bank.revision
    bank.retire(a.id, who="ann")
    bank.update(c.id, who="ann", tags=["numbers"])
    assert bank.changed_since(seen) == [a.id, c.id]
    assert bank.changed_since(0) == [a.id, b.id, c.id]
    assert bank.stats() == {
        "total": 3, "revision": 5, "by_language": {"en": 1, "ru": 2},
        "by_status": {"approved": 1, "draft": 1, "retired": 1}, "by_source": {"editor": 1, "import": 2},
    }


def test_connect_commits_or_rolls_back(bank: PhraseBank) -> None:
    with bank.connect(write=True) as conn:
        conn.execute("INSERT INTO lm_scores VALUES (1, 1, 'a', -1.0, -1.0, 1, 'now')")
    with pytest.raises(RuntimeError), bank.connect() as conn:
        conn.execute("INSERT INTO lm_scores VALUES (2, 1, 'a', -1.0, -1.0, 1, 'now')")
        raise RuntimeError("boom")
    with bank.connect() as conn:
        assert conn.execute("SELECT phrase_id FROM lm_scores").fetchall() == [(1,)]


def rows(*texts: str, language: str = "en") -> list[PhraseRow]:
    return [PhraseRow(text=t, language=language, origin=Origin("in.csv", i + 2)) for i, t in enumerate(texts)]


def test_import_is_all_or_nothing_and_reports_every_bad_row(bank: PhraseBank, tmp_path: Path) -> None:
    existing = bank.add("Already here.", "en")
    before, revision = dump(tmp_path / "bank.sqlite"), bank.revision
    batch = [*rows("Fine.", "", "Already here.", "Fine."), PhraseRow("Ok.", "zz", origin=Origin("in.csv", 6)),
             PhraseRow("Fine too.", "en", status="live", origin=Origin("in.csv", 7))]
    report = bank.import_phrases(batch, who="ann")
    assert not report.applied and not report.ok and report.added_ids == ()
    found = {(e.file, e.line): e.reason for e in report.errors}
    assert set(found) == {("in.csv", 3), ("in.csv", 4), ("in.csv", 5), ("in.csv", 6), ("in.csv", 7)}
    assert "empty" in found[("in.csv", 3)]
    assert f"#{existing.id}" in found[("in.csv", 4)]
    assert "in.csv:2" in found[("in.csv", 5)]
    assert "zz" in found[("in.csv", 6)] and "live" in found[("in.csv", 7)]
    assert dump(tmp_path / "bank.sqlite") == before and bank.revision == revision


def test_dry_run_validates_without_writing(bank: PhraseBank, tmp_path: Path) -> None:
    before = dump(tmp_path / "bank.sqlite")
    report = bank.import_phrases(rows("A.", "B."), who="ann", dry_run=True)
    assert report.ok and not report.applied and report.accepted == 2 and "would add 2" in report.summary()
    assert dump(tmp_path / "bank.sqlite") == before and bank.revision == 0


def test_import_applies_and_can_skip_duplicates(bank: PhraseBank) -> None:
    bank.add("B.", "en")
    report = bank.import_phrases(rows("A.", "B.", "A.", "C."), who="ann", why="bulk", on_duplicate="skip")
    assert report.applied and report.accepted == 2 and len(report.skipped) == 2
    assert [bank.get(i).text for i in report.added_ids] == ["A.", "C."]
    assert report.revision == bank.revision == 3
    assert {e.why for e in bank.history()} == {"", "bulk"}


def test_ten_thousand_rows_import_quickly(bank: PhraseBank) -> None:
    import time

    started = time.perf_counter()
    report = bank.import_phrases([PhraseRow(f"Reply number {i}.", "en") for i in range(10_000)], who="bulk")
    assert report.applied and len(report.added_ids) == 10_000 and bank.revision == 10_000
    assert time.perf_counter() - started < 20  # one transaction; seconds, not minutes, even on a busy box


def test_readers_and_writers_in_parallel(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    writer, reader = PhraseBank(path), PhraseBank(path)  # two handles, as an editor CLI and the server
    failures: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(100):
                writer.add(f"Line {i}.", "en", who="ed")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            done.set()

    def read() -> None:
        last = 0
        try:
            while not done.is_set():
                revision = reader.revision
                assert revision >= last
                assert len(reader.phrases()) >= last
                last = revision
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert reader.revision == 100 and len(reader.phrases()) == 100
    writer.close()
    reader.close()
    with pytest.raises(BankError, match="closed"):
        reader.phrases()

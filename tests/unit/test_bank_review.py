"""Migration 3 (review statuses, users, sessions) upgrades an existing bank without losing anything,
and the store's new search and conflict check behave."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.bank import schema
from core.bank.schema import SCHEMA_VERSION, BankError, EditConflict
from core.bank.store import PhraseBank


def _v2_bank(path: Path) -> None:
    """A bank as the previous release left it: schema version 2, with phrases, history and LM scores."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for version, migration in enumerate(schema.MIGRATIONS[:2], start=1):
        migration(conn)
        conn.execute("INSERT INTO schema_version VALUES (?, 'then')", (version,))
    for pid, (text, status) in enumerate([("Hello!", "approved"), ("Draft one.", "draft"), ("Old.", "retired")], 1):
        conn.execute("INSERT INTO phrases (id, text, language, tags, status, source, created, updated) VALUES "
                     "(?, ?, 'en', '[\"t\"]', ?, 'editor', 'then', 'then')", (pid * 10, text, status))
        conn.execute("INSERT INTO history (phrase_id, who, at, after) VALUES (?, 'old', 'then', '{}')", (pid * 10,))
    conn.execute("INSERT INTO lm_scores VALUES (10, 1, 'lm', -3.0, -1.0, 3, 'then')")
    conn.execute("COMMIT")
    conn.close()


def test_migration_keeps_phrases_ids_history_and_the_id_sequence(tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    _v2_bank(path)
    with PhraseBank(path) as bank:
        assert [(p.id, p.text, p.status, p.tags) for p in bank.phrases()] == [
            (10, "Hello!", "approved", ("t",)), (20, "Draft one.", "draft", ("t",)), (30, "Old.", "retired", ("t",))]
        assert [h.phrase_id for h in bank.history()] == [10, 20, 30] and bank.revision == 3
        with bank.connect() as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("SELECT COUNT(*) FROM lm_scores").fetchone()[0] == 1
            indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"phrases_language_text", "phrases_status"} <= indexes
        assert bank.add("New.", "en").id == 31  # AUTOINCREMENT continues after the largest id
        with pytest.raises(BankError, match="already says this"):
            bank.add("Hello!", "en")
        moved = bank.update(20, who="rev", status="in_review")
        assert moved.status == "in_review" and bank.update(20, who="rev", status="rejected").status == "rejected"
        with bank.connect(write=True) as conn, pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO history (phrase_id, who, at) VALUES (999, 'x', 'y')")


def test_the_database_still_refuses_an_unknown_status(tmp_path: Path) -> None:
    with PhraseBank(tmp_path / "bank.db") as bank:
        bank.add("Hi.", "en")
        with bank.connect(write=True) as conn, pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE phrases SET status = 'published'")
        with pytest.raises(BankError, match="unknown status 'published'"):
            bank.update(1, who="x", status="published")


def test_only_approved_phrases_are_listed_for_serving(tmp_path: Path) -> None:
    with PhraseBank(tmp_path / "bank.db") as bank:
        for status in schema.STATUSES:
            bank.add(f"Phrase {status}.", "en", status=status)
        assert [p.text for p in bank.phrases(status="approved")] == ["Phrase approved."]


def test_expected_version_refuses_a_stale_save_naming_who_and_when(tmp_path: Path) -> None:
    with PhraseBank(tmp_path / "bank.db") as bank:
        phrase = bank.add("One.", "en")
        bank.update(phrase.id, who="alice", text="Two.", expected_version=1)
        with pytest.raises(EditConflict, match=r"changed by alice at .*; reload"):
            bank.update(phrase.id, who="bob", text="Three.", expected_version=1)
        assert bank.get(phrase.id).text == "Two." and len(bank.history(phrase.id)) == 2
        assert bank.update(phrase.id, who="bob", text="Three.").text == "Three."  # no check without a version


def test_search_parameters_are_bound_not_spliced(tmp_path: Path) -> None:
    with PhraseBank(tmp_path / "bank.db") as bank:
        bank.add("It's 100% true_ok.", "en", tags=["it's"])
        bank.add("Other.", "en")
        assert bank.search(text="100%")[1] == 1 and bank.search(text="0%_")[1] == 0
        assert bank.search(text="' OR 1=1 --")[1] == 0 and bank.search(tag="it's")[1] == 1
        assert bank.search(language="en' OR '1'='1")[1] == 0

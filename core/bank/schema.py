"""Versioned schema of the bank database.

Migrations are append-only: a released migration is never edited, because banks already upgraded by it
would silently differ from fresh ones. A new table or column is a new function at the end of
``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime


class SchemaError(RuntimeError):
    """The database cannot be used by this version of the code."""


def _phrases_and_history(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE phrases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            text TEXT NOT NULL,
            language TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL CHECK (status IN ('draft', 'approved', 'retired')),
            source TEXT NOT NULL,
            license TEXT NOT NULL DEFAULT '',
            author TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 1
        )"""
    )
    # Duplicates are refused by the store with a friendly message; the index is the backstop for races.
    conn.execute("CREATE UNIQUE INDEX phrases_language_text ON phrases (language, text)")
    conn.execute("CREATE INDEX phrases_status ON phrases (status, language)")
    # AUTOINCREMENT keeps history ids strictly increasing, so MAX(id) can serve as the bank revision.
    conn.execute(
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            phrase_id INTEGER NOT NULL REFERENCES phrases (id),
            who TEXT NOT NULL,
            at TEXT NOT NULL,
            before TEXT,
            after TEXT,
            why TEXT NOT NULL DEFAULT ''
        )"""
    )
    conn.execute("CREATE INDEX history_phrase ON history (phrase_id, id)")


def _lm_scores(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE lm_scores (
            phrase_id INTEGER NOT NULL,
            phrase_version INTEGER NOT NULL,
            lm_id TEXT NOT NULL,
            sum_logprob REAL NOT NULL,
            mean_logprob REAL NOT NULL,
            n_tokens INTEGER NOT NULL,
            scored_at TEXT NOT NULL,
            PRIMARY KEY (phrase_id, lm_id)
        )"""
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_phrases_and_history, _lm_scores)
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where} has schema version {version}, but this repliq only understands up to version "
            f"{SCHEMA_VERSION}. Upgrade repliq to open it (older code must not write to a newer bank)."
        )


def migrate(conn: sqlite3.Connection, where: str = "the bank") -> int:
    """Bring the database up to ``SCHEMA_VERSION``; returns the version found before migrating.

    ``conn`` must be in autocommit mode (``isolation_level=None``): all pending migrations run in one
    ``BEGIN IMMEDIATE`` transaction, so two processes opening a fresh bank at once cannot both migrate,
    and a failing migration leaves the previous version intact.
    """
    found = current_version(conn)
    _refuse_newer(found, where)
    if found == SCHEMA_VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        found = current_version(conn)
        _refuse_newer(found, where)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(UTC).isoformat(timespec="seconds")),
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found

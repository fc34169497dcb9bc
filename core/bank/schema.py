"""What the bank stores: the rules a phrase's fields must obey and the versioned database schema.

The field rules sit next to the tables because they are one contract: every path into the bank (editor,
import, default build) goes through ``clean_fields`` before any row is written.

Migrations are append-only: a released migration is never edited, because banks already upgraded by it
would silently differ from fresh ones. A new table or column is a new function at the end of
``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from core.text import SUPPORTED_LANGUAGES, normalize_text

# The review workflow (draft -> in_review -> approved | rejected) arrived with migration 3; only approved
# phrases are ever indexed or served.
STATUSES = ("draft", "in_review", "approved", "rejected", "retired")
ROLES = ("viewer", "editor", "reviewer", "admin")
EDITABLE = ("text", "language", "tags", "status", "source", "license", "author")
MAX_TEXT_CHARS = 1000
MAX_TAG_CHARS = 64
_ISO_CODES = (
    "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz "
    "ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii "
    "ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi "
    "mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw "
    "sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk "
    "ur uz ve vi vo wa wo xh yi yo za zh zu"
)
ISO_639_1 = frozenset(_ISO_CODES.split()) | frozenset(SUPPORTED_LANGUAGES)


class BankError(ValueError):
    """A request the bank refuses; the message says what to change."""


class SchemaError(BankError):
    """The database cannot be used by this version of the code."""


@dataclass(frozen=True)
class Phrase:
    id: int
    text: str
    language: str
    tags: tuple[str, ...]
    status: str
    source: str
    license: str
    author: str
    created: str
    updated: str
    version: int

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "tags": list(self.tags)}


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    phrase_id: int
    who: str
    at: str
    before: dict | None
    after: dict | None
    why: str


class DuplicatePhrase(BankError):
    def __init__(self, existing_id: int, text: str, language: str) -> None:
        super().__init__(
            f"phrase #{existing_id} already says this in {language!r}: {text!r}. Edit or re-approve "
            f"#{existing_id} instead of adding a copy."
        )
        self.existing_id = existing_id


class EditConflict(BankError):
    """A save based on an older version of the phrase: someone else changed it in between."""


class PhraseNotFound(BankError, KeyError):
    __str__ = BaseException.__str__  # KeyError would quote the message


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise BankError(f"{name} must be a string, got {type(value).__name__}")
    return value


def clean_text(value: object) -> str:
    text = normalize_text(_require_str("text", value))
    if not text:
        raise BankError("text is empty; write the reply or drop the row")
    if len(text) > MAX_TEXT_CHARS:
        raise BankError(f"text is {len(text)} characters long, the limit is {MAX_TEXT_CHARS}; shorten or split it")
    return text


def clean_language(value: object) -> str:
    language = _require_str("language", value).strip().lower()
    if not language:
        raise BankError("language is missing; add a language field/column or pass a default language (ru, en, uk)")
    if language not in ISO_639_1:
        raise BankError(f"unknown language {language!r}; use a two-letter ISO 639-1 code such as ru, en or uk")
    return language


def clean_status(value: object) -> str:
    status = _require_str("status", value).strip().lower()
    if status not in STATUSES:
        raise BankError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    return status


def clean_tags(value: object) -> tuple[str, ...]:
    """Lower-cased, whitespace-normalized, de-duplicated tags in their original order."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise BankError(f"tags must be a list of strings, got {type(value).__name__}")
    tags: list[str] = []
    for item in value:
        tag = normalize_text(_require_str("each tag", item)).lower()
        if "|" in tag:
            raise BankError(f"tag {tag!r} contains '|', which separates tags in CSV files; remove it")
        if len(tag) > MAX_TAG_CHARS:
            raise BankError(f"tag {tag[:20]!r}... is longer than {MAX_TAG_CHARS} characters; shorten it")
        if tag and tag not in tags:
            tags.append(tag)
    return tuple(tags)


def clean_label(name: str, value: object, *, required: bool = False) -> str:
    label = normalize_text(_require_str(name, value))
    if required and not label:
        raise BankError(f"{name} is empty; say where the phrase comes from (e.g. 'editor')")
    return label


def clean_who(value: object) -> str:
    who = normalize_text(_require_str("who", value))
    if not who:
        raise BankError("who is empty; say who makes the change (a user name)")
    return who


def clean_fields(values: Mapping[str, object]) -> dict[str, object]:
    """Canonical values for the editable fields present in ``values``; raises on the first bad one."""
    cleaners: dict[str, Callable[[object], object]] = {
        "text": clean_text,
        "language": clean_language,
        "tags": clean_tags,
        "status": clean_status,
        "source": lambda v: clean_label("source", v, required=True),
        "license": lambda v: clean_label("license", v),
        "author": lambda v: clean_label("author", v),
    }
    return {name: cleaners[name](value) for name, value in values.items()}


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


_PHRASES_V3 = """CREATE TABLE phrases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    language TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL CHECK (status IN ('draft', 'in_review', 'approved', 'rejected', 'retired')),
    source TEXT NOT NULL,
    license TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)"""


def _review_and_users(conn: sqlite3.Connection) -> None:
    """Review statuses, editor users, their sessions and an audit log of account changes.

    SQLite cannot alter a CHECK constraint, so the phrases table is rebuilt: rows go to a temporary copy
    and come back with their ids. ``history`` references ``phrases``; deferring foreign keys to COMMIT
    lets the parent rows be absent for the moment the table is recreated (the check still runs then).
    The reviewer's comment on a transition is the ``why`` of its history row, so reviews need no table.
    """
    conn.execute("PRAGMA defer_foreign_keys = ON")
    sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'phrases'").fetchone()
    conn.execute("CREATE TEMP TABLE phrases_v2 AS SELECT * FROM phrases")
    conn.execute("DROP TABLE phrases")
    conn.execute(_PHRASES_V3)
    conn.execute("INSERT INTO phrases SELECT * FROM phrases_v2")
    conn.execute("DROP TABLE phrases_v2")
    if sequence is not None:
        conn.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'phrases'", (sequence[0],))
    conn.execute("CREATE UNIQUE INDEX phrases_language_text ON phrases (language, text)")
    conn.execute("CREATE INDEX phrases_status ON phrases (status, language)")
    # The editor lists newest first under one filter: these let SQLite walk the index instead of sorting.
    for column in ("status", "language", "source"):
        conn.execute(f"CREATE INDEX phrases_{column}_id ON phrases ({column}, id)")
    conn.execute(
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'reviewer', 'admin')),
            disabled INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL
        )"""
    )
    # Mutations that are not phrase changes (accounts, roles) are recorded here, as phrase changes are in history.
    conn.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            who TEXT NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )"""
    )
    # Only a hash of the session token is stored: a copy of the database does not log anyone in.
    conn.execute(
        """CREATE TABLE sessions (
            token_sha256 TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users (name),
            csrf TEXT NOT NULL,
            created TEXT NOT NULL,
            expires TEXT NOT NULL
        )"""
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_phrases_and_history, _lm_scores, _review_and_users)
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

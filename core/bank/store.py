"""The phrase bank: replies curated by editors, kept in SQLite with a full change history.

Every change is one transaction that writes the phrase row and a history row together, so the history
always explains the current state. The history id doubles as the bank ``revision``: the retriever
reindexes only what changed since the revision it last saw.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.atomic import create_private
from core.bank.formats import Origin, PhraseRow, RowError, read_phrases, write_phrases
from core.bank.schema import (
    EDITABLE,
    MAX_TEXT_CHARS,
    STATUSES,
    BankError,
    DuplicatePhrase,
    EditConflict,
    HistoryEntry,
    Phrase,
    PhraseNotFound,
    SchemaError,
    clean_fields,
    clean_label,
    clean_language,
    clean_status,
    clean_who,
    migrate,
)
from core.text import normalize_text

# The bank's public API lives here; the data types and field rules are defined in schema.py.
__all__ = [
    "MAX_TEXT_CHARS", "STATUSES", "BankError", "DuplicatePhrase", "EditConflict", "HistoryEntry", "ImportReport",
    "Phrase", "PhraseBank", "PhraseNotFound", "PhraseRow", "RowError", "SchemaError",
]

_COLUMNS = "id, text, language, tags, status, source, license, author, created, updated, version"


@dataclass(frozen=True)
class ImportReport:
    """Outcome of an all-or-nothing import: ``applied`` is False when any row was rejected or on a dry run.

    A rejected import is reported, not raised, so the caller can show every error at once.
    """

    total: int
    accepted: int
    added_ids: tuple[int, ...]
    skipped: tuple[RowError, ...]
    errors: tuple[RowError, ...]
    applied: bool
    dry_run: bool
    revision: int

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.errors:
            return f"rejected: {len(self.errors)} bad row(s) of {self.total}; nothing was written"
        verb = "would add" if self.dry_run else "added"
        return f"{verb} {self.accepted} of {self.total} row(s), skipped {len(self.skipped)} duplicate(s)"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _phrase(row: Sequence) -> Phrase:
    return Phrase(row[0], row[1], row[2], tuple(json.loads(row[3])), *row[4:])


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ``ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json(data: dict | None) -> str | None:
    return None if data is None else json.dumps(data, ensure_ascii=False, sort_keys=True)


class PhraseBank:
    """One bank file. Each thread gets its own SQLite connection, so the server's readers never wait for
    an editor's write (WAL) and writers from other processes are waited for (busy timeout)."""

    def __init__(self, path: Path, *, timeout_s: float = 30.0) -> None:
        self.path = create_private(Path(path))  # editors' password hashes and sessions live here: 0600
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False
        try:
            migrate(self._connection(), where=str(self.path))
        except SchemaError:
            self.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            raise BankError(f"{self.path} is not a usable bank database ({exc}); restore it from a backup "
                            f"or choose another path") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise BankError(f"the bank {self.path} is closed; open a new PhraseBank")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                                   check_same_thread=False)
            with self._guard:
                self._connections.append(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        if conn.in_transaction:
            raise BankError("a bank transaction is already open in this thread; finish it before the next")
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def connect(self, *, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection inside one transaction (committed at the end, rolled back on error).

        For other core modules' own tables. Pass ``write=True`` when the block reads before it writes: a
        deferred transaction cannot wait for a concurrent writer once it has read.
        """
        return self._transaction("IMMEDIATE" if write else "DEFERRED")

    def close(self) -> None:
        with self._guard:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> PhraseBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def revision(self) -> int:
        return self._revision(self._connection())

    @staticmethod
    def _revision(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()[0])

    def _get(self, conn: sqlite3.Connection, phrase_id: int) -> Phrase:
        row = conn.execute(f"SELECT {_COLUMNS} FROM phrases WHERE id = ?", (phrase_id,)).fetchone()
        if row is None:
            raise PhraseNotFound(f"no phrase #{phrase_id} in {self.path}; check the id against the bank listing")
        return _phrase(row)

    def _refuse_duplicate(self, conn: sqlite3.Connection, text: str, language: str, exclude: int = 0) -> None:
        row = conn.execute("SELECT id FROM phrases WHERE language = ? AND text = ? AND id != ?",
                           (language, text, exclude)).fetchone()
        if row is not None:
            raise DuplicatePhrase(row[0], text, language)

    def _record(self, conn: sqlite3.Connection, phrase_id: int, who: str, at: str,
                before: Phrase | None, after: Phrase, why: str) -> None:
        conn.execute(
            "INSERT INTO history (phrase_id, who, at, before, after, why) VALUES (?, ?, ?, ?, ?, ?)",
            (phrase_id, who, at, _json(before.to_dict() if before else None), _json(after.to_dict()), why),
        )

    def _insert(self, conn: sqlite3.Connection, fields: Mapping[str, object], who: str, why: str,
                at: str) -> Phrase:
        values = [fields["text"], fields["language"], json.dumps(list(fields["tags"]), ensure_ascii=False),  # type: ignore[call-overload]
                  fields["status"], fields["source"], fields["license"], fields["author"], at, at]
        cursor = conn.execute(
            "INSERT INTO phrases (text, language, tags, status, source, license, author, created, updated, "
            "version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)", values)
        phrase = Phrase(id=int(cursor.lastrowid or 0), created=at, updated=at, version=1,
                        **{name: fields[name] for name in EDITABLE})  # type: ignore[arg-type]
        self._record(conn, phrase.id, who, at, None, phrase, why)
        return phrase

    def add(self, text: str, language: str, *, tags: Sequence[str] = (), status: str = "approved",
            source: str = "editor", license: str = "", author: str = "", who: str = "editor",
            why: str = "") -> Phrase:
        fields = clean_fields({"text": text, "language": language, "tags": tags, "status": status,
                               "source": source, "license": license, "author": author})
        who, why = clean_who(who), clean_label("why", why)
        with self._transaction() as conn:
            self._refuse_duplicate(conn, str(fields["text"]), str(fields["language"]))
            return self._insert(conn, fields, who, why, _now())

    def update(self, phrase_id: int, *, who: str, why: str = "", expected_version: int | None = None,
               **changes: object) -> Phrase:
        """Change editable fields. With ``expected_version`` (the version the editor started from) a
        save over someone else's newer change is refused with who made it and when, never lost."""
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise BankError(f"cannot change {', '.join(unknown)}; editable fields are {', '.join(EDITABLE)}")
        cleaned = clean_fields(changes)
        who, why = clean_who(who), clean_label("why", why)
        with self._transaction() as conn:
            before = self._get(conn, phrase_id)
            if expected_version is not None and before.version != expected_version:
                last = conn.execute("SELECT who, at FROM history WHERE phrase_id = ? ORDER BY id DESC LIMIT 1",
                                    (phrase_id,)).fetchone() or ("?", before.updated)
                raise EditConflict(f"phrase #{phrase_id} was changed by {last[0]} at {last[1]} (now version "
                                   f"{before.version}, you edited version {expected_version}); reload")
            changed = {name: value for name, value in cleaned.items() if getattr(before, name) != value}
            if not changed:
                return before
            after = replace(before, **changed, updated=_now(), version=before.version + 1)  # type: ignore[arg-type]
            if after.text != before.text or after.language != before.language:
                self._refuse_duplicate(conn, after.text, after.language, exclude=phrase_id)
            conn.execute(
                "UPDATE phrases SET text = ?, language = ?, tags = ?, status = ?, source = ?, license = ?, "
                "author = ?, updated = ?, version = ? WHERE id = ?",
                (after.text, after.language, json.dumps(list(after.tags), ensure_ascii=False), after.status,
                 after.source, after.license, after.author, after.updated, after.version, phrase_id),
            )
            self._record(conn, phrase_id, who, after.updated, before, after, why)
            return after

    def retire(self, phrase_id: int, *, who: str, why: str = "") -> Phrase:
        return self.update(phrase_id, who=who, why=why, status="retired")

    def get(self, phrase_id: int) -> Phrase:
        return self._get(self._connection(), phrase_id)

    def find_text(self, text: str, language: str | None = None) -> Phrase | None:
        query = f"SELECT {_COLUMNS} FROM phrases WHERE text = ?"
        params: list[object] = [normalize_text(text)]
        if language is not None:
            query += " AND language = ?"
            params.append(clean_language(language))
        row = self._connection().execute(query + " ORDER BY id LIMIT 1", params).fetchone()
        return None if row is None else _phrase(row)

    def phrases(self, *, status: str | None = None, language: str | None = None) -> list[Phrase]:
        query, params = f"SELECT {_COLUMNS} FROM phrases WHERE 1 = 1", []
        if status is not None:
            query += " AND status = ?"
            params.append(clean_status(status))
        if language is not None:
            query += " AND language = ?"
            params.append(clean_language(language))
        return [_phrase(row) for row in self._connection().execute(query + " ORDER BY id", params)]

    def search(self, *, text: str = "", language: str = "", status: str = "", source: str = "", tag: str = "",
               ids: Sequence[int] | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Phrase], int]:
        """One page of phrases matching every given filter (newest first) and the total match count.

        ``text`` is a case-insensitive substring; ``ids`` restricts to (and orders by) given ids, as a
        search by meaning returns them. All values are bound parameters, never spliced into the SQL.
        """
        if ids is not None and not ids:
            return [], 0
        where, params = ["1 = 1"], []
        for column, value in (("language", language), ("status", status), ("source", source)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if text:
            where.append("text LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(normalize_text(text))}%")
        if tag:  # the LIKE on the stored JSON is a cheap prefilter; json_each makes the match exact
            tag = normalize_text(tag).lower()
            where.append("tags LIKE ? ESCAPE '\\' AND EXISTS (SELECT 1 FROM json_each(phrases.tags) WHERE value = ?)")
            params.extend([f"%{_like_escape(json.dumps(tag, ensure_ascii=False))}%", tag])
        order = "id DESC"
        if ids is not None:
            where.append(f"id IN ({', '.join('?' * len(ids)) or 'NULL'})")
            params.extend(int(i) for i in ids)
            order = "CASE id " + " ".join(f"WHEN {int(i)} THEN {rank}" for rank, i in enumerate(ids)) + " END"
        clause = " AND ".join(where)
        with self._transaction("DEFERRED") as conn:
            total = int(conn.execute(f"SELECT COUNT(*) FROM phrases WHERE {clause}", params).fetchone()[0])
            rows = conn.execute(f"SELECT {_COLUMNS} FROM phrases WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                                [*params, max(0, int(limit)), max(0, int(offset))]).fetchall()
        return [_phrase(row) for row in rows], total

    def changed_since(self, revision: int) -> list[int]:
        rows = self._connection().execute(
            "SELECT DISTINCT phrase_id FROM history WHERE id > ? ORDER BY phrase_id", (revision,))
        return [row[0] for row in rows]

    def history(self, phrase_id: int | None = None) -> list[HistoryEntry]:
        query = "SELECT id, phrase_id, who, at, before, after, why FROM history"
        rows = self._connection().execute(
            query + (" WHERE phrase_id = ? ORDER BY id" if phrase_id is not None else " ORDER BY id"),
            () if phrase_id is None else (phrase_id,))
        return [HistoryEntry(r[0], r[1], r[2], r[3], r[4] and json.loads(r[4]), r[5] and json.loads(r[5]), r[6])
                for r in rows]

    def stats(self) -> dict:
        with self._transaction("DEFERRED") as conn:
            counts = {
                f"by_{column}": dict(conn.execute(
                    f"SELECT {column}, COUNT(*) FROM phrases GROUP BY {column} ORDER BY {column}").fetchall())
                for column in ("language", "status", "source")
            }
            total = conn.execute("SELECT COUNT(*) FROM phrases").fetchone()[0]
            return {"total": total, **counts, "revision": self._revision(conn)}

    def import_phrases(self, rows: Sequence[PhraseRow], *, who: str, why: str = "", dry_run: bool = False,
                       on_duplicate: Literal["error", "skip"] = "error",
                       parse_errors: Sequence[RowError] = ()) -> ImportReport:
        """Add all rows or none. Returns a report (never raises for bad rows); ``applied`` says which.

        ``parse_errors`` are the reader's errors for the same file: they block the import like bad rows
        and appear in the same report. ``on_duplicate="skip"`` lets overlapping bulk sources through.
        """
        if on_duplicate not in ("error", "skip"):
            raise BankError(f"on_duplicate must be 'error' or 'skip', not {on_duplicate!r}")
        who, why = clean_who(who), clean_label("why", why)
        with self._transaction("DEFERRED" if dry_run else "IMMEDIATE") as conn:
            existing = {(lang, text): pid for pid, lang, text in conn.execute("SELECT id, language, text FROM phrases")}
            accepted, skipped, errors = _validate_rows(rows, existing, on_duplicate)
            errors = sorted([*parse_errors, *errors], key=lambda e: (e.file, e.line))
            applied = not errors and not dry_run
            at = _now()
            ids = tuple(self._insert(conn, fields, who, why, at).id for fields in accepted) if applied else ()
            revision = self._revision(conn)
        return ImportReport(total=len(rows) + len(parse_errors), accepted=0 if errors else len(accepted),
                            added_ids=ids, skipped=tuple(skipped), errors=tuple(errors), applied=applied,
                            dry_run=dry_run, revision=revision)

    def import_file(self, path: Path, fmt: str | None = None, *, who: str, why: str = "",
                    defaults: Mapping[str, object] | None = None, dry_run: bool = False,
                    on_duplicate: Literal["error", "skip"] = "error") -> ImportReport:
        rows, errors = read_phrases(path, fmt, defaults)
        return self.import_phrases(rows, who=who, why=why, dry_run=dry_run, on_duplicate=on_duplicate,
                                   parse_errors=errors)

    def export(self, path: Path, fmt: str | None = None, *, status: str | None = None,
               language: str | None = None) -> int:
        """Write the selected phrases to a file (atomically); returns how many were written."""
        selected = self.phrases(status=status, language=language)
        write_phrases(path, selected, fmt)
        return len(selected)


def _validate_rows(rows: Sequence[PhraseRow], existing: Mapping[tuple[str, str], int], on_duplicate: str
                   ) -> tuple[list[dict[str, object]], list[RowError], list[RowError]]:
    accepted: list[dict[str, object]] = []
    skipped: list[RowError] = []
    errors: list[RowError] = []
    first_seen: dict[tuple[str, str], Origin] = {}
    for index, row in enumerate(rows, start=1):
        origin = row.origin if row.origin.file else Origin("<rows>", index)
        try:
            fields = clean_fields({name: getattr(row, name) for name in EDITABLE})
        except BankError as exc:
            errors.append(RowError(origin.file, origin.line, str(exc)))
            continue
        key = (str(fields["language"]), str(fields["text"]))
        if key in existing:
            reason = f"duplicate of bank phrase #{existing[key]} ({key[0]}): {key[1]!r}"
        elif key in first_seen:
            earlier = first_seen[key]
            reason = f"duplicate of {earlier.file}:{earlier.line} in the same import: {key[1]!r}"
        else:
            first_seen[key] = origin
            accepted.append(fields)
            continue
        (skipped if on_duplicate == "skip" else errors).append(RowError(origin.file, origin.line, reason))
    return accepted, skipped, errors

"""The labels database (``<REPLIQ_HOME>/labels.sqlite``) and the rules an answer must pass to get in.

One import is one transaction: every row is checked first, and a file with any bad row stores nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.atomic import create_private
from core.config import default_home
from dialog.labeling.formats import FIVE_POINT_LABELS, RawAnswer
from dialog.labeling.tasks import CHOICE_SCORES, POINTWISE, ExportInfo, LabelingError, RowProblem

_YES = {"yes", "true", "1"}
_NO = {"no", "false", "0"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS imports (
    id INTEGER PRIMARY KEY, export_id TEXT NOT NULL, source TEXT NOT NULL, source_sha256 TEXT NOT NULL,
    fmt TEXT NOT NULL, n_labels INTEGER NOT NULL, imported_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, import_id INTEGER NOT NULL REFERENCES imports(id), export_id TEXT NOT NULL,
    task_id TEXT NOT NULL, rater TEXT NOT NULL, sensible INTEGER, specific INTEGER, choice TEXT,
    submitted_at TEXT, imported_at TEXT NOT NULL, UNIQUE (export_id, task_id, rater));
CREATE INDEX IF NOT EXISTS labels_export ON labels(export_id);
"""


@dataclass(frozen=True)
class Label:
    """A validated answer. Pointwise: ``sensible``/``specific`` (specific is False when not sensible)."""

    export_id: str
    task_id: str
    rater: str
    sensible: bool | None = None
    specific: bool | None = None
    choice: str | None = None
    submitted_at: str | None = None


def default_labels_path() -> Path:
    return default_home() / "labels.sqlite"


def _binary(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).strip().lower()
        return True if text in _YES else False if text in _NO else None
    return None


def _pointwise_values(values: dict[str, Any]) -> tuple[bool | None, bool | None, str]:
    """Meena's rule: specific implies sensible. A not-sensible reply is stored as not specific; an
    answer that says "not sensible but specific" contradicts itself and is rejected."""
    if values.get("sensible") is None:
        return None, None, "missing 'sensible'"
    sensible = _binary(values["sensible"])
    if sensible is None:
        return None, None, f"'sensible' is {values['sensible']!r}; use yes/no (or true/false)"
    raw_specific = values.get("specific")
    specific = None if raw_specific is None or raw_specific == "" else _binary(raw_specific)
    if raw_specific not in (None, "") and specific is None:
        return None, None, f"'specific' is {raw_specific!r}; use yes/no (or true/false)"
    if sensible and specific is None:
        return None, None, "missing 'specific' (required when the reply is sensible)"
    if not sensible and specific:
        return None, None, "'specific' is yes but 'sensible' is no: a specific reply must be sensible (Meena)"
    return sensible, bool(specific), ""


def _choice_value(values: dict[str, Any], scale: str) -> tuple[str | None, str]:
    raw = values.get("choice")
    allowed = CHOICE_SCORES[scale]
    if raw is None:
        return None, "missing 'choice'"
    text = str(raw).strip()
    by_label = {label.lower(): alias for alias, label in FIVE_POINT_LABELS.items()} if scale == "five-point" else {
        "a is better": "a", "b is better": "b"}
    choice = text.lower() if text.lower() in allowed else by_label.get(text.lower())
    if choice is None:
        return None, f"'choice' is {raw!r}; the {scale} scale allows {', '.join(allowed)}"
    return choice, ""


def _golden_problem(answer: RawAnswer, export: ExportInfo) -> str:
    """Toloka exports echo GOLDEN columns; they must be this export's honeypots with its answers."""
    if not answer.golden:
        return ""
    task = export.tasks[answer.task_id]
    if not task.honeypot or not task.golden:
        return f"the answer carries golden values but task {answer.task_id} is not a honeypot in this export"
    if export.mode == POINTWISE:
        expected: dict[str, Any] = {"sensible": task.golden["sensible"],
                                    "specific": task.golden["specific"] if task.golden["sensible"] else None}
        given = {k: _binary(v) for k, v in answer.golden.items()}
    else:
        expected = {"choice": task.golden["better"]}
        scores = {**CHOICE_SCORES["five-point"], **CHOICE_SCORES["binary"]}
        given = {k: {1: "a", -1: "b"}.get(scores.get(str(v).strip().lower(), 0)) for k, v in answer.golden.items()}
    for key, value in given.items():
        if expected.get(key) is None or expected[key] != value:
            return (f"golden {key}={answer.golden[key]!r} does not match this export's honeypot "
                    f"(answers from another export, or an edited golden set?)")
    return ""


def validate_answers(answers: Sequence[RawAnswer], export: ExportInfo, source: str,
                     already: set[tuple[str, str]]) -> tuple[list[Label], list[RowProblem]]:
    """Check every answer against the export; ``already`` holds (task, rater) pairs stored earlier."""
    labels: list[Label] = []
    problems: list[RowProblem] = []
    seen: dict[tuple[str, str], str] = {}
    for answer in answers:
        reason = ""
        task_id, rater = answer.task_id, answer.rater
        if not isinstance(task_id, str) or not task_id:
            reason = "missing 'task_id'"
        elif task_id not in export.tasks:
            reason = f"unknown task id {task_id!r}: not in export {export.export_id} (answers for another export?)"
        elif rater is None or str(rater).strip() == "":
            reason = "missing rater id"
        if not reason:
            rater = str(rater).strip()
            reason = _golden_problem(answer, export)
            if (task_id, rater) in seen:
                reason = f"duplicate: rater {rater!r} already answered task {task_id} at {seen[(task_id, rater)]}"
            elif (task_id, rater) in already:
                reason = f"rater {rater!r}'s answer to task {task_id} is already imported (same file twice?)"
        if not reason and export.mode == POINTWISE:
            sensible, specific, reason = _pointwise_values(answer.values)
            label = Label(export.export_id, task_id, rater, sensible, specific, None, answer.submitted_at)
        elif not reason:
            choice, reason = _choice_value(answer.values, export.scale or "five-point")
            label = Label(export.export_id, task_id, rater, None, None, choice, answer.submitted_at)
        if reason:
            problems.append(RowProblem(source, answer.where, reason))
            continue
        seen[(task_id, rater)] = answer.where
        labels.append(label)
    return labels, problems


class LabelStore:
    """SQLite in WAL mode, so a report can read while an import writes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = create_private(Path(path) if path is not None else default_labels_path())  # raters' ids: 0600
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answered(self, export_id: str) -> set[tuple[str, str]]:
        rows = self._db.execute("SELECT task_id, rater FROM labels WHERE export_id = ?", (export_id,))
        return {(t, r) for t, r in rows}

    def add(self, labels: Sequence[Label], export_id: str, source: str, source_sha256: str, fmt: str) -> int:
        """Store a whole validated file or nothing; returns the import id."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO imports (export_id, source, source_sha256, fmt, n_labels, imported_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (export_id, source, source_sha256, fmt, len(labels), now))
            import_id = int(cursor.lastrowid or 0)
            try:
                db.executemany(
                    "INSERT INTO labels (import_id, export_id, task_id, rater, sensible, specific, choice, "
                    "submitted_at, imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(import_id, lb.export_id, lb.task_id, lb.rater, lb.sensible, lb.specific, lb.choice,
                      lb.submitted_at, now) for lb in labels])
            except sqlite3.IntegrityError as exc:
                raise LabelingError(f"another import stored some of these answers meanwhile ({exc}); "
                                    "nothing was stored, run the import again to see which rows") from exc
        return import_id

    def labels(self, export_id: str) -> list[Label]:
        rows = self._db.execute(
            "SELECT export_id, task_id, rater, sensible, specific, choice, submitted_at FROM labels "
            "WHERE export_id = ? ORDER BY id", (export_id,))
        return [Label(e, t, r, None if s is None else bool(s), None if p is None else bool(p), c, at)
                for e, t, r, s, p, c, at in rows]

    def count(self, export_id: str | None = None) -> int:
        if export_id is None:
            return int(self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM labels WHERE export_id = ?", (export_id,)).fetchone()[0])

"""User feedback on served replies (``repliq.v1.Chat/Feedback``) and the serving loop that logs decisions.

Feedback is keyed by the request id of a Respond. The ids served recently are kept in memory (so
feedback that arrives right after the reply is accepted even before the decision line is written) and
in the ``served`` table of ``<home>/feedback.sqlite`` (so ids survive a restart); an id older than
``[logging] feedback_ttl_hours`` is expired. One row per (request id, kind): the same signal again is
a no-op, a different one replaces it (a user may change a thumb).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.atomic import create_private
from core.config import Settings
from core.types import Context, Reranker
from dialog.serving.decision_log import DecisionLog
from dialog.serving.exploration import Explorer

FEEDBACK_DB = "feedback.sqlite"
MAX_FLAG_CHARS = 500
THUMBS = {1: "up", 2: "down"}
_log = logging.getLogger("repliq.server")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS served (request_id TEXT PRIMARY KEY, served_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (request_id, kind));
"""


class FeedbackError(Exception):
    """A refused Feedback call; ``code`` is the gRPC status name (NOT_FOUND, INVALID_ARGUMENT, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FeedbackStore:
    """SQLite, one connection shared by the gRPC threads behind a lock; every write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = create_private(Path(path))  # owner-only, like every workspace database
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add_served(self, rows: Iterable[tuple[str, float]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO served VALUES (?, ?)", list(rows))
            self._db.execute("COMMIT")

    def served_at(self, request_id: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT served_at FROM served WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else float(row[0])

    def put(self, request_id: str, kind: str, value: str) -> str:
        """Store one signal: "new", "duplicate" (same value already there) or "replaced"."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM feedback WHERE request_id = ? AND kind = ?",
                                       (request_id, kind)).fetchone()
                if row is not None and row[0] == value:
                    outcome = "duplicate"
                else:
                    self._db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?)",
                                     (request_id, kind, value, time.time()))
                    outcome = "new" if row is None else "replaced"
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcome

    def all(self) -> dict[str, dict[str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT request_id, kind, value FROM feedback").fetchall()
        out: dict[str, dict[str, str]] = {}
        for request_id, kind, value in rows:
            out.setdefault(request_id, {})[kind] = value
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def feedback_reward(signals: Mapping[str, str]) -> float | None:
    """One reward in [0, 1] from a request's signals: the rating if any, else the thumb; a flag alone is 0."""
    if "rating" in signals:
        return (int(signals["rating"]) - 1) / 4.0
    if "thumb" in signals:
        return 1.0 if signals["thumb"] == "up" else 0.0
    if "flag" in signals:
        return 0.0
    return None


def feedback_rewards(path: Path) -> dict[str, float]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no feedback database at {path}; serve with [logging] decisions = true and send "
                                "Feedback calls, or pick another --reward")
    store = FeedbackStore(path)
    try:
        rewards = {rid: feedback_reward(signals) for rid, signals in store.all().items()}
    finally:
        store.close()
    return {rid: r for rid, r in rewards.items() if r is not None}


def parse_signal(request: object) -> tuple[str, str]:
    """(kind, value) of a FeedbackRequest, or FeedbackError(INVALID_ARGUMENT) naming the bad field."""
    which = request.WhichOneof("signal")  # type: ignore[attr-defined]
    if which is None:
        raise FeedbackError("INVALID_ARGUMENT", "set one of thumb, rating or flag")
    if which == "thumb":
        if request.thumb not in THUMBS:  # type: ignore[attr-defined]
            raise FeedbackError("INVALID_ARGUMENT", "thumb must be THUMB_UP or THUMB_DOWN")
        return "thumb", THUMBS[request.thumb]  # type: ignore[attr-defined]
    if which == "rating":
        if not 1 <= request.rating <= 5:  # type: ignore[attr-defined]
            raise FeedbackError("INVALID_ARGUMENT", f"rating must be 1..5, got {request.rating}")  # type: ignore
        return "rating", str(request.rating)  # type: ignore[attr-defined]
    flag = request.flag.strip()  # type: ignore[attr-defined]
    if not flag or len(flag) > MAX_FLAG_CHARS:
        raise FeedbackError("INVALID_ARGUMENT", f"flag must be 1..{MAX_FLAG_CHARS} characters of text")
    return "flag", flag


@dataclass
class Outcome:
    request_id: str
    duplicate: bool
    replaced: bool


class ServingLoop:
    """What Respond and Feedback call when decisions are logged: explorer, decision log, feedback store."""

    def __init__(self, log: DecisionLog, store: FeedbackStore, explorer: Explorer, ttl_s: float,
                 max_recent: int = 200_000) -> None:
        self.log, self.store, self.explorer, self.ttl_s = log, store, explorer, ttl_s
        self.max_recent = max_recent
        self._recent: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, request_id: str, session_id: str, context: Context, language: str, decision: object,
               versions: Mapping[str, str]) -> None:
        """Called by Respond after the reply is built; never blocks on I/O."""
        with self._lock:
            self._recent[request_id] = (time.time(), self.log.session_hash(session_id))
            if len(self._recent) > self.max_recent:
                self._recent.popitem(last=False)
        self.log.record(request_id, session_id, context, language, decision, versions)  # type: ignore[arg-type]

    def feedback(self, request: object) -> Outcome:
        request_id = request.request_id.strip()  # type: ignore[attr-defined]
        if not request_id:
            raise FeedbackError("INVALID_ARGUMENT", "request_id is empty: send the request_id Respond returned")
        kind, value = parse_signal(request)
        with self._lock:
            recent = self._recent.get(request_id)
        served_at = recent[0] if recent is not None else self.store.served_at(request_id)
        if served_at is None:
            raise FeedbackError("NOT_FOUND", f"request {request_id!r} is unknown to this server (never served, "
                                "or served before decision logging was on)")
        if time.time() - served_at > self.ttl_s:
            raise FeedbackError("NOT_FOUND", f"request {request_id!r} has expired: feedback is accepted for "
                                f"{self.ttl_s / 3600:g} hours after the reply")
        session = request.session_id  # type: ignore[attr-defined]
        if recent is not None and session and recent[1] and self.log.session_hash(session) != recent[1]:
            raise FeedbackError("INVALID_ARGUMENT", f"session_id does not match the session of request {request_id!r}")
        if recent is not None:  # make sure the id outlives a restart even if its decision line was dropped
            self.store.add_served([(request_id, served_at)])
        outcome = self.store.put(request_id, kind, value)
        return Outcome(request_id, outcome == "duplicate", outcome == "replaced")

    def close(self) -> None:
        self.log.close()
        self.store.close()


def feature_schema(reranker: Reranker | None) -> dict[str, object]:
    """What the logged features mean: the serving blender's feature names, annotators and resources."""
    manifest = getattr(reranker, "manifest", None)
    if manifest is None:
        return {"ranker": "bank-first"}
    return {"feature_names": list(manifest.feature_names), "ranker": reranker.version,  # type: ignore[union-attr]
            "annotators": [{"name": a["name"], "version": a["version"]} for a in manifest.annotators],
            "resources": dict(manifest.resources)}


def build_serving_loop(settings: Settings, reranker: Reranker | None) -> ServingLoop | None:
    """The loop when ``[logging] decisions`` is on, else None (serving then is exactly as before)."""
    config = settings.logging
    if not config.decisions:
        return None
    explorer = Explorer.from_config(settings.exploration)
    store = FeedbackStore(settings.home / FEEDBACK_DB)
    directory = Path(config.dir).expanduser() if config.dir else settings.home / "decisions"
    log = DecisionLog(directory, log_user_text=config.log_user_text, queue_size=config.queue_size,
                      rotate_bytes=int(config.rotate_mb * (1 << 20)), retention_days=config.retention_days,
                      feature_schema=feature_schema(reranker), on_written=store.add_served)
    return ServingLoop(log, store, explorer, config.feedback_ttl_hours * 3600.0)


def feedback_rpc(loop: ServingLoop | None, request: object, context: object) -> object:
    """The Feedback RPC body: refusals become gRPC statuses with a message saying what to do."""
    import grpc

    from dialog.serving.logs import log_event
    from repliq.v1 import chat_pb2

    fields = {"request_id": getattr(request, "request_id", ""), "rpc": "Feedback"}
    if loop is None:
        log_event(_log, "rejected", logging.WARNING, **fields, code="FAILED_PRECONDITION")
        context.abort(grpc.StatusCode.FAILED_PRECONDITION,  # type: ignore[attr-defined]
                      "this server does not log decisions, so it cannot take feedback; set [logging] decisions = "
                      "true and restart it")
    try:
        outcome = loop.feedback(request)  # type: ignore[union-attr]
    except FeedbackError as exc:
        log_event(_log, "rejected", logging.WARNING, **fields, code=exc.code, error=str(exc))
        context.abort(getattr(grpc.StatusCode, exc.code), str(exc))  # type: ignore[attr-defined]
    log_event(_log, "ok", **fields, code="OK", duplicate=outcome.duplicate, replaced=outcome.replaced)
    return chat_pb2.FeedbackResponse(request_id=outcome.request_id, duplicate=outcome.duplicate,
                                     replaced=outcome.replaced)

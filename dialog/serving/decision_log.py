"""The decision log: one JSON line per served Respond, for off-policy evaluation and labeling from traffic.

A request thread only puts a small tuple on a bounded queue (``put_nowait``): when the queue is full
the decision is dropped and counted, so logging can never slow or fail a request. One writer thread
serializes, writes and rotates files by size; files older than the retention are deleted at rotation and
on a clock (``prune_every_s``), so a quiet server that never fills a file still forgets old traffic.
A write error (a full disk) stops decision logging with one error log line and the ``failed`` metric;
requests go on being served.

Line schema ``repliq.decision/1`` (docs/offpolicy.md): request_id, time, ts, session (salted hash),
language, context (turns; only with ``log_user_text``), context_hash, policy, feature_names,
feature_schema (annotators and resources of the serving blender), candidates (text, source, language,
phrase_id, score, features, propensity), chosen (index into candidates), versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client import Counter, Gauge

from core.atomic import create_private
from core.types import Context
from dialog.serving.exploration import Decision
from dialog.serving.logs import log_event
from dialog.serving.metrics import REGISTRY
from rl.decision_records import FILE_PREFIX, SCHEMA

SALT_NAME = "session-salt"
log = logging.getLogger("repliq.decisions")

# In the serving metrics registry (dialog/serving/metrics.py), so they are scraped with the others.
WRITTEN = Counter("repliq_decisions_written", "decision log lines written", registry=REGISTRY)
DROPPED = Counter("repliq_decisions_dropped", "decisions not logged", ["reason"], registry=REGISTRY)
FAILED = Gauge("repliq_decision_log_failed", "1 once a write error stopped decision logging", registry=REGISTRY)

_STOP = object()
ServedHook = Callable[[list[tuple[str, float]]], None]


def context_hash(context: Context) -> str:
    payload = json.dumps([[t.speaker, t.text] for t in context.turns], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _num(value: float) -> float | None:
    """JSON has no NaN: a missing feature is null."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.7g}")


class DecisionLog:
    def __init__(self, directory: Path, *, log_user_text: bool = False, queue_size: int = 2048,
                 rotate_bytes: int = 64 << 20, retention_days: float = 30.0,
                 feature_schema: Mapping[str, Any] | None = None, on_written: ServedHook | None = None,
                 prune_every_s: float = 3600.0) -> None:
        if queue_size < 1 or rotate_bytes < 1024:
            raise ValueError(f"[logging] needs queue_size >= 1 and rotate_mb >= 0.001 (got {queue_size}, "
                             f"{rotate_bytes} bytes)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_user_text = log_user_text
        self.rotate_bytes = rotate_bytes
        self.retention_s = retention_days * 86400.0
        # Retention also runs on a clock: a quiet server may never fill a file, and so never rotate.
        self.prune_every_s = prune_every_s
        self.feature_schema = dict(feature_schema or {})
        self.on_written = on_written
        self.salt = self._salt()
        self.counts = {"written": 0, "dropped_full": 0, "dropped_failed": 0, "skipped_empty": 0, "errors": 0}
        self.failed: str | None = None
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._file: IO[str] | None = None
        self._path: Path | None = None
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def _salt(self) -> bytes:
        """A per-deployment secret, so session hashes join across restarts but cannot be reversed by guessing."""
        path = self.directory / SALT_NAME
        if not path.exists():
            scratch = create_private(path.with_suffix(f".{os.getpid()}.tmp"))  # a secret: 0600
            scratch.write_text(secrets.token_hex(16), encoding="utf-8")
            os.replace(scratch, path)
        return path.read_text(encoding="utf-8").strip().encode("utf-8")

    def session_hash(self, session_id: str) -> str:
        return hashlib.sha256(self.salt + session_id.encode("utf-8")).hexdigest()[:16] if session_id else ""

    # ---- request thread ------------------------------------------------------------------------

    def record(self, request_id: str, session_id: str, context: Context, language: str,
               decision: Decision | None, versions: Mapping[str, str]) -> bool:
        """Queue one decision without blocking; False when it was dropped (and counted)."""
        reason = "skipped_empty" if decision is None else "dropped_failed" if self.failed is not None else ""
        if not reason:
            try:
                self._queue.put_nowait((request_id, time.time(), session_id, context, language, decision, versions))
                return True
            except queue.Full:
                reason = "dropped_full"
        with self._count_lock:
            self.counts[reason] += 1
        if reason != "skipped_empty":
            DROPPED.labels("queue_full" if reason == "dropped_full" else "failed").inc()
        return False

    # ---- writer thread -------------------------------------------------------------------------

    def to_json(self, item: tuple) -> dict[str, Any]:
        request_id, ts, session_id, context, language, decision, versions = item
        names = list(self.feature_schema.get("feature_names") or
                     next((list(c.features) for c in decision.pool if c.features), []))
        candidates = [
            {"text": c.text, "source": c.source, "language": c.language, "phrase_id": c.phrase_id,
             "score": _num(c.score), "features": [_num(c.features.get(n, math.nan)) for n in names] if c.features
             else [], "propensity": p}
            for c, p in zip(decision.pool, decision.propensities, strict=True)
        ]
        line: dict[str, Any] = {
            "schema": SCHEMA, "request_id": request_id,
            "time": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds"), "ts": ts,
            "session": self.session_hash(session_id), "language": language,
            "context_hash": context_hash(context), "policy": decision.policy, "feature_names": names,
            "feature_schema": {k: v for k, v in self.feature_schema.items() if k != "feature_names"},
            "candidates": candidates, "chosen": decision.chosen, "versions": dict(versions),
        }
        if self.log_user_text:
            line["context"] = [{"speaker": t.speaker, "text": t.text} for t in context.turns]
        return line

    def _run(self) -> None:
        try:
            self._prune()
        except OSError as exc:
            log_event(log, "cannot prune old decision logs", logging.WARNING, error=str(exc))
        next_prune = time.monotonic() + self.prune_every_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.01, next_prune - time.monotonic()))
            except queue.Empty:
                item = None
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_every_s
                try:
                    self._prune()
                except OSError as exc:
                    log_event(log, "cannot prune old decision logs", logging.WARNING, error=str(exc))
            if item is None:
                continue
            batch = [item]
            while item is not _STOP and len(batch) < 256:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            stop = batch[-1] is _STOP
            self._write([i for i in batch if i is not _STOP])
            if stop:
                self._close_file()
                return

    def _write(self, batch: list[tuple]) -> None:
        if not batch:
            return
        if self.failed is not None:
            self.counts["dropped_failed"] += len(batch)
            DROPPED.labels("failed").inc(len(batch))
            return
        lines, served = [], []
        for item in batch:
            try:
                lines.append(json.dumps(self.to_json(item), ensure_ascii=False, allow_nan=False) + "\n")
                served.append((item[0], item[1]))
            except (TypeError, ValueError) as exc:
                self.counts["errors"] += 1
                log_event(log, "decision not serializable", logging.ERROR, request_id=item[0], error=str(exc))
        try:
            for text in lines:
                handle = self._current()
                handle.write(text)
                self._size += len(text.encode("utf-8"))
            if self._file is not None:
                self._file.flush()
        except OSError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            FAILED.set(1)
            self.counts["dropped_failed"] += len(lines)
            DROPPED.labels("failed").inc(len(lines))
            log_event(log, "decision logging stopped: cannot write; requests are still served", logging.ERROR,
                      path=str(self._path), error=self.failed, hint="free disk space, then restart the server")
            self._close_file()
            return
        self.counts["written"] += len(lines)
        WRITTEN.inc(len(lines))
        if self.on_written is not None and served:
            try:
                self.on_written(served)
            except Exception as exc:  # the feedback index is best effort; the log line is already safe
                log_event(log, "feedback index update failed", logging.WARNING, error=repr(exc))

    def _current(self) -> IO[str]:
        if self._file is None or self._size >= self.rotate_bytes:
            self._close_file()
            self._prune()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            self._path = self.directory / f"{FILE_PREFIX}{stamp}-{os.getpid()}.jsonl"
            create_private(self._path)  # may hold user text (log_user_text): owner-only
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across batches)
            self._size = self._path.stat().st_size
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _prune(self) -> None:
        if self.retention_s <= 0:
            return
        cutoff = time.time() - self.retention_s
        for path in self.directory.glob(f"{FILE_PREFIX}*.jsonl"):
            try:  # a file another process (or an operator) removed meanwhile is not a write failure
                old = path != self._path and path.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue
            if old:
                path.unlink(missing_ok=True)
                log_event(log, "deleted old decision log", path=str(path))

    # ---- lifecycle -----------------------------------------------------------------------------

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{FILE_PREFIX}*.jsonl"))

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "queued": self._queue.qsize(), "failed": self.failed}

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log_event(log, "decision log queue still full at shutdown; some decisions are lost", logging.WARNING)
            return
        self._thread.join(timeout_s)


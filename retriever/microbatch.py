"""Micro-batching: many threads' small encode calls become one model call.

A transformer on CPU encodes 32 short texts in little more time than 1, so under concurrent load
gathering requests for a couple of milliseconds raises throughput a lot and costs each request at
most ``max_wait_ms`` of extra latency.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BatchFn = Callable[[list[str]], np.ndarray]
# (texts in the batch, requests in the batch, requests still queued): for metrics.
BatchObserver = Callable[[int, int, int], None]

# The absolute time.monotonic() by which the current request must be answered. A server sets it per
# request, so an encode call deep inside a ranker (which knows nothing of deadlines) still carries it.
request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)


@dataclass
class _Request:
    texts: list[str]
    arrived: float
    deadline: float | None = None
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcherClosed(RuntimeError):
    """``submit`` after ``close``: the service is shutting down."""


class DeadlineExpired(TimeoutError):
    """The request's deadline passed before its work started; the work was dropped, not done late."""


class MicroBatcher:
    """Thread-safe front for ``fn``: ``submit`` blocks until this caller's rows are ready.

    A worker thread waits from the first pending request until ``max_batch`` texts are queued or
    ``max_wait_ms`` has passed, then calls ``fn`` once for all of them. A request larger than
    ``max_batch`` is sent alone, never split. If ``fn`` raises, every caller in that batch gets the
    exception. ``close`` finishes everything already submitted before returning.
    """

    def __init__(self, fn: BatchFn, max_batch: int = 64, max_wait_ms: float = 2.0,
                 name: str = "microbatcher", on_batch: BatchObserver | None = None) -> None:
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: deque[_Request] = deque()
        self._pending_texts = 0
        self._cond = threading.Condition()
        self._closed = False
        self.calls = 0
        self.texts_seen = 0
        self.expired = 0
        self._on_batch = on_batch
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        """Requests waiting for the next model call."""
        return len(self._pending)

    def submit(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        """This caller's rows. A ``deadline`` (absolute ``time.monotonic()``; default: the
        ``request_deadline`` of the calling context) that passes while the texts wait in the queue
        drops them before encoding with :class:`DeadlineExpired`."""
        if isinstance(texts, str):
            raise TypeError("submit a list of texts, not a single string")
        deadline = request_deadline.get() if deadline is None else deadline
        if deadline is not None and time.monotonic() >= deadline:
            with self._cond:
                self.expired += 1
            raise DeadlineExpired("the deadline passed before encoding started")
        request = _Request(list(texts), time.monotonic(), deadline)
        with self._cond:
            if self._closed:
                raise MicroBatcherClosed("the micro-batcher is closed; no more requests are accepted")
            self._pending.append(request)
            self._pending_texts += len(request.texts)
            self._cond.notify_all()
        return request.future.result()

    def close(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._process(batch)

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_texts < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._pending.popleft()]
            size = len(batch[0].texts)
            while self._pending and size + len(self._pending[0].texts) <= self.max_batch:
                request = self._pending.popleft()
                batch.append(request)
                size += len(request.texts)
            self._pending_texts -= size
            return batch

    def _process(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        late = [r for r in batch if r.deadline is not None and now >= r.deadline]
        for request in late:
            request.future.set_exception(DeadlineExpired("the deadline passed while waiting for the encoder"))
        batch = [r for r in batch if r.deadline is None or now < r.deadline]
        self.expired += len(late)
        if not batch:
            return
        texts = [text for request in batch for text in request.texts]
        if self._on_batch is not None:
            with contextlib.suppress(Exception):  # an observer must never stop the encoder
                self._on_batch(len(texts), len(batch), len(self._pending))
        self.calls += 1
        self.texts_seen += len(texts)
        try:
            rows = np.asarray(self._fn(texts))
            if len(rows) != len(texts):
                raise RuntimeError(f"batch function returned {len(rows)} rows for {len(texts)} texts")
        except BaseException as exc:  # every waiting caller must be released, whatever happened
            for request in batch:
                request.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for request in batch:
            request.future.set_result(rows[start:start + len(request.texts)])
            start += len(request.texts)


class BatchedQueries:
    """An encoder whose query side goes through a :class:`MicroBatcher` (when given one).

    Passages (a generated reply, rarely anything else while serving: bank vectors come from the
    index) are encoded directly. Either way a call whose ``request_deadline`` has passed is dropped
    before the model runs.
    """

    def __init__(self, encoder: Any, batcher: MicroBatcher | None) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.identity: str | None = getattr(encoder, "identity", None)
        self.manifest = getattr(encoder, "manifest", None)
        self.dim: int = int(getattr(encoder, "dim", 1))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if self.batcher is not None:
            return self.batcher.submit(list(texts))
        _check_deadline()
        return self.encoder.encode_queries(texts)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        _check_deadline()
        return self.encoder.encode_passages(texts)


def _check_deadline() -> None:
    deadline = request_deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExpired("the deadline passed before encoding started")

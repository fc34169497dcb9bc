"""One encoder call per request: every query window a request needs is encoded together, up front.

The retriever encodes the context window, the blender's turn features the last turn and the last
exchange, the specificity proxy its own window. Called one after another they cost one model call each,
and under load each waits for its own micro-batch. :class:`RequestEncoder` is the encoder all of them
are given: :meth:`RequestEncoder.scope` encodes the request's planned windows in one call (through the
query cache, whose hits are not encoded at all, and the micro-batcher), and inside the scope every
``encode_queries`` for those texts is a lookup. A window nobody planned for still works; it is counted
(``repliq_unplanned_query_encodings``) so that a new feature cannot quietly add a model call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from core.types import Context
from dialog.serving import metrics
from retriever.encoder_cache import CachingEncoder
from retriever.microbatch import DeadlineExpired, request_deadline

log = logging.getLogger("repliq.server")
_pinned: ContextVar[dict[str, np.ndarray] | None] = ContextVar("pinned_query_vectors", default=None)


class RequestEncoder:
    """The serving encoder: planned query windows encoded once per request; passages through the cache
    (bank phrases from the index, so only generated replies are ever encoded)."""

    def __init__(self, cache: CachingEncoder, windows: Iterable[int]) -> None:
        self.cache = cache
        self.encoder = cache  # the wrapper chain walked by e.g. retriever.adapter.adapter_identity
        self.identity = cache.identity
        self.manifest = cache.manifest
        self.dim = cache.dim
        self.windows = tuple(sorted(set(windows)))
        self._lock = threading.Lock()
        self.unplanned = 0

    def add_windows(self, windows: Iterable[int]) -> None:
        self.windows = tuple(sorted(set(self.windows) | set(windows)))

    def planned_texts(self, context: Context) -> list[str]:
        texts = (context.as_query_text(n) for n in self.windows)
        return list(dict.fromkeys(t for t in texts if t.strip()))

    @contextmanager
    def scope(self, context: Context, deadline: float) -> Iterator[None]:
        """Encode the request's windows in one call and serve them from memory until the scope ends.

        Raises :class:`DeadlineExpired` instead of encoding when the deadline has already passed.
        """
        deadline_token = request_deadline.set(deadline)
        try:
            if time.monotonic() >= deadline:
                metrics.EXPIRED.labels("encode").inc()
                raise DeadlineExpired("the deadline passed before encoding started")
            texts = self.planned_texts(context)
            with metrics.stage("encode"):
                vectors = self.cache.encode_queries(texts) if texts else np.zeros((0, self.dim), np.float32)
            token = _pinned.set(dict(zip(texts, vectors, strict=True)))
            try:
                yield
            finally:
                _pinned.reset(token)
        finally:
            request_deadline.reset(deadline_token)

    def encode_queries(self, texts: Sequence[str], *args: object, **kwargs: object) -> np.ndarray:
        pinned = _pinned.get()
        if pinned is not None:
            if all(t in pinned for t in texts):
                return np.stack([pinned[t] for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)
            with self._lock:
                self.unplanned += 1
                first = self.unplanned == 1
            if first:
                log.warning("a query window outside the request's plan was encoded separately; add its window "
                            "to RequestEncoder.windows (dialog/serving/assembly.py)")
        return self.cache.encode_queries(texts)

    def encode_passages(self, texts: Sequence[str], *args: object, **kwargs: object) -> np.ndarray:
        return self.cache.encode_passages(texts)

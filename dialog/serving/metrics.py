"""Prometheus metrics of the server, exposed on their own HTTP port (`repliq serve --metrics-port`).

One process serves one pipeline, so the metrics live in one registry of this module (not the client
library's global one, which also carries process and platform collectors that a test cannot reset).
Rates and ratios (cache hit rate, requests/s) are left to PromQL over the counters; the gauges say what
is happening now (queue depth).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 5.0,
                    10.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 6.0)

REQUEST_SECONDS = Histogram(
    "repliq_request_seconds", "Wall time of an RPC on the server, by method and final status code.",
    ("rpc", "code"), buckets=_LATENCY_BUCKETS, registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "repliq_stage_seconds", "Wall time of one pipeline stage of one request "
    "(encode, search, features, blender, generation).", ("stage",), buckets=_STAGE_BUCKETS, registry=REGISTRY)
BATCH_TEXTS = Histogram(
    "repliq_microbatch_texts", "Texts per encoder call of the micro-batcher.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128), registry=REGISTRY)
BATCH_REQUESTS = Histogram(
    "repliq_microbatch_requests", "Requests sharing one encoder call of the micro-batcher.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "repliq_queue_depth", "Admitted requests waiting for a worker slot.", registry=REGISTRY)
IN_FLIGHT = Gauge(
    "repliq_requests_running", "Requests running the pipeline now.", registry=REGISTRY)
SHED = Counter(
    "repliq_shed_total", "Requests refused with RESOURCE_EXHAUSTED because the queue was full.", registry=REGISTRY)
EXPIRED = Counter(
    "repliq_deadline_dropped_total", "Requests whose deadline passed before a stage started; the stage's work "
    "was not done.", ("stage",), registry=REGISTRY)


class QueryCacheStats(Protocol):
    query_lookups: int
    query_hits: int


class _CacheCollector(Collector):
    """Reads the serving encoder cache's counters at scrape time (no work on the request path)."""

    def __init__(self) -> None:
        self.cache: QueryCacheStats | None = None
        self.unplanned: Any = None

    def collect(self) -> Iterator[Any]:
        cache = self.cache
        lookups = cache.query_lookups if cache is not None else 0
        hits = cache.query_hits if cache is not None else 0
        yield CounterMetricFamily("repliq_query_cache_lookups", "Distinct query windows looked up in the "
                                  "encoder's query cache.", value=lookups)
        yield CounterMetricFamily("repliq_query_cache_hits", "Query windows found in the cache (frequent "
                                  "openers), so not encoded.", value=hits)
        yield GaugeMetricFamily("repliq_query_cache_hit_ratio", "Hits over lookups since start.",
                                value=hits / lookups if lookups else 0.0)
        unplanned = self.unplanned() if self.unplanned is not None else 0
        yield CounterMetricFamily("repliq_unplanned_query_encodings", "Query encodings a component asked for "
                                  "outside its request's one batched call (should stay 0).", value=unplanned)


_CACHE = _CacheCollector()
REGISTRY.register(_CACHE)


def bind_cache(cache: QueryCacheStats | None, unplanned: Any = None) -> None:
    """Report this cache's counters (the last pipeline built in the process wins)."""
    _CACHE.cache = cache
    _CACHE.unplanned = unplanned


def observe_batch(texts: int, requests: int, queued: int) -> None:
    """``MicroBatcher(on_batch=...)``: one encoder call's size."""
    BATCH_TEXTS.observe(texts)
    BATCH_REQUESTS.observe(requests)


@contextmanager
def stage(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


def timed_method(obj: object, method: str, name: str) -> None:
    """Time every call of ``obj.method`` as stage ``name`` (the blender's features and scoring, which its
    own ``rerank`` calls one after the other)."""
    inner = getattr(obj, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stage(name):
            return inner(*args, **kwargs)

    setattr(obj, method, wrapper)


class MetricsServer:
    """The HTTP endpoint; ``port`` is the bound one (0 asks the OS for a free port)."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


_lock = threading.Lock()


def start_metrics(host: str, port: int) -> MetricsServer:
    try:
        with _lock:
            return MetricsServer(host, port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port} ({exc}); pick another --metrics-port") from exc

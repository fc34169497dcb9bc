"""Admission control: a bounded number of requests run, a bounded number wait, the rest are refused at once.

Without a bound, a server past its capacity queues every request; latency then grows without limit and
throughput falls (every queued request still costs memory and context switches, and most of them
time out on the client before they are answered). Refusing with RESOURCE_EXHAUSTED when the queue is
full takes microseconds, so a client or load balancer can retry elsewhere, and the requests that were
admitted keep their latency.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from dialog.serving import metrics
from retriever.microbatch import DeadlineExpired

Handler = Callable[..., Any]


class Overloaded(RuntimeError):
    """Maps to RESOURCE_EXHAUSTED: the queue is full; retry later or elsewhere."""


class Admission:
    """At most ``running`` requests inside, at most ``waiting`` more queued for a slot.

    A queued request waits no longer than its own deadline (then :class:`DeadlineExpired`: nobody is
    waiting for the answer any more). With ``max_wait_s``, a request is also refused on arrival when the
    expected wait (requests ahead x the recent mean service time / slots) exceeds it: a count bound alone
    lets latency grow when the machine slows down (other jobs on a shared host), and refusing at arrival
    is still immediate.
    """

    def __init__(self, running: int, waiting: int, max_wait_s: float = 0.0) -> None:
        if running < 1:
            raise ValueError(f"server max_workers must be at least 1, got {running}")
        if waiting < 0:
            raise ValueError(f"server max_queue must not be negative, got {waiting}")
        self.max_running = running
        self.max_waiting = waiting
        self.max_wait_s = max_wait_s
        self.running = 0
        self.waiting = 0
        # Exponentially weighted mean seconds a request holds its slot.
        self.service_s = 0.0
        self._cond = threading.Condition()

    def expected_wait_s(self) -> float:
        return (self.waiting + 1) * self.service_s / self.max_running

    @contextmanager
    def slot(self, deadline: float) -> Iterator[None]:
        self._enter(deadline)
        entered = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                held = time.monotonic() - entered
                self.service_s = held if self.service_s == 0 else 0.9 * self.service_s + 0.1 * held
                self.running -= 1
                metrics.IN_FLIGHT.set(self.running)
                self._cond.notify()

    def _enter(self, deadline: float) -> None:
        with self._cond:
            if self.running < self.max_running and not self.waiting:
                self.running += 1
                metrics.IN_FLIGHT.set(self.running)
                return
            if self.waiting >= self.max_waiting:
                metrics.SHED.inc()
                raise Overloaded(f"server overloaded: {self.running} requests running and {self.waiting} queued "
                                 "(the limit); retry after a short backoff")
            if self.max_wait_s > 0 and self.expected_wait_s() > self.max_wait_s:
                metrics.SHED.inc()
                raise Overloaded(f"server overloaded: the expected wait is {self.expected_wait_s() * 1000:.0f} ms "
                                 f"(limit {self.max_wait_s * 1000:.0f} ms); retry after a short backoff")
            self.waiting += 1
            metrics.QUEUE_DEPTH.set(self.waiting)
            try:
                while self.running >= self.max_running:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        metrics.EXPIRED.labels("queue").inc()
                        raise DeadlineExpired("the deadline passed while the request was queued")
                    self._cond.wait(remaining)
                self.running += 1
                metrics.IN_FLIGHT.set(self.running)
            finally:
                self.waiting -= 1
                metrics.QUEUE_DEPTH.set(self.waiting)


def running_slots(configured: int) -> int:
    """Requests admitted to run at once: the configured number, or (0) one per usable core, at least 2 so
    one request's GIL-bound features overlap another's encoder call."""
    if configured > 0:
        return configured
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(2, cores)


# Threads beyond the running and queued requests: health checks, reflection and cheap RPCs never wait
# behind the pipeline.
SPARE_THREADS = 4


def executor_threads(running: int, waiting: int) -> int:
    """gRPC's thread pool: one thread per admitted request (running or queued) plus spares, so no request
    ever waits in the executor's own unbounded queue, where admission control cannot see it."""
    return running + waiting + SPARE_THREADS


def guarded(rpc: str) -> Callable[[Handler], Handler]:
    """Wrap a servicer method (of an object with ``admission`` and ``limits``): admission control, the
    latency histogram by status code, and the mapping of overload and expired deadlines to status codes."""

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            remaining = context.time_remaining()
            deadline = started + (self.limits.default_timeout_s if remaining is None else min(remaining, 3600.0))
            code = "OK"
            try:
                with self.admission.slot(deadline):
                    return method(self, request, context)
            except Overloaded as exc:
                code = "RESOURCE_EXHAUSTED"
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except DeadlineExpired as exc:
                code = "DEADLINE_EXCEEDED"
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
            except Exception:
                status = context.code() if hasattr(context, "code") else None
                code = getattr(status, "name", None) or "UNKNOWN"
                raise
            finally:
                metrics.REQUEST_SECONDS.labels(rpc, code).observe(time.monotonic() - started)

        return handler

    return wrap

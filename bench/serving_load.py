"""A real `repliq serve` in a child process and a gRPC load generator, shared by the overload and soak benches.

The server is built exactly as `repliq serve` builds it (``build_pipeline`` + ``start_server`` over the
workspace's settings), with only the [server] keys a bench names overridden, and it exposes its
Prometheus metrics so the bench can read what the server itself counted (shed, expired, in flight).
The load generator runs in the parent process, so the server's RSS, threads and file descriptors are
its own. Two kinds of load: closed loop (N clients, each sends when its previous answer arrives:
the soak, and capacity) and open loop (Poisson arrivals at a fixed rate, whatever the server does:
overload, where a closed loop would slow down with the server and never overload it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.bench_serving import dialogues

__all__ = ["Outcome", "Recorder", "ServerProcess", "closed_loop", "dialogues", "open_loop", "percentile"]


def _serve(home: str, overrides: dict[str, Any], conn: Any) -> None:
    """Child process: the pipeline `repliq serve` would build, served until the parent says stop."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        from core.config import load_settings
        from dialog.serving.assembly import build_pipeline
        from dialog.serving.metrics import start_metrics
        from dialog.serving.server import start_server

        settings = load_settings(environ={**os.environ, "REPLIQ_HOME": home})
        server = replace(settings.server, port=0, **overrides)
        settings = replace(settings, server=server)
        assembled = build_pipeline(settings)
        running = start_server(assembled.pipeline, settings.server, settings.retrieval.top_k)
        exporter = start_metrics("127.0.0.1", 0)
        conn.send({"port": running.port, "metrics_port": exporter.port, "versions": assembled.pipeline.versions,
                   "server": {k: getattr(server, k) for k in ("max_workers", "max_queue", "max_queue_wait_ms",
                                                              "default_timeout_s", "microbatch")}})
    except Exception as exc:  # reported to the parent, which stops with the reason
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    conn.recv()
    running.stop(grace=5.0)
    exporter.close()
    assembled.close()
    conn.send({"stopped": True})


class ServerProcess:
    """The server child; its pid for /proc readings, its port, and its Prometheus counters."""

    def __init__(self, home: str, **overrides: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(home, overrides, child), daemon=True)
        self.process.start()
        if not self._conn.poll(900):
            self.process.kill()
            raise RuntimeError("the server did not start within 15 minutes")
        hello = self._conn.recv()
        if "error" in hello:
            self.process.join(10)
            raise RuntimeError(f"the server did not start: {hello['error']}")
        self.port: int = hello["port"]
        self.metrics_port: int = hello["metrics_port"]
        self.versions: dict[str, str] = hello["versions"]
        self.server: dict[str, Any] = hello["server"]

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def counters(self) -> dict[str, float]:
        """Every sample of the server's /metrics whose name starts with ``repliq_`` (labels kept in the key)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("repliq_") and " " in line:
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.poll(60)
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()


@dataclass
class Outcome:
    """One request: when it was sent and answered (monotonic seconds), its status code and deadline."""

    sent: float
    done: float
    code: str
    deadline_s: float

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class Recorder:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def since(self, start: int) -> list[Outcome]:
        with self.lock:
            return self.outcomes[start:]


def _message(turns: list[tuple[str, str]]) -> Any:
    from repliq.v1 import chat_pb2

    return chat_pb2.RespondRequest(turns=[chat_pb2.Turn(speaker=s, text=t) for s, t in turns], top_k=3)


def closed_loop(port: int, concurrency: int, traffic: list[list[tuple[str, str]]], until: float,
                deadline_s: float, recorder: Recorder, seed: int = 0, backoff_s: float = 0.05) -> float:
    """``concurrency`` clients, each sending its next request when the previous one is answered (or
    ``backoff_s`` after a refusal), until the monotonic time ``until``; returns the wall seconds. One
    channel per client, as separate callers."""
    import grpc

    from repliq.v1 import chat_pb2_grpc

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = chat_pb2_grpc.ChatStub(channel)
            while time.monotonic() < until:
                message = _message(rng.choice(traffic))
                sent = time.monotonic()
                try:
                    stub.Respond(message, timeout=deadline_s)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                recorder.add(Outcome(sent, time.monotonic(), code, deadline_s))
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(backoff_s)  # as the refusal asks; an instant retry only burns the server's CPU

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def open_loop(port: int, rate: float, seconds: float, traffic: list[list[tuple[str, str]]],
              deadlines: list[tuple[float, float]], recorder: Recorder, seed: int = 0) -> Callable[[], int]:
    """Poisson arrivals at ``rate`` per second for ``seconds``, asynchronous (each call a gRPC future), so
    the offered load does not slow down when the server does. ``deadlines``: (share, seconds) pairs; a
    call draws its deadline from them. Returns as the last call is sent (calls may still be in flight)
    with a function that waits until every call has ended and returns how many were sent."""
    import grpc

    from repliq.v1 import chat_pb2_grpc

    rng = random.Random(seed)
    shares = [share for share, _ in deadlines]
    pending = threading.Semaphore(0)
    sent_count = 0
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [chat_pb2_grpc.ChatStub(channel) for channel in channels]

    def on_done(future: Any, sent: float, deadline_s: float) -> None:
        exc = future.exception()
        code = "OK" if exc is None else exc.code().name
        recorder.add(Outcome(sent, time.monotonic(), code, deadline_s))
        pending.release()

    start = time.monotonic()
    next_at = start
    while next_at < start + seconds:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        deadline_s = rng.choices(deadlines, weights=shares)[0][1]
        sent = time.monotonic()
        future = stubs[sent_count % len(stubs)].Respond.future(_message(rng.choice(traffic)), timeout=deadline_s)
        future.add_done_callback(lambda f, s=sent, d=deadline_s: on_done(f, s, d))
        sent_count += 1
        next_at += rng.expovariate(rate)

    def wait() -> int:
        for _ in range(sent_count):
            pending.acquire(timeout=120)
        for channel in channels:
            channel.close()
        return sent_count

    return wait


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nan for no values; plain sorting, no numpy needed by callers."""
    if not values:
        return float("nan")
    import numpy as np

    return float(np.percentile(values, q))

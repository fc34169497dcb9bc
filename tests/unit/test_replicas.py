"""Two stateless replicas behind gRPC's client-side round_robin, on tiny random-weight models.

Both `repliq serve` processes read the same workspace (bank, published index snapshot, models), so they
answer alike; SIGKILL one mid-load and the client's retries land on the other, no request failing twice.
Also: health is NOT_SERVING from the moment the port answers until the server is wired, and during drain;
`repliq serve` listens before its models load, so a load balancer sees NOT_SERVING, not a refused port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import grpc._server
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from core.config import ServerConfig
from dialog.serving.client import ChatClient
from dialog.serving.pipeline import Pipeline
from dialog.serving.server import CHAT_SERVICE, bind_server, start_server
from repliq.v1 import chat_pb2, chat_pb2_grpc

from tiny_models import build_tiny_encoder
from workspace import make_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": CHAT_SERVICE}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
}
OPENERS = ["Hello! How are you doing today?", "What do you like to do on weekends?", "Привет, как дела?",
           "Do you have any pets?", "Какая сегодня погода?", "I just got back from a trip to the mountains."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A bank and a published index on a tiny encoder; the environment that points `repliq serve` at them."""
    from core.bank.default import starter_rows
    from core.bank.store import PhraseBank
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    root = tmp_path_factory.mktemp("replicas")
    encoder_dir = build_tiny_encoder(root / "tiny-encoder")
    env = {"REPLIQ_HOME": str(root / "home"), "REPLIQ_MODELS": str(root / "models"),
           "REPLIQ_ENCODER_NAME": str(encoder_dir), "REPLIQ_ENCODER_BACKEND": "torch",
           "REPLIQ_RANKER_BLENDER": "none", "REPLIQ_RANKER_SPECIFICITY": "none", "REPLIQ_GENERATION_MODE": "off",
           "REPLIQ_SERVER_MAX_WORKERS": "4", "REPLIQ_SERVER_MICROBATCH": "false"}
    settings = make_settings(root / "home", root / "models")
    settings = replace(settings, encoder=replace(settings.encoder, name=str(encoder_dir), backend="torch"))
    settings.home.mkdir(parents=True)
    with PhraseBank(settings.bank_path) as bank:
        rows = starter_rows()
        report = bank.import_phrases([r for r in rows if r.language == "en"][:60]
                                     + [r for r in rows if r.language == "ru"][:60], who="tests")
        assert report.ok, report.errors
        build_index(bank, Encoder.from_config(settings), settings)
    return env


@pytest.fixture(scope="module")
def replicas(workspace: dict[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[tuple[subprocess.Popen, int, Path]]]:
    """Two `repliq serve` processes; each one's JSON log (stderr) goes to a file."""
    started = []
    logs = tmp_path_factory.mktemp("replica-logs")
    for number in range(2):
        port = free_port()
        env = {**os.environ, **workspace, "REPLIQ_SERVER_PORT": str(port), "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}
        log = logs / f"replica-{number}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-m", "dialog.cli.main", "serve"], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=sink)
        started.append((process, port, log))
    try:
        for process, port, log in started:
            client = ChatClient("127.0.0.1", port)
            try:
                client.wait_until_serving(timeout_s=90)
            except TimeoutError:
                process.kill()
                pytest.fail(f"replica on {port} never served: {log.read_text(errors='replace')[-2000:]}")
            finally:
                client.close()
        yield started
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def request(text: str) -> chat_pb2.RespondRequest:
    return chat_pb2.RespondRequest(turns=[chat_pb2.Turn(speaker="user", text=text)], top_k=3)


def answer(stub: chat_pb2_grpc.ChatStub, text: str) -> list[tuple[int, str, float]]:
    reply = stub.Respond(request(text), timeout=20)
    return [(c.phrase_id, c.text, round(c.score, 5)) for c in reply.candidates]


def answered(log: Path) -> int:
    return sum('"ok"' in line and '"Respond"' in line for line in log.read_text(errors="replace").splitlines())


def test_replicas_answer_alike_and_survive_a_kill(replicas: list[tuple[subprocess.Popen, int, Path]]) -> None:
    (first, p1, log1), (_, p2, log2) = replicas
    direct = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in (p1, p2)]
    try:
        for text in OPENERS:
            one, two = (answer(chat_pb2_grpc.ChatStub(channel), text) for channel in direct)
            assert one and one == two, f"replicas disagree on {text!r}: {one} vs {two}"
    finally:
        for channel in direct:
            channel.close()

    channel = grpc.insecure_channel(f"ipv4:127.0.0.1:{p1},127.0.0.1:{p2}", options=[
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)), ("grpc.enable_retries", 1)])
    stub = chat_pb2_grpc.ChatStub(channel)
    failures: Counter[str] = Counter()
    done: list[str] = []
    lock = threading.Lock()
    stop_at = {"n": 240}

    def send(request_id: str, text: str) -> None:
        for _attempt in range(2):  # a call in flight on the killed replica fails once; it is resent once
            try:
                reply = stub.Respond(request(text), timeout=20, metadata=(("x-request-id", request_id),))
                with lock:
                    done.append(request_id)
                assert reply.candidates
                return
            except grpc.RpcError as exc:
                with lock:
                    failures[request_id] += 1
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc

    def worker(offset: int) -> None:
        i = offset
        while True:
            with lock:
                if len(done) + sum(failures.values()) >= stop_at["n"]:
                    return
            send(uuid.uuid4().hex, OPENERS[i % len(OPENERS)])
            i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    give_up = time.monotonic() + 60
    while len(done) < 60 and time.monotonic() < give_up and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    assert len(done) >= 60, f"load never got going: {len(done)} answered, failures {dict(failures)}"
    first.send_signal(signal.SIGKILL)
    killed_at = len(done)
    before_kill = answered(log1)
    for thread in threads:
        thread.join(timeout=60)
    channel.close()
    assert first.wait(timeout=10) == -signal.SIGKILL
    assert len(done) >= stop_at["n"] - sum(failures.values()) and len(done) - killed_at >= 100, \
        "requests did not continue on the surviving replica"
    assert before_kill >= 20 and answered(log2) >= 100, "round_robin should have spread the load over both"
    assert all(count == 1 for count in failures.values()), f"a request failed twice: {failures}"
    assert sum(failures.values()) <= 4, f"more failures than calls in flight at the kill: {failures}"


class NoSource:
    name = "bank"

    def candidates(self, context: object, language: str, k: int, deadline: float) -> list:
        return []


def test_health_is_not_serving_until_wired_and_during_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, bool]] = []
    original_set = health.HealthServicer.set
    started = threading.Event()

    def recording_set(self: health.HealthServicer, service: str, status: int) -> None:
        seen.append((service, status, started.is_set()))
        original_set(self, service, status)

    original_start = grpc._server._Server.start

    def recording_start(self: grpc.Server) -> None:
        original_start(self)
        started.set()

    monkeypatch.setattr(health.HealthServicer, "set", recording_set)
    monkeypatch.setattr(grpc._server._Server, "start", recording_start)
    running = start_server(Pipeline([NoSource()], pool_k=5), replace(ServerConfig(), port=0), default_top_k=3)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", CHAT_SERVICE):
        before = [status for name, status, after_start in seen if name == service and not after_start]
        assert before == [health_pb2.HealthCheckResponse.NOT_SERVING], f"{service!r}: {seen}"
        assert (service, serving, True) in seen
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=CHAT_SERVICE), timeout=5).status == serving
    running.health.enter_graceful_shutdown()  # the first step of RunningServer.stop (SIGTERM)
    for service in ("", CHAT_SERVICE):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()
    running.stop(grace=1.0)


def test_a_bound_server_reads_not_serving_and_refuses_calls_as_unavailable_until_attached() -> None:
    running = bind_server(replace(ServerConfig(), port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    health_stub, chat = health_pb2_grpc.HealthStub(channel), chat_pb2_grpc.ChatStub(channel)
    try:
        for service in ("", CHAT_SERVICE):
            status = health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING, service
        with pytest.raises(grpc.RpcError) as loading:
            chat.Respond(request("Hello there"), timeout=5)
        assert loading.value.code() == grpc.StatusCode.UNAVAILABLE, loading.value.details()
        assert "loading" in loading.value.details()
        running.attach(Pipeline([NoSource()], pool_k=5), default_top_k=3)
        status = health_stub.Check(health_pb2.HealthCheckRequest(service=CHAT_SERVICE), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert chat.Respond(request("Hello there"), timeout=5).candidates == []  # answered by the pipeline
        from repliq.v1 import admin_pb2, admin_pb2_grpc

        with pytest.raises(grpc.RpcError) as admin:  # attached without an admin service: not enabled, not loading
            admin_pb2_grpc.AdminStub(channel).Publish(admin_pb2.PublishRequest(), timeout=5)
        assert admin.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
        running.stop(grace=1.0)


def test_repliq_serve_listens_before_it_loads_its_models(replicas: list[tuple[subprocess.Popen, int, Path]]
                                                         ) -> None:
    for _, port, log in replicas:
        events = [json.loads(line).get("msg") for line in log.read_text().splitlines() if line.startswith("{")]
        assert "listening" in events and "serving" in events, f"replica on {port}: {events}"
        assert events.index("listening") < events.index("serving"), events

"""The gRPC contract on loopback with a scripted candidate source (no models needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.config import ServerConfig
from core.types import Candidate, Context
from dialog.serving.client import ChatClient
from dialog.serving.pipeline import Pipeline
from dialog.serving.server import RunningServer, start_server


class ScriptedSource:
    name = "bank"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        with self.lock:
            self.seen.append((context.last_text, language))
        time.sleep(self.delay_s)
        return [
            Candidate(text=f"{language} reply {i} to {context.last_text}", source="bank", language=language,
                      phrase_id=i + 1, score=1.0 - i / 10, stage_scores={"retrieval": 1.0 - i / 10})
            for i in range(min(k, 5))
        ]


class GeneratedSource:
    name = "generated"

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate(text="a generated one", source="generated", language=language, score=5.0)]


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
def server(source: ScriptedSource) -> Iterator[RunningServer]:
    pipeline = Pipeline([source], pool_k=10, optional_sources=[GeneratedSource()],
                        versions={"encoder": "fake@0", "bank": "7", "index": "abc"})
    running = start_server(pipeline, replace(ServerConfig(), port=0, max_turn_chars=200), default_top_k=3)
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def client(server: RunningServer) -> Iterator[ChatClient]:
    chat = ChatClient("127.0.0.1", server.port, timeout_s=5.0)
    yield chat
    chat.close()


def test_respond_detects_language_and_ranks(client: ChatClient, source: ScriptedSource) -> None:
    reply = client.respond([("user", "Привет, как дела?")])
    assert reply.language == "ru"
    assert [c.phrase_id for c in reply.candidates] == [1, 2, 3]
    scores = [c.score for c in reply.candidates]
    assert scores == sorted(scores, reverse=True)
    assert reply.versions.bank == "7" and reply.versions.encoder == "fake@0"
    assert reply.request_id
    assert not reply.candidates[0].stage_scores, "stage scores only with explain"
    assert source.seen[-1] == ("Привет, как дела?", "ru")


def test_language_hint_overrides_detection_and_explain_adds_stages(client: ChatClient) -> None:
    reply = client.respond([("user", "Hello there")], language="ru", explain=True, top_k=2)
    assert reply.language == "ru" and len(reply.candidates) == 2
    assert reply.candidates[0].stage_scores["retrieval"] == pytest.approx(1.0)


def test_generated_candidates_follow_bank_without_reranker(client: ChatClient) -> None:
    reply = client.respond([("user", "Hello there")], generate=True, top_k=10)
    sources = [c.source for c in reply.candidates]
    assert sources[-1] == "generated" and sources.count("generated") == 1
    assert all(s == "bank" for s in sources[:-1])
    assert "generated" not in [c.source for c in client.respond([("user", "Hello")], top_k=10).candidates]


@pytest.mark.parametrize(
    ("turns", "kwargs", "fragment"),
    [
        ([], {}, "turns is empty"),
        ([("user", "   ")], {}, "turns[0].text is empty"),
        ([("user", "x" * 500)], {}, "limit is 200"),
        ([("user", "hi")] * 65, {}, "too many turns (65); the limit is 64"),
        ([("user", "hi")], {"top_k": 1000}, "top_k"),
        ([("user", "hi")], {"language": "klingon"}, "not supported"),
    ],
)
def test_bad_input_is_invalid_argument(client: ChatClient, turns, kwargs, fragment) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.respond(turns, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_oversized_message_is_refused(server: RunningServer) -> None:
    chat = ChatClient("127.0.0.1", server.port)
    try:
        with pytest.raises(grpc.RpcError) as info:
            chat.respond([("user", "y" * 100)] * 20000)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        chat.close()


def test_deadline_is_honoured(source: ScriptedSource, client: ChatClient) -> None:
    source.delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        client.respond([("user", "slow one")], timeout_s=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


def test_health_and_reflection(server: RunningServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "repliq.v1.Chat"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "repliq.v1.Chat" in names and "grpc.health.v1.Health" in names
    finally:
        channel.close()


def test_stop_drains_requests_in_flight(source: ScriptedSource, server: RunningServer) -> None:
    source.delay_s = 0.5
    chat = ChatClient("127.0.0.1", server.port)
    results: list[object] = []

    def call(i: int) -> None:
        try:
            results.append(chat.respond([("user", f"message {i}")], timeout_s=5.0))
        except grpc.RpcError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    arrived_by = time.monotonic() + 10.0
    while len(source.seen) < 8 and time.monotonic() < arrived_by:
        time.sleep(0.01)
    assert len(source.seen) == 8, f"only {len(source.seen)} of 8 requests reached the pipeline within 10 s"
    server.stop(grace=5.0)
    for thread in threads:
        thread.join(timeout=10.0)
    assert not any(thread.is_alive() for thread in threads), "a client call outlived its 5 s timeout"
    chat.close()
    assert len(results) == 8
    assert all(not isinstance(r, grpc.RpcError) for r in results), results

"""repliq.v1.Chat/Feedback and decision logging over real gRPC on loopback (scripted source, no models)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from core.config import ServerConfig, Settings
from core.types import Candidate, Context
from dialog.serving.client import ChatClient
from dialog.serving.feedback import FEEDBACK_DB, FeedbackStore, ServingLoop, build_serving_loop, feedback_rewards
from dialog.serving.pipeline import Pipeline
from dialog.serving.server import RunningServer, start_server
from repliq.v1 import chat_pb2


class ScriptedSource:
    name = "bank"

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate(text=f"{language} reply {i}", source="bank", language=language, phrase_id=i + 1,
                          score=1.0 - i / 10, stage_scores={"retrieval": 1.0 - i / 10}) for i in range(6)]


def _settings(home: Path, **logging_changes) -> Settings:
    settings = Settings(home=home)
    logging_cfg = replace(settings.logging, decisions=True, log_user_text=True, **logging_changes)
    exploration = replace(settings.exploration, epsilon=0.5, top_k=4, seed=3)
    return replace(settings, logging=logging_cfg, exploration=exploration)


def _start(loop: ServingLoop | None) -> RunningServer:
    pipeline = Pipeline([ScriptedSource()], pool_k=10, versions={"encoder": "fake@0", "bank": "7", "index": "abc"})
    return start_server(pipeline, replace(ServerConfig(), port=0), default_top_k=3, loop=loop)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ChatClient, ServingLoop]]:
    loop = build_serving_loop(_settings(tmp_path), None)
    assert loop is not None
    running = _start(loop)
    client = ChatClient("127.0.0.1", running.port, timeout_s=5.0)
    yield client, loop
    client.close()
    running.stop(grace=1.0)
    loop.close()


def _feedback(client: ChatClient, request_id: str, **signal) -> chat_pb2.FeedbackResponse:
    return client.stub.Feedback(chat_pb2.FeedbackRequest(request_id=request_id, **signal), timeout=5)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_respond_logs_a_decision_whose_chosen_answer_was_served(served) -> None:
    client, loop = served
    replies = [client.respond([("user", "Hello there")], session_id="s-1") for _ in range(40)]
    loop.log.close()
    lines = {json.loads(line)["request_id"]: json.loads(line)
             for path in loop.log.files() for line in path.read_text(encoding="utf-8").splitlines()}
    assert set(lines) == {r.request_id for r in replies}
    firsts = set()
    for reply in replies:
        line = lines[reply.request_id]
        chosen = line["candidates"][line["chosen"]]
        assert reply.candidates[0].text == chosen["text"], "the logged chosen answer is the one served first"
        assert chosen["propensity"] > 0 and line["context"][0]["text"] == "Hello there"
        firsts.add(chosen["text"])
        assert line["versions"]["encoder"] == "fake@0" and line["versions"]["server"]
    assert len(firsts) > 1, "epsilon 0.5 over the top 4 explores"


def test_feedback_is_stored_idempotent_and_replaceable(served, tmp_path: Path) -> None:
    client, loop = served
    rid = client.respond([("user", "Hello there")], session_id="s-1").request_id
    first = _feedback(client, rid, thumb=chat_pb2.THUMB_UP)
    assert first.request_id == rid and not first.duplicate and not first.replaced
    assert _feedback(client, rid, thumb=chat_pb2.THUMB_UP).duplicate
    assert _feedback(client, rid, thumb=chat_pb2.THUMB_DOWN).replaced
    assert not _feedback(client, rid, rating=4).duplicate
    assert not _feedback(client, rid, flag="wrong language").duplicate
    assert loop.store.all()[rid] == {"thumb": "down", "rating": "4", "flag": "wrong language"}
    loop.log.close()
    assert feedback_rewards(tmp_path / FEEDBACK_DB) == {rid: pytest.approx(0.75)}


def test_feedback_refusals(served) -> None:
    client, loop = served
    rid = client.respond([("user", "Hello there")], session_id="s-1").request_id
    assert _code(lambda: _feedback(client, "no-such-request", thumb=chat_pb2.THUMB_UP)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: _feedback(client, rid, rating=6)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _feedback(client, rid)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _feedback(client, "", thumb=chat_pb2.THUMB_UP)) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_session = chat_pb2.FeedbackRequest(request_id=rid, thumb=chat_pb2.THUMB_UP, session_id="s-2")
    assert _code(lambda: client.stub.Feedback(wrong_session, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    loop.ttl_s = 0.0
    time.sleep(0.01)
    assert _code(lambda: _feedback(client, rid, thumb=chat_pb2.THUMB_UP)) == grpc.StatusCode.NOT_FOUND
    assert rid not in loop.store.all(), "refused feedback stores nothing"


def test_served_ids_survive_a_restart(tmp_path: Path) -> None:
    loop = build_serving_loop(_settings(tmp_path), None)
    running = _start(loop)
    client = ChatClient("127.0.0.1", running.port, timeout_s=5.0)
    rid = client.respond([("user", "Привет")]).request_id
    client.close()
    running.stop(grace=1.0)
    loop.close()
    store = FeedbackStore(tmp_path / FEEDBACK_DB)
    assert store.served_at(rid) is not None
    store.close()
    loop = build_serving_loop(_settings(tmp_path), None)
    running = _start(loop)
    client = ChatClient("127.0.0.1", running.port, timeout_s=5.0)
    try:
        assert not _feedback(client, rid, rating=5).duplicate
    finally:
        client.close()
        running.stop(grace=1.0)
        loop.close()


def test_without_decision_logging_feedback_is_a_failed_precondition_and_serving_is_greedy(tmp_path: Path) -> None:
    assert build_serving_loop(Settings(home=tmp_path), None) is None
    running = _start(None)
    client = ChatClient("127.0.0.1", running.port, timeout_s=5.0)
    try:
        reply = client.respond([("user", "Hello there")])
        assert [c.phrase_id for c in reply.candidates] == [1, 2, 3]
        code = _code(lambda: _feedback(client, reply.request_id, thumb=chat_pb2.THUMB_UP))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        client.close()
        running.stop(grace=1.0)

"""Fuzzing Respond over real gRPC on loopback, against the real serving assembly on tiny random-weight models.

Pass: no crash, only documented status codes, Health answered SERVING throughout, and the p99 of ordinary
requests after the fuzz within 20% of before. CI runs ``FUZZ_BATCHES`` x 8 concurrent cases (1,000);
bench/fuzz.py runs the same harness for >= 20,000 and records the figures (docs/reliability.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bank.store import PhraseBank
from core.config import EncoderConfig, LMConfig, RankerConfig, Settings
from dialog.serving.assembly import Assembled, build_pipeline
from dialog.serving.client import ChatClient
from dialog.serving.server import RunningServer, start_server
from repliq.v1 import chat_pb2
from retriever.bank_index import build_index
from retriever.encoder import Encoder

from fuzz_harness import (
    CLIENT_REFUSED,
    Case,
    HealthProbe,
    Tally,
    cases,
    p99_held,
    run_batch,
    send,
    steady_p99,
)
from tiny_models import build_tiny_decoder, build_tiny_encoder

CONCURRENCY = 8
FUZZ_BATCHES = int(os.environ.get("REPLIQ_FUZZ_BATCHES", "125"))  # x 8 = 1,000 requests
MAX_TURN_CHARS = 4000
PHRASES = [("I like hiking in the hills.", "en"), ("Reading a good book.", "en"), ("Sleeping late, mostly.", "en"),
           ("What about you?", "en"), ("Гуляю в парке.", "ru"), ("Читаю книги.", "ru"), ("А ты?", "ru")]


def tiny_settings(root: os.PathLike[str] | str) -> Settings:
    """Encoder and LM are tiny random models; generation on request, so ``generate`` exercises the LM."""
    from pathlib import Path

    root = Path(root)
    settings = Settings(home=root / "home", models_dir=root / "models",
                        encoder=EncoderConfig(name=str(build_tiny_encoder(root / "encoder")), device="cpu"),
                        lm=LMConfig(name=str(build_tiny_decoder(root / "decoder")), threads=1),
                        ranker=RankerConfig(blender="none", specificity="none"))
    settings = replace(settings, server=replace(settings.server, port=0, max_turn_chars=MAX_TURN_CHARS),
                       generation=replace(settings.generation, mode="on-request", budget_s=0.5))
    settings.home.mkdir(parents=True, exist_ok=True)
    with PhraseBank(settings.bank_path) as bank:
        for text, language in PHRASES:
            bank.add(text, language)
        build_index(bank, Encoder.from_config(settings), settings)
    return settings


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Iterator[tuple[RunningServer,
                                                                                                Assembled]]:
    settings = tiny_settings(tmp_path_factory.mktemp("fuzz"))
    assembled = build_pipeline(settings)
    running = start_server(assembled.pipeline, settings.server, default_top_k=5)
    yield running, assembled
    running.stop(grace=2.0)
    assembled.close()


@pytest.fixture(scope="module")
def client(served: tuple[RunningServer, Assembled]) -> Iterator[ChatClient]:
    chat = ChatClient("127.0.0.1", served[0].port, timeout_s=30.0)
    chat.wait_until_serving()
    yield chat
    chat.close()


def test_fuzzed_requests_get_documented_codes_and_health_holds(served: tuple[RunningServer, Assembled],
                                                               client: ChatClient) -> None:
    before = steady_p99(client)
    tally = Tally()
    pool = ThreadPoolExecutor(CONCURRENCY)

    @settings(max_examples=FUZZ_BATCHES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(cases(MAX_TURN_CHARS), min_size=CONCURRENCY, max_size=CONCURRENCY))
    def fuzz(batch: list[Case]) -> None:
        run_batch(client, batch, pool, tally)

    with HealthProbe(f"127.0.0.1:{served[0].port}") as probe:
        try:
            fuzz()
        finally:
            pool.shutdown()
    assert not tally.unexpected, "\n".join(f"{reason}  <- {case!r:.300}" for case, reason in tally.unexpected[:5])
    assert tally.cases >= FUZZ_BATCHES * CONCURRENCY * 0.99  # hypothesis may stop a few examples early
    # The fuzz reached every kind of outcome, so it tested more than the validator's first check.
    assert {"OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", CLIENT_REFUSED} <= set(tally.codes), tally.codes
    assert probe.checks >= 5 and not probe.failures, probe.failures[:5]
    after = steady_p99(client)
    assert p99_held(before, after), f"p99 after the fuzz {after * 1000:.1f} ms vs {before * 1000:.1f} ms before"


def test_a_lone_surrogate_is_refused_by_the_client_naming_the_field(client: ChatClient) -> None:
    outcome = send(client, Case((("user", "fine"), ("user", "cut \ud83d here")), 0, "", False, None, "", 5.0))
    assert outcome.code == CLIENT_REFUSED
    assert "turns[1].text" in outcome.detail and "U+D83D" in outcome.detail and "position 4" in outcome.detail
    assert send(client, Case((("user", "ok"),), 0, "", False, None, "s\udc80", 5.0)).detail.startswith("session_id")


def test_invalid_utf8_on_the_wire_is_invalid_argument(served: tuple[RunningServer, Assembled]) -> None:
    """A non-Python client can put any bytes in a string field; the server must refuse them with a
    documented code, not INTERNAL."""
    good = chat_pb2.RespondRequest(turns=[chat_pb2.Turn(speaker="user", text="hello")]).SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{served[0].port}")
    raw = channel.unary_unary("/repliq.v1.Chat/Respond", request_serializer=None, response_deserializer=None)
    try:
        assert raw(good, timeout=10.0)  # the raw path works for a valid message
        for bad in (good.replace(b"hello", b"hell\xd0"), good.replace(b"hello", b"\xed\xa0\x80lo"), b"\xff\x00garbage"):
            with pytest.raises(grpc.RpcError) as info:
                raw(bad, timeout=10.0)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "RespondRequest" in info.value.details()
    finally:
        channel.close()

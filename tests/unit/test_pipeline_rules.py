"""The rules of the request path that hold the parts together: request limits, which sources run, and the
bank-first order used when no learned reranker is configured. Fakes only; no models."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from core.config import ServerConfig
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from dialog.serving.pipeline import Pipeline, PipelineRequest, bank_first
from dialog.serving.validation import InvalidRequest, validate_request
from repliq.v1 import chat_pb2
from retriever.microbatch import DeadlineExpired


def candidates(source: str, scores: list[float]) -> list[Candidate]:
    return [Candidate(text=f"{source}-{score:g}", source=source, language="en", score=score,
                      stage_scores={"retrieval": score}, contributions={"x": score}) for score in scores]


def texts(found: list[Candidate]) -> list[str]:
    return [c.text for c in found]


# ---- request limits ----------------------------------------------------------------------------------

def request(n_turns: int, **fields: object) -> chat_pb2.RespondRequest:
    turns = [chat_pb2.Turn(speaker="user", text=f"turn {i}") for i in range(n_turns)]
    return chat_pb2.RespondRequest(turns=turns, **fields)


def test_default_limits_refuse_a_dialogue_longer_than_max_turns() -> None:
    limits = ServerConfig()
    assert limits.max_turns == 64, "the documented default; a larger one lets a client send unbounded work"
    context = validate_request(request(limits.max_turns), limits)
    assert len(context.turns) == 64 and context.last_text == "turn 63"
    with pytest.raises(InvalidRequest, match=r"too many turns \(65\); the limit is 64"):
        validate_request(request(limits.max_turns + 1), limits)


def test_a_configured_max_turns_is_the_one_enforced() -> None:
    limits = replace(ServerConfig(), max_turns=2)
    assert len(validate_request(request(2), limits).turns) == 2
    with pytest.raises(InvalidRequest, match=r"too many turns \(3\); the limit is 2"):
        validate_request(request(3), limits)


def test_other_limits_name_the_field_and_the_bound() -> None:
    limits = replace(ServerConfig(), max_turn_chars=10, max_top_k=7)
    with pytest.raises(InvalidRequest, match="turns is empty"):
        validate_request(request(0), limits)
    long = chat_pb2.RespondRequest(turns=[chat_pb2.Turn(text="ok"), chat_pb2.Turn(text="x" * 11)])
    with pytest.raises(InvalidRequest, match=r"turns\[1\]\.text has 11 characters; the limit is 10"):
        validate_request(long, limits)
    with pytest.raises(InvalidRequest, match=r"between 0 .* and 7"):
        validate_request(request(1, top_k=8), limits)
    assert validate_request(request(1, top_k=7), limits).turns[0].speaker == "user"


# ---- bank_first: the order without a reranker ---------------------------------------------------------

BANK = candidates(SOURCE_BANK, [0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6])
GENERATED = candidates(SOURCE_GENERATED, [-1.5, -0.2, -0.9, -0.4, -2.0, -0.1, -0.7, -1.1])


@pytest.mark.parametrize(("top_k", "n_bank", "n_other"), [(10, 5, 5), (6, 3, 3), (5, 3, 2), (3, 2, 1), (2, 1, 1),
                                                          (1, 0, 1)])
def test_other_sources_keep_up_to_half_of_top_k_and_at_least_one(top_k: int, n_bank: int, n_other: int) -> None:
    found = bank_first(GENERATED + BANK, top_k)
    bank_sorted = texts(sorted(BANK, key=lambda c: -c.score))
    generated_sorted = texts(sorted(GENERATED, key=lambda c: -c.score))
    assert texts(found) == bank_sorted[:n_bank] + generated_sorted[:n_other]


def test_bank_fills_the_slots_other_sources_leave_empty() -> None:
    one_generated = candidates(SOURCE_GENERATED, [-0.5])
    found = bank_first(one_generated + BANK, 6)
    assert texts(found) == ["bank-0.9", "bank-0.8", "bank-0.7", "bank-0.6", "bank-0.5", "generated--0.5"]
    assert texts(bank_first(BANK, 4)) == ["bank-0.9", "bank-0.8", "bank-0.7", "bank-0.6"]
    # Few bank phrases: other sources still keep at most half the slots.
    few_bank = candidates(SOURCE_BANK, [0.4, 0.2])
    assert texts(bank_first(GENERATED + few_bank, 8)) == [
        "bank-0.4", "bank-0.2", "generated--0.1", "generated--0.2", "generated--0.4", "generated--0.7"]
    assert bank_first(GENERATED + BANK, 0) == []
    assert bank_first([], 5) == []


# ---- Pipeline: which sources run ----------------------------------------------------------------------

class RecordingSource:
    def __init__(self, name: str, scores: list[float], delay_s: float = 0.0) -> None:
        self.name, self.scores, self.delay_s = name, scores, delay_s
        self.calls: list[tuple[str, str, int]] = []

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        self.calls.append((context.last_text, language, k))
        time.sleep(self.delay_s)
        return candidates(self.name, self.scores)[:k]


def make(optional_enabled: bool, delay_s: float = 0.0) -> tuple[Pipeline, RecordingSource, RecordingSource]:
    bank = RecordingSource(SOURCE_BANK, [0.9, 0.8, 0.7, 0.6], delay_s)
    generated = RecordingSource(SOURCE_GENERATED, [-0.3, -0.1])
    pipeline = Pipeline([bank], pool_k=20, optional_sources=[generated], optional_enabled=optional_enabled,
                        versions={"bank": "3"})
    return pipeline, bank, generated


def ask(pipeline: Pipeline, generate: bool | None = None, top_k: int = 4, explain: bool = False,
        timeout_s: float = 5.0, text: str = "How are you today, my friend?") -> list[Candidate]:
    req = PipelineRequest(Context((Turn("user", text),)), top_k=top_k, deadline=time.monotonic() + timeout_s,
                          generate=generate, explain=explain)
    return pipeline.respond(req).candidates


@pytest.mark.parametrize(("optional_enabled", "generate", "runs"), [
    (True, None, True), (True, False, False), (False, None, False), (False, True, True)])
def test_the_request_overrides_the_configured_generation(optional_enabled: bool, generate: bool | None,
                                                         runs: bool) -> None:
    pipeline, bank, generated = make(optional_enabled)
    found = ask(pipeline, generate)
    assert len(bank.calls) == 1 and bank.calls[0] == ("How are you today, my friend?", "en", 20)
    assert len(generated.calls) == int(runs)
    expected = ["bank-0.9", "bank-0.8", "generated--0.1", "generated--0.3"] if runs else \
        ["bank-0.9", "bank-0.8", "bank-0.7", "bank-0.6"]
    assert texts(found) == expected


def test_no_source_starts_after_the_deadline() -> None:
    pipeline, bank, generated = make(True, delay_s=0.2)
    with pytest.raises(DeadlineExpired, match="before generated started"):
        ask(pipeline, timeout_s=0.1)
    assert len(bank.calls) == 1 and generated.calls == []  # the bank overran the deadline; generation skipped
    pipeline, bank, generated = make(True)
    with pytest.raises(DeadlineExpired, match="before bank started"):
        ask(pipeline, timeout_s=-1.0)
    assert bank.calls == generated.calls == []


def test_reranker_order_is_cut_to_top_k_and_explanations_only_on_request() -> None:
    class ByLength:
        def rerank(self, context: Context, pool: list[Candidate], explain: bool = False) -> list[Candidate]:
            return sorted(pool, key=lambda c: (len(c.text), c.text))

    pipeline, _, _ = make(True)
    pipeline.reranker = ByLength()
    found = ask(pipeline, top_k=3)
    assert texts(found) == ["bank-0.6", "bank-0.7", "bank-0.8"]
    assert all(c.stage_scores == {} and c.contributions == {} for c in found)
    explained = ask(pipeline, top_k=2, explain=True)
    assert explained[0].stage_scores == {"retrieval": 0.6} and explained[0].contributions == {"x": 0.6}


def test_reply_language_follows_the_hint_then_the_last_turn() -> None:
    pipeline, bank, _ = make(False)
    ask(pipeline, text="Привет, как у тебя дела сегодня?")
    req = PipelineRequest(Context((Turn("user", "Hello there, how are you?"),)), top_k=2,
                          deadline=time.monotonic() + 5, language_hint="ru")
    result = pipeline.respond(req)
    assert [call[1] for call in bank.calls] == ["ru", "ru"] and result.language == "ru"
    assert result.versions == {"bank": "3"}
    with pytest.raises(ValueError, match="at least one candidate source"):
        Pipeline([], pool_k=5)

"""The Respond fuzzer shared by tests/unit/test_fuzz_grpc.py (bounded, in CI) and bench/fuzz.py (>= 20,000 cases).

Hypothesis draws hostile but well-typed requests (the wire format fixes the types; everything else is
fair game): random Unicode including lone surrogates, bidi controls, zero-width and control characters,
emoji sequences and mixed scripts; 0 to 200 turns; texts up to the server limit and beyond; odd speakers,
languages and top_k; explain and generate on and off; deadlines from 1 ms to 60 s. They go over real
gRPC through ``ChatClient`` at a fixed concurrency while a probe keeps asking Health.

Import it as ``from fuzz_harness import ...`` (``tests/`` is on ``sys.path`` under pytest; bench/fuzz.py
adds it).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from dialog.serving.client import ChatClient

# What Respond may answer (protos/repliq/v1/chat.proto, docs/reliability.md). Anything else is a defect.
DOCUMENTED_CODES = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
# Text a protobuf string cannot carry (a lone surrogate): ChatClient refuses it before sending.
CLIENT_REFUSED = "CLIENT_REFUSED"

BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"
CONTROL = "".join(map(chr, range(0x20))) + "\x7f\x85\u2028\u2029"
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇷🇺", "🇬🇧", "❤️", "🤖", "🫠", "1️⃣"]
SCRIPTS = ["Привет, как дела?", "hello there", "مرحبا كيف حالك", "שלום מה נשמע", "你好吗", "こんにちは",
           "नमस्ते", "Γειά σου", "ﾊﾛｰ", "e\u0301\u0301\u0301", "Z̷̧̛a̸l̵g̶o̷", "İıŞş", "ǅ", "𝕳𝖊𝖑𝖑𝖔"]
LANGUAGES = ["", "ru", "en", "uk", "RU", "En", "ru-RU", "xx", "und", "zh", " ru", "ru\x00", "\u202eur", "😀"]


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Choose a branch with the given weights (``one_of`` gives every branch the same chance)."""
    total = sum(weight for weight, _ in options)

    def pick(ticket: int) -> st.SearchStrategy[Any]:
        for weight, strategy in options:
            if ticket < weight:
                return strategy
            ticket -= weight
        raise AssertionError(ticket)

    return st.integers(0, total - 1).flatmap(pick)


def _hostile_text(max_chars: int) -> st.SearchStrategy[str]:
    any_char = st.characters(codec=None, categories=None)  # every code point, surrogates (Cs) included
    special = st.sampled_from(list(BIDI + ZERO_WIDTH + CONTROL)) | st.sampled_from(EMOJI + SCRIPTS)
    surrogate = st.characters(categories=["Cs"])  # rare in any_char (2,048 of 1.1 million code points)
    piece = weighted((30, st.text(any_char, max_size=12)), (30, special), (1, surrogate),
                     (30, st.text(st.sampled_from("абвгд eng123?!"), max_size=20)))
    mixed = st.lists(piece, max_size=8).map("".join)
    # Plausible text with one hostile piece inside, so most turns survive normalization and reach the models.
    words = st.lists(st.sampled_from(SCRIPTS + EMOJI), min_size=1, max_size=4).map(" ".join)
    plausible = st.tuples(words, piece, words).map(lambda parts: f"{parts[0]}{parts[1]} {parts[2]}")
    # Long texts are a short draw repeated, around the server's limit (just under, at, just over, far over).
    target = st.sampled_from([max_chars - 1, max_chars, max_chars + 1, 3 * max_chars])
    long = st.tuples(mixed.filter(bool), target).map(lambda pair: (pair[0] * (pair[1] // len(pair[0]) + 1))[:pair[1]])
    return weighted((80, plausible), (10, mixed), (6, long), (2, st.just("")), (2, st.just(" \u200b\t")))


@dataclass(frozen=True)
class Case:
    turns: tuple[tuple[str, str], ...]
    top_k: int
    language: str
    explain: bool
    generate: bool | None
    session_id: str
    timeout_s: float


def cases(max_turn_chars: int) -> st.SearchStrategy[Case]:
    """One Respond request. Up to four distinct turns are drawn and cycled to the drawn turn count, so a
    200-turn request costs Hypothesis little entropy; most requests are plausible enough to pass
    validation and reach the retriever, ranker and generator, the rest probe every limit."""
    text = _hostile_text(max_turn_chars)
    speaker = st.sampled_from(["user", "bot", "", "USER", "system", "\u202euser"]) | st.text(max_size=30)
    distinct = st.lists(st.tuples(speaker, text), min_size=1, max_size=4)
    common = st.sampled_from([1, 1, 1, 1, 2, 2, 3, 3, 5, 8, 16, 64])
    n_turns = weighted((90, common), (5, st.sampled_from([0, 63, 65, 200])), (5, st.integers(0, 200)))
    turns = st.tuples(distinct, n_turns).map(lambda pair: tuple(pair[0][i % len(pair[0])] for i in range(pair[1])))
    top_k = weighted((90, st.integers(0, 20)), (5, st.integers(-3, 120)),
                     (5, st.sampled_from([-(2 ** 31), 2 ** 31 - 1, 100, 101])))
    usual = st.sampled_from(["", "ru", "en"])
    language = weighted((90, usual), (5, st.sampled_from(LANGUAGES)), (5, st.text(max_size=6)))
    # Log-uniform from 1 ms to 60 s: most deadlines are short, a few are generous.
    timeout = st.floats(math.log(0.001), math.log(60.0)).map(math.exp)
    return st.builds(Case, turns, top_k, language, st.booleans(), st.none() | st.booleans(),
                     st.text(max_size=40), timeout)


@dataclass
class Outcome:
    code: str
    seconds: float
    detail: str = ""


def send(client: ChatClient, case: Case) -> Outcome:
    """Respond over gRPC; the status code name, or CLIENT_REFUSED when the client rejects the text itself."""
    started = time.monotonic()
    try:
        client.respond(list(case.turns), top_k=case.top_k, language=case.language, explain=case.explain,
                       generate=case.generate, session_id=case.session_id, timeout_s=case.timeout_s)
        return Outcome("OK", time.monotonic() - started)
    except grpc.RpcError as exc:
        return Outcome(exc.code().name, time.monotonic() - started, exc.details() or "")
    except ValueError as exc:
        return Outcome(CLIENT_REFUSED, time.monotonic() - started, str(exc))


def has_surrogate(case: Case) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for turn in case.turns for part in turn for ch in part) or any(
        0xD800 <= ord(ch) <= 0xDFFF for ch in case.language + case.session_id)


class HealthProbe:
    """Asks Health every ``interval_s`` on its own channel; counts answers that are not SERVING in time."""

    def __init__(self, target: str, interval_s: float = 0.1, timeout_s: float = 2.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.checks = 0
        self.failures: list[str] = []
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = self.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.checks += 1
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.channel.close()


@dataclass
class Tally:
    """Every outcome of a fuzz run; ``unexpected`` holds the cases that broke a rule, with the reason."""

    codes: Counter[str] = field(default_factory=Counter)
    cases: int = 0
    unexpected: list[tuple[Case, str]] = field(default_factory=list)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.codes[outcome.code] += 1
        if outcome.code == CLIENT_REFUSED:
            if not has_surrogate(case) or "surrogate" not in outcome.detail:
                self.unexpected.append((case, f"client refused: {outcome.detail}"))
        elif outcome.code not in DOCUMENTED_CODES:
            self.unexpected.append((case, f"{outcome.code}: {outcome.detail}"))


def run_batch(client: ChatClient, batch: Sequence[Case], pool: ThreadPoolExecutor, tally: Tally) -> None:
    """Send ``batch`` concurrently (as many at once as ``pool`` has threads) and record every outcome."""
    for case, outcome in zip(batch, pool.map(lambda c: send(client, c), batch), strict=True):
        tally.add(case, outcome)


PROBE_TURNS = [("user", "What do you like to do on weekends?"), ("user", "Привет! Как дела?"),
               ("user", "Tell me about books."), ("bot", "Sure."), ("user", "Гуляю в парке, а ты?")]


def latencies(client: ChatClient, n: int) -> list[float]:
    """``n`` ordinary sequential requests (one turn each, cycling the probe texts): their seconds."""
    seconds = []
    for i in range(n):
        started = time.monotonic()
        client.respond([PROBE_TURNS[i % len(PROBE_TURNS)]], timeout_s=30.0)
        seconds.append(time.monotonic() - started)
    return seconds


def steady_p99(client: ChatClient, n: int = 500, runs: int = 3) -> float:
    """Median over ``runs`` of the p99 of ``n`` ordinary requests, each after a warm-up of the same texts
    (the fuzz fills the bounded query cache with its own text; "after" must not measure the refill)."""
    values = []
    for _ in range(runs):
        latencies(client, 2 * len(PROBE_TURNS))
        values.append(p99(latencies(client, n)))
    return sorted(values)[len(values) // 2]


def p99_held(before_s: float, after_s: float) -> bool:
    """After within 20% of before, or within one GIL switch interval (5 ms) of it: on a shared 2-core
    machine a request that waits for one hand-off of the interpreter lock costs that much, so a p99 of a
    few milliseconds flips between about 2 and 7 ms from run to run with or without a fuzz before it."""
    return after_s <= 1.2 * before_s or after_s - before_s <= sys.getswitchinterval()


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

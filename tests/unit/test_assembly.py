"""The serving assembly on tiny random-weight models: the generation mode decides whether a request
generates, and the generator's time budget caps how much of the request deadline it may use."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from core.bank.store import PhraseBank
from core.config import EncoderConfig, LMConfig, RankerConfig, Settings
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from dialog.generation.generator import LMGenerator
from dialog.generation.source import SharedGenerator, build_generator
from dialog.serving.assembly import Assembled, build_pipeline
from dialog.serving.pipeline import PipelineRequest
from retriever.bank_index import build_index
from retriever.encoder import Encoder

from tiny_models import build_tiny_decoder, build_tiny_encoder

QUESTION = Context((Turn("user", "What do you like to do on weekends?"),))


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Settings:
    root = tmp_path_factory.mktemp("assembly")
    settings = Settings(home=root / "home", models_dir=root / "models",
                        encoder=EncoderConfig(name=str(build_tiny_encoder(root / "encoder")), device="cpu"),
                        lm=LMConfig(name=str(build_tiny_decoder(root / "decoder")), threads=1),
                        ranker=RankerConfig(blender="none", specificity="none"))
    settings = replace(settings, server=replace(settings.server, microbatch=False))
    settings.home.mkdir(parents=True)
    with PhraseBank(settings.bank_path) as bank:
        for text in ("I like hiking in the hills.", "Reading a good book.", "Sleeping late, mostly."):
            bank.add(text, "en")
        bank.add("Гуляю в парке.", "ru")
        build_index(bank, Encoder.from_config(settings), settings)
    return settings


@dataclass
class Call:
    started: float
    deadline: float


@pytest.fixture
def generator_calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every call reaching the LM generator, with the deadline it was given; it answers one fixed reply."""
    calls: list[Call] = []

    def fake(self: LMGenerator, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        calls.append(Call(time.monotonic(), deadline))
        return [Candidate(text="a generated reply", source=SOURCE_GENERATED, language=language, score=-0.5)]

    monkeypatch.setattr(LMGenerator, "candidates", fake)
    return calls


@pytest.fixture
def assemble(base_settings: Settings) -> Iterator:
    opened: list[Assembled] = []

    def build(mode: str, budget_s: float = 6.0) -> Assembled:
        settings = replace(base_settings, generation=replace(base_settings.generation, mode=mode, budget_s=budget_s))
        opened.append(build_pipeline(settings))
        return opened[-1]

    yield build
    for assembled in opened:
        assembled.close()


def respond(assembled: Assembled, generate: bool | None = None, timeout_s: float = 30.0) -> list[Candidate]:
    request = PipelineRequest(QUESTION, top_k=4, deadline=time.monotonic() + timeout_s, generate=generate)
    return assembled.pipeline.respond(request).candidates


def test_mode_always_generates_for_every_request_unless_it_says_no(assemble, generator_calls: list[Call]) -> None:
    assembled = assemble("always")
    found = respond(assembled)
    assert len(generator_calls) == 1
    assert [c.source for c in found] == [SOURCE_BANK, SOURCE_BANK, SOURCE_BANK, SOURCE_GENERATED]
    generator = assembled.pipeline.optional_sources[0]
    assert assembled.pipeline.versions["generator"] == generator.version != ""
    assert generator.generator.config.pmi is False, "no blender reads gen_pmi here: its extra LM pass is skipped"
    respond(assembled, generate=False)
    assert len(generator_calls) == 1, "generate=False must switch generation off for that request"


def test_mode_on_request_generates_only_when_asked(assemble, generator_calls: list[Call]) -> None:
    assembled = assemble("on-request")
    assert all(c.source == SOURCE_BANK for c in respond(assembled)) and generator_calls == []
    assert respond(assembled, generate=True)[-1].source == SOURCE_GENERATED and len(generator_calls) == 1


def test_mode_off_loads_no_generator(assemble, generator_calls: list[Call]) -> None:
    assembled = assemble("off")
    assert "generator" not in assembled.pipeline.versions and assembled.pipeline.optional_sources == []
    assert all(c.source == SOURCE_BANK for c in respond(assembled, generate=True)) and generator_calls == []


def test_the_generator_gets_at_most_its_budget_of_the_request_deadline(assemble,
                                                                       generator_calls: list[Call]) -> None:
    assembled = assemble("always", budget_s=0.25)
    respond(assembled, timeout_s=30.0)
    call = generator_calls[-1]
    assert call.deadline - call.started <= 0.25 + 1e-3, "the budget, not the 30 s request deadline, bounds it"
    respond(assembled, timeout_s=0.1)  # a request deadline shorter than the budget wins
    call = generator_calls[-1]
    assert call.deadline - call.started <= 0.1 + 1e-3


def test_the_configured_sampling_settings_reach_the_generator(base_settings: Settings) -> None:
    section = replace(base_settings.generation, mode="on-request", n_candidates=3, temperature=0.5, top_p=0.7,
                      max_new_tokens=9, budget_s=1.5)
    shared = build_generator(replace(base_settings, generation=section))
    assert isinstance(shared, SharedGenerator) and shared.budget_s == 1.5
    config = shared.generator.config
    assert (config.n_candidates, config.temperature, config.top_p, config.max_new_tokens) == (3, 0.5, 0.7, 9)
    assert build_generator(replace(base_settings, generation=replace(section, mode="off"))) is None
    assert build_generator(replace(base_settings, lm=replace(base_settings.lm, name="none"))) is None
    with pytest.raises(ValueError, match="mode 'sometimes' is not one of off, on-request, always"):
        build_generator(replace(base_settings, generation=replace(section, mode="sometimes")))


class SlowGenerator:
    """Holds the model for ``hold_s`` seconds per call, as a long sampling run would."""

    version = "slow@0"

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.deadlines: list[float] = []

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        self.deadlines.append(deadline)
        time.sleep(self.hold_s)
        return [Candidate(text="slow reply", source=SOURCE_GENERATED, language=language)]


def test_a_request_that_cannot_get_the_model_within_its_budget_gets_no_generated_replies() -> None:
    inner = SlowGenerator(hold_s=1.0)
    shared = SharedGenerator(inner, budget_s=0.2)  # type: ignore[arg-type]
    results: dict[str, list[Candidate]] = {}
    first = threading.Thread(target=lambda: results.update(
        first=shared.candidates(QUESTION, "en", 2, time.monotonic() + 30)))
    first.start()
    time.sleep(0.05)  # the first request holds the model now
    started = time.monotonic()
    results["second"] = shared.candidates(QUESTION, "en", 2, time.monotonic() + 30)
    waited = time.monotonic() - started
    first.join(timeout=5)
    assert results["second"] == [] and waited < 0.6, waited
    assert [c.text for c in results["first"]] == ["slow reply"] and len(inner.deadlines) == 1

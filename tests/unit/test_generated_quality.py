"""Generated replies by prompt kind (`repliq eval prompts --generate`): sampling cache, summary, served picks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prompt_helpers import make_pool

from core.corpora import ContextPair
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from dialog.generation.prompt_kinds import CountingFilter, FixedDemos, KindGenerator
from dialog.serving.pipeline import Pipeline
from dialog.serving.replay import PoolRanker
from rl.generated_quality import (
    GenerationEvalConfig,
    kinds_table,
    picked_generated,
    read_cache,
    sample_kinds,
    summarize_kinds,
)

from tiny_models import build_tiny_decoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """The tiny LM samples several times faster on one torch thread on a shared machine."""


def pairs() -> list[ContextPair]:
    out = []
    for i, language in enumerate(("en", "en", "ru")):
        text = "How was your trip to the mountains?" if language == "en" else "Как прошла поездка в горы?"
        out.append(ContextPair(f"c{i}", f"conv{i}", language, Context((Turn("A", f"{text} {i}"),)), f"reply {i}", {}))
    return out


@dataclass
class FakeGenerate:
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, context: Context, language: str, demos: list, deadline: float) -> SimpleNamespace:
        assert deadline > time.monotonic()
        self.calls.append((context.last_text, len(demos)))
        kept = [Candidate(f"{language} answer with {len(demos)} demos", SOURCE_GENERATED, language,
                          stage_scores={"gen_logprob": -1.5})] if demos else []
        return SimpleNamespace(sampled=2, kept=kept, dropped={} if demos else {"echo": 2})


def test_attempts_are_cached_and_a_cut_last_line_is_sampled_again(tmp_path: Path) -> None:
    contexts, pool = pairs(), make_pool()
    demos = [d for d in pool.demonstrations if d.language == "en"][:2]
    chosen = {"uprise": [demos, demos, demos], "none": [[], [], []]}
    cache = tmp_path / "generated.jsonl"
    generate = FakeGenerate()
    first = sample_kinds(contexts, chosen, generate, "lm@1", 2, GenerationEvalConfig(), cache, progress=False)
    assert len(generate.calls) == 6 and len(read_cache(cache)) == 6
    # A kill mid-write leaves a cut last line: it is ignored, and only that attempt runs again.
    lines = cache.read_text(encoding="utf-8").splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20], encoding="utf-8")
    again = FakeGenerate()
    second = sample_kinds(contexts, chosen, again, "lm@1", 2, GenerationEvalConfig(), cache, progress=False)
    assert len(again.calls) == 1 and second == first
    # Another LM is another key: nothing is reused.
    other = FakeGenerate()
    sample_kinds(contexts, chosen, other, "lm@2", 2, GenerationEvalConfig(), cache, progress=False)
    assert len(other.calls) == 6


class FakeRanker:
    version = "fake"

    def rank(self, context: Context, language: str, extra: list[Candidate]) -> list[Candidate]:
        # The replayed replies carry the stage scores they were generated with (the blender's features).
        assert all(c.stage_scores == {"gen_logprob": -1.5} for c in extra)
        bank = Candidate("a bank phrase", SOURCE_BANK, language, phrase_id=1)
        # Serves the generated reply in English only.
        return [*extra, bank] if language == "en" else [bank, *extra]


def test_summary_counts_yield_pass_share_scores_and_served_picks(tmp_path: Path) -> None:
    contexts, pool = pairs(), make_pool()
    demos = [d for d in pool.demonstrations if d.language == "en"][:1]
    chosen = {"uprise": [demos] * 3, "none": [[]] * 3}
    config = GenerationEvalConfig(n_boot=200)
    records = sample_kinds(contexts, chosen, FakeGenerate(), "lm", 2, config, tmp_path / "g.jsonl", progress=False)
    picked = picked_generated(records, contexts, FakeRanker())
    assert picked == [True, True, False, False, False, False]
    relevance = lambda ctxs, texts: np.array([0.5 + 0.1 * i for i in range(len(texts))])  # noqa: E731
    specificity = lambda ctxs, texts: np.array([float(len(t)) for t in texts])  # noqa: E731
    summary = summarize_kinds(records, contexts, picked, relevance, specificity, config)
    en, ru, none_en = summary["uprise"]["en"], summary["uprise"]["ru"], summary["none"]["en"]
    assert en["contexts"] == 2 and en["requested"] == 4 and en["finished"] == 4 and en["kept"] == 2
    assert en["yield"] == pytest.approx(0.5) and en["pass_share"] == pytest.approx(0.5)
    assert en["relevance"]["mean"] == pytest.approx(0.55) and en["relevance"]["n"] == 2
    assert en["picked"] == 1.0 and ru["picked"] == 0.0 and ru["picked_when_offered"] == 0.0
    assert none_en["kept"] == 0 and none_en["picked_when_offered"] is None and none_en["dropped"] == {"echo": 4}
    assert none_en["relevance"]["mean"] is None
    table = kinds_table(summary)
    assert "| uprise | en | 2 | 0.50 | 0.50 |" in table and "| none | en | 2 | 0.00 | 0.00 | – |" in table


def test_generation_eval_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        GenerationEvalConfig(budget_s=0).validate()


class ListSource:
    name = SOURCE_BANK

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [Candidate("bank one", SOURCE_BANK, language, phrase_id=1, score=0.9)]


def test_pool_ranker_replays_given_candidates_through_the_served_pipeline() -> None:
    pipeline = Pipeline([ListSource()], pool_k=5)
    closed = []
    ranker = PoolRanker(SimpleNamespace(pipeline=pipeline, close=lambda: closed.append(1)))
    context = Context((Turn("A", "What do you cook on weekends?"),))
    extra = [Candidate("Pasta with mushrooms, mostly.", SOURCE_GENERATED, "en")]
    ranked = ranker.rank(context, "en", extra)
    assert [c.text for c in ranked] == ["bank one", "Pasta with mushrooms, mostly."]
    # Nothing is left behind for the next context, and an empty extra means generation off.
    assert [c.text for c in ranker.rank(context, "en", [])] == ["bank one"]
    # The hygiene filter of serving still applies: an echo of the user is removed.
    echo = [Candidate("What do you cook on weekends?", SOURCE_GENERATED, "en")]
    assert [c.text for c in ranker.rank(context, "en", echo)] == ["bank one"]
    ranker.close()
    assert closed == [1]


def test_kind_generator_uses_exactly_the_given_demonstrations_and_counts_the_filter(tmp_path: Path) -> None:
    from core.config import Settings
    from core.lm.wrapper import DecoderLM

    lm = DecoderLM.from_dir(build_tiny_decoder(tmp_path / "lm"))
    settings = Settings(home=tmp_path)
    settings = replace(settings, generation=replace(settings.generation, max_new_tokens=4, keep_truncated=True))
    generate = KindGenerator(lm, settings, k=2)
    demos = [d for d in make_pool().demonstrations if d.language == "en"][:3]
    context = Context((Turn("A", "Hello there, how are you today?"),))
    attempt = generate(context, "en", demos, time.monotonic() + 20)
    assert attempt.sampled >= len(attempt.kept) and all(c.source == SOURCE_GENERATED for c in attempt.kept)
    assert attempt.sampled == sum(attempt.dropped.values()) + len(attempt.kept)
    assert FixedDemos(demos).retrieve(context, "en", 2) == demos[:2]
    counting = CountingFilter()
    result = counting.apply(["", "A fine reply here.", "A fine reply here."], context, "en")
    assert counting.seen == 3 and counting.kept == len(result.kept) == 1
    assert counting.reasons == {"empty": 1, "duplicate": 1}

"""Generated replies by prompt kind on the real default: Gemma samples with the given demonstrations, each kept
reply carries its LM evidence (gen_logprob, gen_pmi), and the served pipeline (e5, the starter bank, the shipped
blender) ranks replayed replies with its own bank pool and hygiene."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from dialog.generation.prompt_kinds import KindGenerator
from dialog.serving.replay import PoolRanker
from retriever.prompt_pool import Demonstration

from workspace import make_settings

pytestmark = pytest.mark.real


def test_gemma_replies_with_given_demonstrations_carry_their_lm_evidence(real_home: Path, models_dir: Path,
                                                                        one_torch_thread: None) -> None:
    settings = make_settings(real_home, models_dir)
    settings = replace(settings, generation=replace(settings.generation, max_new_tokens=24, keep_truncated=True,
                                                    n_candidates=1, samples_per_call=1))
    generate = KindGenerator.from_settings(settings, k=2)
    demos = [Demonstration(0, "ru", ("Как прошли выходные?",), "Отлично, ездили на дачу, жарили шашлыки.",
                           "test", "test:0", "train"),
             Demonstration(1, "ru", ("Что читаешь сейчас?",), "Перечитываю Чехова, рассказы.", "test", "test:1",
                           "train")]
    context = Context((Turn("A", "Привет! Чем занимался вчера вечером?"),))
    attempt = generate(context, "ru", demos, time.monotonic() + 60)
    assert attempt.sampled >= 1 and attempt.kept, attempt
    assert attempt.sampled == len(attempt.kept) + sum(attempt.dropped.values())
    for candidate in attempt.kept:
        assert candidate.source == SOURCE_GENERATED
        assert candidate.stage_scores["demonstrations"] == 2.0
        assert math.isfinite(candidate.stage_scores["gen_logprob"]) and math.isfinite(candidate.stage_scores["gen_pmi"])


def test_the_served_pipeline_ranks_replayed_replies_with_its_bank_pool(real_home: Path, models_dir: Path) -> None:
    ranker = PoolRanker.from_settings(make_settings(real_home, models_dir))
    try:
        context = Context((Turn("user", "I just got a puppy and have no idea how to train him."),))
        offered = Candidate("Start with short sessions and lots of treats; puppies learn fast.", SOURCE_GENERATED,
                            "en", stage_scores={"gen_logprob": -1.2, "gen_pmi": 0.8})
        ranked = ranker.rank(context, "en", [offered])
        sources = [c.source for c in ranked]
        assert sources.count(SOURCE_GENERATED) == 1 and sources.count(SOURCE_BANK) >= 5
        assert [c.source for c in ranker.rank(context, "en", [])].count(SOURCE_GENERATED) == 0
        echo = Candidate("I just got a puppy and have no idea how to train him.", SOURCE_GENERATED, "en")
        assert SOURCE_GENERATED not in [c.source for c in ranker.rank(context, "en", [echo])]
        assert "shipped default" in ranker.version
    finally:
        ranker.close()

"""Generated candidates in the blender's training pools (issue 17): chosen contexts only, with their features."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from prompt_helpers import make_pool

from core.corpora import ContextPair
from core.types import Candidate, Context, Turn
from dialog.generation.prompt_kinds import FixedDemos
from ranker.annotators import build_annotators
from ranker.dataset import BuilderConfig, build_ranking_dataset, restrict_origins

from tiny_models import build_tiny_decoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Tiny models run several times faster on one torch thread on a shared machine."""


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory):
    from core.config import GenerationConfig
    from core.lm.wrapper import DecoderLM
    from dialog.generation.filters import FilterConfig, ReplyFilter
    from dialog.generation.generator import LMGenerator

    lm = DecoderLM.from_dir(build_tiny_decoder(tmp_path_factory.mktemp("lm") / "lm"))
    demos = [d for d in make_pool().demonstrations if d.language == "en"][:3]
    config = replace(GenerationConfig(), n_candidates=3, max_new_tokens=8, keep_truncated=True)
    return LMGenerator(lm, config, ReplyFilter(FilterConfig(check_language=False), blocklists=[]),
                       prompts=FixedDemos(demos), prompts_ref="prompt-retriever@test")


def _pairs(n: int) -> list[ContextPair]:
    return [ContextPair(f"c{i}", f"toy:{i}", "en", Context((Turn("user", f"Do you like green tea number {i}?"),)),
                        f"Yes, I drink it every morning {i}.", {}) for i in range(n)]


def test_generated_candidates_reach_the_chosen_pools_with_their_features(generator) -> None:
    from dialog.generation.training import PoolGenerator, TrainingGeneration

    pool_gen = PoolGenerator(generator, TrainingGeneration(per_context=2, max_contexts=3, budget_s=10.0))
    bank = [Candidate(t, "bank", "en", phrase_id=i + 1) for i, t in enumerate(
        ["Hello!", "I love walks.", "Maybe later.", "What a day.", "Tea is nice.", "No idea."])]
    annotators = build_annotators(names=["retrieval", "surface", "lexical"])
    dataset = build_ranking_dataset(_pairs(8), annotators, bank, generate=pool_gen,
                                    config=BuilderConfig(k_retrieved=0, k_random=3, k_corpus=0, batch_size=4))
    stats = pool_gen.stats
    generated = [i for i, o in enumerate(dataset.origins) if o == "generated"]
    assert stats.contexts == 3 and stats.zero_shot == 0, "three contexts chosen, each prompt with demonstrations"
    assert 0 < len(generated) == stats.candidates <= 6
    offsets = dataset.offsets
    owners = {int(np.searchsorted(offsets, i, side="right") - 1) for i in generated}
    assert 1 <= len(owners) <= 3, "only the chosen contexts' pools hold generated candidates"
    col = {name: j for j, name in enumerate(dataset.feature_names)}
    flag = dataset.X[:, col["source_generated"]]
    assert (flag[generated] == 1).all() and (np.delete(flag, generated) == 0).all()
    assert np.isnan(dataset.X[generated, col["retrieval_cosine"]]).all(), "never retrieved"
    for name in ("len_words", "is_question", "context_word_repeat", "echo"):
        assert np.isfinite(dataset.X[generated, col[name]]).all(), f"{name}: computed for them like for any reply"
    assert (dataset.y[generated] == 0).all(), "only the gold reply is labelled 1"
    baseline = restrict_origins(dataset, {"gold", "random"}, annotators)
    assert "generated" not in baseline.origins and len(baseline.y) == len(dataset.y) - len(generated)
    assert stats.to_json()["seconds_per_context"] > 0


def test_selection_is_by_dialogue_and_capped() -> None:
    from dialog.generation.training import PoolGenerator, TrainingGeneration

    class Echo:
        def candidates(self, context, language, k, deadline):
            return [Candidate(f"gen {context.last_text} {j}", "generated", language, None) for j in range(k + 2)]

    contexts = [pair.context for pair in _pairs(40)]
    first = PoolGenerator(Echo(), TrainingGeneration(per_context=1, max_contexts=100, share=0.5))
    again = PoolGenerator(Echo(), TrainingGeneration(per_context=1, max_contexts=100, share=0.5))
    a = first(contexts, "en")
    b = again(contexts[::-1], "en")[::-1]
    assert a == b, "the same contexts are chosen whatever the order"
    assert 8 <= sum(bool(x) for x in a) <= 32 and all(len(x) <= 1 for x in a)
    capped = PoolGenerator(Echo(), TrainingGeneration(per_context=2, max_contexts=5))
    assert sum(bool(x) for x in capped(contexts, "en")) == 5 and capped.stats.candidates == 10
    with pytest.raises(ValueError, match="per_context"):
        TrainingGeneration(per_context=0).validate()

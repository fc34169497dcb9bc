"""Prompt retriever (UPRISE targets, adapter training, index + manifest) and generation with its prompts."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prompt_helpers import make_pool

from core.artifacts import ArtifactError
from core.types import Context, Turn
from dialog.generation.prompt_kinds import FixedDemos
from retriever.prompt_pool import PromptPool
from retriever.prompt_train import (
    PromptTrainConfig,
    ScoredExample,
    beats_base,
    choice_gain,
    make_targets,
    train_prompt_adapter,
)

from tiny_models import build_tiny_decoder, build_tiny_encoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Tiny models and matrix work run several times faster on one torch thread on a shared machine."""


def test_targets_are_best_scored_positive_worst_scored_hard_and_random_negatives() -> None:
    ids = {"en": list(range(20)), "ru": list(range(20, 30))}
    example = ScoredExample("q", "en", (3, 5, 7, 9), (-2.0, -1.0, -4.0, -3.0))
    [target] = make_targets([example], ids, PromptTrainConfig(hard_negatives=2, random_negatives=3))
    assert target.positive == 5
    assert target.negatives[:2] == (7, 9)  # the worst first
    randoms = target.negatives[2:]
    assert len(randoms) == 3 and not set(randoms) & {3, 5, 7, 9} and all(r < 20 for r in randoms)
    with pytest.raises(ValueError, match="at least 2"):
        make_targets([ScoredExample("q", "en", (1,), (0.0,))], ids, PromptTrainConfig())
    with pytest.raises(ValueError, match="loss must be one of"):
        PromptTrainConfig(loss="pairwise").validate()


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("loss", ["contrastive", "listwise"])
def test_adapter_learns_which_demonstration_the_lm_prefers(loss: str) -> None:
    rng = np.random.default_rng(0)
    dim, pool_size, n = 16, 80, 240
    passages, queries = unit_rows(rng, pool_size, dim), unit_rows(rng, n, dim)
    hidden = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)  # the "LM" prefers rotated matches
    examples = []
    for i in range(n):
        cands = tuple(int(c) for c in rng.choice(pool_size, size=8, replace=False))
        scores = tuple(float(passages[c] @ (hidden @ queries[i])) for c in cands)
        examples.append(ScoredExample(f"q{i}", "en", cands, scores))
    config = PromptTrainConfig(rank=16, epochs=25, batch_size=32, learning_rate=1e-2, dev_fraction=0.25, loss=loss)
    targets = make_targets(examples, {"en": list(range(pool_size))}, config)
    adapter, history = train_prompt_adapter(queries, passages, targets, examples, "tiny@x", config)
    base = history[0]["dev_choice_gain"]
    best = max(row["dev_choice_gain"] for row in history)
    assert best > base + 0.1, history
    assert [r["epoch"] for r in history if r.get("kept")] != [0]  # a real gain clears the noise margin
    assert choice_gain(adapter, queries, passages, examples) > choice_gain(None, queries, passages, examples) + 0.1


def test_an_adapter_trained_on_noise_is_not_kept_over_the_plain_encoder() -> None:
    rng = np.random.default_rng(1)
    dim, pool_size, n = 16, 80, 200
    passages, queries = unit_rows(rng, pool_size, dim), unit_rows(rng, n, dim)
    examples = [ScoredExample(f"q{i}", "en", tuple(int(c) for c in rng.choice(pool_size, size=8, replace=False)),
                              tuple(float(x) for x in rng.normal(size=8))) for i in range(n)]
    config = PromptTrainConfig(rank=16, epochs=30, batch_size=32, learning_rate=1e-2, dev_fraction=0.3,
                               loss="contrastive", min_gain_z=2.0)
    targets = make_targets(examples, {"en": list(range(pool_size))}, config)
    adapter, history = train_prompt_adapter(queries, passages, targets, examples, "tiny@x", config)
    # Some noisy epoch beats epoch 0 on the held-out examples, but not beyond its standard error.
    assert max(r["dev_choice_gain"] for r in history[1:]) > history[0]["dev_choice_gain"]
    assert [r["epoch"] for r in history if r.get("kept")] == [0]
    np.testing.assert_allclose(adapter.apply(queries), queries, atol=1e-6)  # the plain encoder
    assert not beats_base(np.array([0.1, 0.2, -0.1]), np.array([0.0, 0.0, 0.0]), z=2.0)
    assert beats_base(np.array([0.5, 0.6, 0.55, 0.52]), np.zeros(4), z=2.0)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    from retriever.encoder import Encoder

    return Encoder(build_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc"))


def _retriever(pool: PromptPool, encoder, seed: int = 0):
    from retriever.adapter import QueryAdapter
    from retriever.prompt_retriever import PromptRetriever

    rng = np.random.default_rng(seed)
    adapter = QueryAdapter(rng.normal(size=(encoder.dim, 4)).astype(np.float32),
                           (0.1 * rng.normal(size=(4, encoder.dim))).astype(np.float32), encoder.identity)
    return PromptRetriever.build(pool, encoder, adapter)


def test_retriever_saves_loads_and_refuses_another_pool(tmp_path: Path, encoder) -> None:
    from retriever.prompt_retriever import load_prompt_retriever, save_prompt_retriever

    pool = make_pool()
    retriever = _retriever(pool, encoder)
    context = Context((Turn("A", "Привет! Как дела? 7"),))
    found = retriever.retrieve(context, "ru", 3)
    assert len(found) == 3 and all(d.language == "ru" for d in found)
    assert retriever.retrieve(context, "uk", 3) == []  # no pool for the language: nothing, not an error
    manifest = save_prompt_retriever(tmp_path / "r", retriever, lm_id="tiny-lm:fp32", config={}, metrics={},
                                     data_sha256="x")
    assert manifest.lineage == {"lm": "tiny-lm:fp32", "prompt-pool": pool.ref, "encoder": encoder.identity}
    loaded, _ = load_prompt_retriever(tmp_path / "r", pool, encoder)
    assert [d.id for d in loaded.retrieve(context, "ru", 3)] == [d.id for d in found]
    other = PromptPool(pool.demonstrations[:-1])
    with pytest.raises(ArtifactError, match="prompt-pool"):
        load_prompt_retriever(tmp_path / "r", other, encoder)
    with pytest.raises(ValueError, match="adapter"):
        save_prompt_retriever(tmp_path / "r2", replace_adapter(retriever), lm_id="x", config={}, metrics={},
                              data_sha256="x")


def replace_adapter(retriever):
    from retriever.prompt_retriever import PromptRetriever

    return PromptRetriever(retriever.pool, retriever.encoder, retriever.indexes, None)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    from core.lm.wrapper import DecoderLM

    return DecoderLM.from_dir(build_tiny_decoder(tmp_path_factory.mktemp("lm") / "lm"))


def _generator(tiny_lm, demos, **config):
    from core.config import GenerationConfig
    from dialog.generation.filters import FilterConfig, ReplyFilter
    from dialog.generation.generator import LMGenerator

    cfg = replace(GenerationConfig(), n_candidates=2, max_new_tokens=8, keep_truncated=True, **config)
    return LMGenerator(tiny_lm, cfg, ReplyFilter(FilterConfig(check_language=False), blocklists=[]),
                       prompts=None if demos is None else FixedDemos(demos), prompts_ref="prompt-retriever@abc")


def test_generation_prompt_holds_retrieved_demonstrations_best_last(tiny_lm) -> None:
    pool = make_pool()
    demos = [d for d in pool.demonstrations if d.language == "en"][:3]
    generator = _generator(tiny_lm, demos)
    context = Context((Turn("A", "Hello there, how are you today?"),))
    plan = generator.plan(context, "en")
    text = tiny_lm.decode(plan.ids)
    assert plan.demonstrations == 3 and not plan.fallback
    assert text.index(demos[2].reply) < text.index(demos[1].reply) < text.index(demos[0].reply)
    assert text.endswith("User: Hello there, how are you today?\nBot:")
    assert generator.version == f"{tiny_lm.lm_id}+prompt-retriever@abc"
    found = generator.candidates(context, "en", 2, time.monotonic() + 5)
    assert all(c.stage_scores["demonstrations"] == 3 and c.stage_scores["zero_shot_fallback"] == 0 for c in found)


def test_no_usable_demonstrations_falls_back_to_zero_shot_and_says_so(tiny_lm) -> None:
    context = Context((Turn("A", "Привет! Как дела?"),))
    for generator, reason in ((_generator(tiny_lm, []), "no demonstrations for language 'ru'"),
                              (_generator(tiny_lm, None), "no prompt retriever")):
        plan = generator.plan(context, "ru")
        assert plan.demonstrations == 0 and plan.fallback == reason
        assert tiny_lm.decode(plan.ids).strip() == "Собеседник: Привет! Как дела?\nТы:"
        found = generator.candidates(context, "ru", 2, time.monotonic() + 5)
        assert all(c.stage_scores["zero_shot_fallback"] == 1.0 for c in found)
    plain = _generator(tiny_lm, None, demonstrations=0).plan(context, "ru")
    assert plain.fallback == ""  # zero-shot was asked for: nothing to explain


    class Broken:
        def retrieve(self, context: Context, language: str, k: int):
            raise RuntimeError("index gone")

    broken = _generator(tiny_lm, [])
    broken.prompts = Broken()
    assert broken.plan(context, "ru").fallback == "prompt retrieval failed (RuntimeError)"


def test_prompt_over_budget_is_cut_by_whole_turns(tiny_lm) -> None:
    pool = make_pool()
    demos = [d for d in pool.demonstrations if d.language == "en"][:3]
    turns = ("What are you doing this weekend? " * 3, "Nothing much, maybe reading.", "Hello there, how are you?")
    context = Context(tuple(Turn("AB"[i % 2], t) for i, t in enumerate(turns)))
    last_two = "Bot: Nothing much, maybe reading.\nUser: Hello there, how are you?\nBot:"
    budget = len(tiny_lm.encode(last_two)) + 2
    plan = _generator(tiny_lm, demos, max_context_tokens=budget).plan(context, "en")
    text = tiny_lm.decode(plan.ids)
    assert len(plan.ids) <= budget
    assert plan.demonstrations == 0 and plan.fallback == "demonstrations did not fit the prompt budget"
    assert text.strip() == last_two  # the long oldest turn went whole; nothing was cut inside a turn


def test_load_prompts_is_zero_shot_without_a_trained_retriever(tmp_path: Path) -> None:
    from core.config import Settings
    from dialog.generation.source import load_prompts

    settings = Settings(home=tmp_path, models_dir=tmp_path / "models")
    assert load_prompts(settings) == (None, "")
    configured = replace(settings, generation=replace(settings.generation, prompt_retriever=str(tmp_path / "no")))
    with pytest.raises(ArtifactError, match="repliq train prompts"):
        load_prompts(configured)

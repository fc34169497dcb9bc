"""The packaged decoders, built into the shared model cache: SmolLM2 (English, fast) and Gemma (Russian)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.lm.scoring import score_replies, score_texts
from core.lm.wrapper import DecoderLM
from core.models.cache import prepare
from core.models.manifest import ModelManifest
from core.models.registry import ModelNotPrepared, resolve
from core.text import detect_language
from core.types import Context, Turn
from dialog.generation.filters import FilterConfig, ReplyFilter
from dialog.generation.generator import GenerationConfig, LMGenerator

pytestmark = pytest.mark.real


def prepared(name: str, models_dir: Path) -> Path:
    """The cached model directory, building it once per machine if needed (SmolLM2 ~30 s, Gemma ~90 s)."""
    try:
        return resolve(name, models_dir)
    except ModelNotPrepared:
        return prepare([name], models_dir)[0].path


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Every LM test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def smollm(models_dir: Path) -> DecoderLM:
    return DecoderLM.from_dir(prepared("smollm2-135m", models_dir))


@pytest.fixture(scope="module")
def gemma(models_dir: Path) -> DecoderLM:
    return DecoderLM.from_dir(prepared("gemma-3-270m", models_dir))


def shuffled(sentence: str) -> str:
    """A fixed derangement of the words: same tokens, no grammar."""
    words = sentence.rstrip(".").split()
    return " ".join(words[1::2] + words[0::2]) + "."


def test_manifest_describes_the_build(models_dir: Path) -> None:
    manifest = ModelManifest.load(prepared("smollm2-135m", models_dir))
    assert manifest.kind == "decoder" and manifest.languages == ["en"] and manifest.license == "Apache-2.0"
    assert {"gguf_sha256", "bos", "eos", "padding_side"} <= set(manifest.extra)
    assert not list((models_dir / "smollm2-135m").glob("*.gguf"))


def test_english_sentence_beats_its_shuffle(smollm: DecoderLM) -> None:
    sentences = ["The weather is great today, so let's go for a walk in the park.",
                 "I have two cats and a dog at home."]
    scores = score_texts(smollm, [*sentences, *map(shuffled, sentences)])
    for real, mixed in zip(scores[:2], scores[2:], strict=True):
        assert real.mean_logprob > mixed.mean_logprob + 1.0


def test_batched_equals_unbatched_on_smollm(smollm: DecoderLM) -> None:
    texts = ["Hi", "The weather is great today, so let's go for a walk in the park.", "Nice to meet you!",
             "Сегодня отличная погода."]
    batched = score_texts(smollm, texts, batch_size=4)
    for text, score in zip(texts, batched, strict=True):
        assert score.sum_logprob == pytest.approx(score_texts(smollm, [text])[0].sum_logprob, abs=1e-4)
    context = Context((Turn("user", "Do you have any pets?"),))
    replies = ["I have two cats and a dog at home.", "I don't know."]
    together = score_replies(smollm, context, replies, "en")
    alone = [score_replies(smollm, context, [r], "en")[0] for r in replies]
    assert [t.pmi_sum for t in together] == pytest.approx([a.pmi_sum for a in alone], abs=1e-4)


def test_generation_respects_its_budget(smollm: DecoderLM) -> None:
    generator = LMGenerator(smollm, GenerationConfig(n_candidates=16, max_new_tokens=48))
    context = Context((Turn("user", "Hi! What are you doing this weekend?"),))
    started = time.monotonic()
    found = generator.candidates(context, "en", 5, started + 1.5)
    assert time.monotonic() - started < 1.5 + 0.3
    assert all(c.source == "generated" and c.language == "en" for c in found)


def test_russian_sentence_beats_its_shuffle_on_gemma(gemma: DecoderLM) -> None:
    sentence = "Сегодня отличная погода, давай пойдём гулять в парк."
    real, mixed = score_texts(gemma, [sentence, shuffled(sentence)])
    assert real.mean_logprob > mixed.mean_logprob + 0.5


def test_gemma_answers_russian_in_russian(gemma: DecoderLM) -> None:
    import torch

    torch.manual_seed(0)
    config = GenerationConfig(n_candidates=4, max_new_tokens=24, temperature=0.7)
    generator = LMGenerator(gemma, config, ReplyFilter(FilterConfig(check_language=False)))
    context = Context((Turn("user", "Привет! Как прошли выходные?"),))
    found = generator.candidates(context, "ru", 4, time.monotonic() + 60)
    assert found, "Gemma produced no usable reply within 60 s"
    assert 2 * sum(detect_language(c.text, default="en") == "ru" for c in found) > len(found)

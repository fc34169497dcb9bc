"""Demonstrations reach the real LM in the prompt format it reads: a demonstration whose reply is the
gold reply raises that reply's log-probability over zero-shot (Gemma, two short sequences)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.lm.wrapper import DecoderLM, LMOptions
from core.types import Context, Turn
from retriever.prompt_pool import Demonstration
from retriever.prompt_scores import ScoringConfig, build_prompt, score_prompts

pytestmark = pytest.mark.real


def test_a_matching_demonstration_raises_the_gold_reply_under_gemma(models_dir: Path, one_torch_thread: None) -> None:
    from core.models.registry import resolve

    lm = DecoderLM.from_dir(resolve("gemma-3-270m", models_dir), LMOptions(threads=1))
    gold = "Я вчера весь вечер пёк пироги с капустой."
    context = Context((Turn("A", "Привет! Что делал вчера?"),))
    demo = Demonstration(0, "ru", ("А ты чем занимался вечером?",), gold, "test", "test:0", "train")
    config = ScoringConfig(max_prompt_tokens=256)
    prompts = [build_prompt(lm, [], context, "ru", config), build_prompt(lm, [demo], context, "ru", config)]
    assert prompts[1].startswith("Собеседник: А ты чем занимался вечером?\nТы: " + gold + "\n\n")
    zero, shown = score_prompts(lm, prompts, [gold, gold], ["ru", "ru"], None, config, progress=False)
    assert shown > zero + 0.5, (zero, shown)

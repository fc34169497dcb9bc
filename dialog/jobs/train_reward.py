"""`repliq train reward`: the reward models RL tunes against (specificity proxy, relevance, preference).

Each returns the metrics its model's manifest records; the model lands in ``out`` (default
``<home>/artifacts/reward-<kind>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.config import Settings
from core.executor import ExecutorConfig, make_executor
from core.job_configs import REWARD_KINDS, ProxyConfig, RewardJobConfig
from core.lm.bank_scores import score_bank
from core.lm.wrapper import DecoderLM, LMOptions, LMSpec
from core.training_corpora import BlenderCorpora, read_corpora, sample_pairs
from dialog.jobs.common import open_bank
from retriever.encoder import Encoder
from retriever.encoder_cache import index_backed_encoder
from rl.preference import read_preferences, train_preference_model
from rl.proxy import train_specificity_proxy
from rl.relevance import train_relevance_model
from rl.teachers import bank_teacher_targets


def train_reward(settings: Settings, config: RewardJobConfig, out: Path | None = None,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    if config.kind not in REWARD_KINDS:
        raise ValueError(f"reward kind must be one of {', '.join(REWARD_KINDS)}, got {config.kind!r}")
    out = out or settings.artifacts_dir / f"reward-{config.kind}"
    if config.kind == "preference":
        if config.data is None:
            raise ValueError("--kind preference needs --data prefs.jsonl (from `repliq ssa preferences`)")
        return train_preference_model(read_preferences(config.data), out_dir=out)[1]
    if config.kind == "relevance":
        dialogues = read_corpora(BlenderCorpora(russian_dialogues=config.russian))
        pairs = sample_pairs(dialogues, ("en", "ru"), config.relevance_pairs, settings.retrieval.context_turns, seed=0)
        return train_relevance_model(settings, pairs, out)[1]
    return train_specificity(settings, replace(config.proxy, teacher_lm=settings.lm.name), out, say, config.executor)


def train_specificity(settings: Settings, config: ProxyConfig, out: Path, say: Callable[[str], None] = print,
                      executor: ExecutorConfig | None = None) -> dict[str, Any]:
    """Score the bank with the teacher LM (resumable; only new or changed phrases; here or on Ray), then distil."""
    config.validate()
    options = LMOptions(dtype=settings.lm.dtype)
    encoder = None
    with open_bank(settings) as bank:
        with make_executor(executor) as scoring:  # a Ray started for the scoring stops before the distillation
            lm = (DecoderLM.from_cache(config.teacher_lm, settings.models_dir, options) if scoring.name == "local"
                  else LMSpec.of(config.teacher_lm, settings.models_dir, options))
            say(score_bank(bank, lm, executor=scoring).summary())
        texts, languages, values, length_model = bank_teacher_targets(bank, lm.lm_id, config.teacher)
        if config.inputs != "lexical":
            encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
    extra = {"teacher": {"lm_id": lm.lm_id, "definition": config.teacher, "source": "bank lm_scores"}}
    if length_model is not None:  # the RL judge residualizes with the same coefficients (rl.teachers)
        extra["teacher"]["length_model"] = length_model.to_json()
    _, metrics = train_specificity_proxy(settings, texts, values, out, languages=languages, config=config,
                                         encoder=encoder, extra_metrics=extra)
    return metrics

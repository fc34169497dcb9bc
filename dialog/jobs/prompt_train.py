"""`repliq train prompts`: the UPRISE chain, straight-line.

1. Demonstration pool from the train hash splits of chitchat, Topical-Chat and the Russian dialogues
   (``artifacts/prompt-pool``, its own manifest).
2. Training examples (other train-split conversations) and L candidate demonstrations each, scored by
   the frozen LM: mean log-probability of the gold reply after demonstration + context (content-cached,
   resumable: ``artifacts/prompt-scores/<lm>.json``).
3. A query adapter on the frozen default encoder, trained on best-scored positives against worst-scored
   and random negatives, and a FAISS index per language over the pool (``artifacts/prompt-retriever``,
   whose manifest names the LM that scored it and the pool's hash).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from core.atomic import atomic_write_json, jsonable, sha256_json
from core.config import Settings
from core.corpora import ContextPair, Dialogue
from core.executor import ExecutorConfig, make_executor
from core.lm.wrapper import DecoderLM
from retriever.prompt_data import PromptCorpora, read_sources, training_examples
from retriever.prompt_pool import POOL_DIR, PromptPool, build_pool, pool_entries, save_pool
from retriever.prompt_retriever import (
    RETRIEVER_DIR,
    PromptRetriever,
    base_encoder,
    encode_cached,
    save_prompt_retriever,
)
from retriever.prompt_scores import ExampleScores, ScoreCache, ScoringConfig, cache_path, load_lm, score_examples
from retriever.prompt_train import (
    LOSSES,
    PromptTrainConfig,
    ScoredExample,
    choice_gain,
    make_targets,
    train_prompt_adapter,
)

log = logging.getLogger("repliq.train")


@dataclass
class PromptJobConfig:
    corpora: PromptCorpora = field(default_factory=PromptCorpora)
    pool_per_source: int = 1000  # demonstrations per corpus
    examples_per_language: int = 40  # scored training examples per language
    lm: str = ""  # the scoring LM (default: [lm] name)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    train: PromptTrainConfig = field(default_factory=PromptTrainConfig)
    threads: int = 1
    seed: int = 0
    # Where the LM scoring runs: here (default) or on Ray actors (`--executor ray`).
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def make_pool(sources: dict[str, list[Dialogue]], per_source: int, seed: int) -> PromptPool:
    return build_pool(entry for name, dialogues in sources.items()
                      for entry in pool_entries(name, dialogues, per_source, seed=seed))


def as_scored(examples: Sequence[ContextPair], scores: Sequence[ExampleScores],
              context_turns: int) -> list[ScoredExample]:
    query = {e.context_id: e.context.as_query_text(context_turns) for e in examples}
    return [ScoredExample(query[s.example_id], s.language, s.candidates, s.scores) for s in scores]


def score_stage(settings: Settings, config: PromptJobConfig, lm: DecoderLM,
                sources: dict[str, list[Dialogue]]) -> tuple[PromptPool, list[ContextPair], list[ExampleScores]]:
    """Stages 1-2: save the pool, then score (cached) L demonstrations per training example."""
    pool = make_pool(sources, config.pool_per_source, config.seed)
    save_pool(settings.artifacts_dir / POOL_DIR, pool,
              {"pool_per_source": config.pool_per_source, "seed": config.seed, **jsonable(asdict(config.corpora))})
    log.info("prompt pool: %d demonstrations %s", len(pool), pool.counts())
    examples = training_examples((d for ds in sources.values() for d in ds), config.examples_per_language,
                                 config.seed, config.scoring.context_turns)
    cache = ScoreCache(cache_path(settings.artifacts_dir, lm.lm_id))
    with make_executor(config.executor) as executor:
        scores = score_examples(lm, pool, examples, config.scoring, cache, executor=executor)
    return pool, examples, scores


def run_train_prompts(settings: Settings, config: PromptJobConfig, encoder: Any = None,
                      lm: DecoderLM | None = None) -> dict[str, Any]:
    """The whole chain; returns the report written beside the retriever."""
    sources = read_sources(config.corpora)
    lm = lm or load_lm(settings.models_dir, config.lm or settings.lm.name, config.threads)
    pool, examples, scores = score_stage(settings, config, lm, sources)
    if len(scores) < 2:
        raise ValueError(f"only {len(scores)} training examples were scored; raise --examples or add corpora")
    scored = as_scored(examples, scores, config.scoring.context_turns)
    return fit_and_save(settings, config, pool, scored, scores, lm.lm_id, encoder)


def fit_and_save(settings: Settings, config: PromptJobConfig, pool: PromptPool, scored: list[ScoredExample],
                 scores: Sequence[ExampleScores], lm_id: str, encoder: Any = None) -> dict[str, Any]:
    """Train on the scored examples, save ``artifacts/prompt-retriever`` and its ``report.json``."""
    encoder = encoder or base_encoder(settings)
    passages = encode_cached(settings, encoder, [d.passage_text for d in pool.demonstrations], "passage")
    queries = encode_cached(settings, encoder, [s.query for s in scored], "query")
    ids_by_language = {lang: pool.ids_of(lang) for lang in sorted({d.language for d in pool.demonstrations})}
    targets = make_targets(scored, ids_by_language, config.train)
    fits = {}
    for loss in (LOSSES if config.train.loss == "auto" else (config.train.loss,)):
        fits[loss] = train_prompt_adapter(queries, passages, targets, scored, str(encoder.identity),
                                          replace(config.train, loss=loss),
                                          log=lambda row, loss=loss: log.info("prompt adapter (%s) %s", loss, row))
    kept = {loss: next(row for row in history if row.get("kept")) for loss, (_, history) in fits.items()}
    # "auto": the loss whose kept epoch has the better held-out choice gain (the held-out training examples).
    chosen = max(fits, key=lambda loss: kept[loss]["dev_choice_gain"])
    adapter, history = fits[chosen]
    zero_gap = [float(np.mean(s.scores) - s.zero_shot) for s in scores]
    metrics = {
        "examples": len(scored), "candidates_per_example": config.scoring.candidates,
        "train_choice_gain_base": choice_gain(None, queries, passages, scored),
        # What a retriever that always picked the LM's favourite of the L candidates would gain: the ceiling.
        "train_choice_gain_oracle": float(np.mean([max(s.scores) - np.mean(s.scores) for s in scored])),
        "train_choice_gain_adapter": choice_gain(adapter, queries, passages, scored),
        "best_dev_choice_gain": max(row["dev_choice_gain"] for row in history),
        "dev_choice_gain_base": history[0]["dev_choice_gain"],
        # Epoch 0 is the plain encoder: a trained epoch is kept only when it beats it beyond noise.
        "kept_epoch": int(kept[chosen]["epoch"]),
        "kept_dev_choice_gain": kept[chosen]["dev_choice_gain"],
        "mean_one_demo_minus_zero_shot": float(np.mean(zero_gap)),
        "loss": chosen,
        "kept_dev_choice_gain_by_loss": {loss: row["dev_choice_gain"] for loss, row in kept.items()},
    }
    retriever = PromptRetriever.build(pool, encoder, adapter, passages, config.scoring.context_turns)
    data_hash = sha256_json([asdict(s) for s in scored])
    out = settings.artifacts_dir / RETRIEVER_DIR
    job = jsonable(asdict(config))
    manifest = save_prompt_retriever(out, retriever, lm_id=lm_id, config=job, metrics=metrics, data_sha256=data_hash)
    report = {"retriever": manifest.ref, "pool": pool.ref, "pool_counts": pool.counts(), "lm": lm_id,
              "metrics": metrics, "history": history, "config": job}
    atomic_write_json(settings.artifacts_dir / (RETRIEVER_DIR + "-report") / "report.json", report)
    return report

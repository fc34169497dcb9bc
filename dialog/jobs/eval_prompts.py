"""`repliq eval prompts`: does the UPRISE-style prompt retriever pick demonstrations that help the LM?

On dev-split contexts of each language (never seen by the pool, which is train-only, nor by the
retriever's training), the gold reply's mean per-token log-probability under the LM is measured with
K demonstrations chosen five ways:

* ``uprise``: the trained prompt retriever (base encoder + prompt adapter);
* ``base``: the same encoder without the adapter (what the LM-score training added);
* ``bm25``: the pool excerpts sharing the most (BM25-weighted) words with the dialogue;
* ``random``: K random excerpts of the language (seeded per context);
* ``none``: zero-shot.

The comparison is paired (same contexts, same gold replies), so the report gives, per language and
LM, the mean of ``uprise - other`` per context with a 95% percentile-bootstrap interval over contexts.
``--transfer-lm`` scores the very same prompts with another LM (UPRISE's cross-LM transfer claim).
Scores go through the content-keyed prompt-score cache, so a rerun only scores what is new.
``--generate N`` also samples replies with each kind's demonstrations and reports their relevance,
specificity, filter pass share and how often the served blender picks them (``rl.generated_quality``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json
from core.config import Settings
from core.corpora import ContextPair
from core.figures import png_bytes
from core.lm.wrapper import DecoderLM
from core.text import word_tokens
from retriever.prompt_data import PromptCorpora, read_sources, training_examples
from retriever.prompt_pool import POOL_DIR, Demonstration, PromptPool, load_pool
from retriever.prompt_retriever import RETRIEVER_DIR, PromptRetriever, base_encoder, load_prompt_retriever
from retriever.prompt_scores import ScoreCache, ScoringConfig, build_prompt, cache_path, load_lm, score_prompts
from rl.generated_quality import (
    CACHE_FILE,
    Generate,
    GenerationEvalConfig,
    Ranker,
    bootstrap_mean,
    kinds_table,
    picked_generated,
    sample_kinds,
    summarize_kinds,
)

CONDITIONS = ("uprise", "base", "bm25", "random", "none")


@dataclass
class EvalPromptsConfig:
    corpora: PromptCorpora = field(default_factory=PromptCorpora)
    contexts_per_language: int = 60
    split: str = "dev"  # the conversations' hash split: choose on dev, confirm once on test
    k: int = 3
    lm: str = ""
    transfer_lms: list[str] = field(default_factory=list)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    n_boot: int = 2000
    threads: int = 1
    seed: int = 0
    out: Path | None = None
    # Which prompt choices to score ("uprise" always; drop "base" to save LM time).
    conditions: tuple[str, ...] = CONDITIONS
    # Sampled replies per prompt kind (`--generate N`); off unless contexts_per_language > 0.
    generation: GenerationEvalConfig = field(default_factory=GenerationEvalConfig)

    def validate(self) -> None:
        if self.split not in ("dev", "test"):
            raise ValueError(f"evaluate prompts on the dev or test split (the pool is train), got {self.split!r}")
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown or "uprise" not in self.conditions or len(self.conditions) < 2:
            raise ValueError(f"conditions must include uprise and another of {', '.join(CONDITIONS)}; "
                             f"got {', '.join(self.conditions)}")


def bm25_choices(pool: PromptPool, contexts: Sequence[ContextPair], k: int, context_turns: int) -> list[list[int]]:
    """Top-k pool ids of each context's language by BM25 of the dialogue words against each excerpt."""
    from ranker.bm25 import bm25_many
    from ranker.idf import IdfTable

    out: list[list[int]] = [[] for _ in contexts]
    for language in sorted({c.language for c in contexts}):
        ids = pool.ids_of(language)
        if not ids:
            continue
        texts = [pool.by_id(i).passage_text for i in ids]
        idf = IdfTable.build(texts)
        rows = [i for i, c in enumerate(contexts) if c.language == language]
        queries = [set(word_tokens(contexts[i].context.as_query_text(context_turns))) for i in rows]
        matrix = np.array([bm25_many(queries, word_tokens(text), idf) for text in texts]).T  # (queries, pool)
        for row, scores in zip(rows, matrix, strict=True):
            out[row] = [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]
    return out


def random_choices(pool: PromptPool, contexts: Sequence[ContextPair], k: int, seed: int) -> list[list[int]]:
    choices = []
    for c in contexts:
        ids = pool.ids_of(c.language)
        choices.append(random.Random(f"{seed}:random:{c.context_id}").sample(ids, min(k, len(ids))))
    return choices


def choose(retriever: PromptRetriever, base: PromptRetriever, pool: PromptPool, contexts: Sequence[ContextPair],
           config: EvalPromptsConfig) -> dict[str, list[list[Demonstration]]]:
    """Each condition's demonstrations per context, best first."""
    langs = [c.language for c in contexts]
    ctxs = [c.context for c in contexts]
    as_demos = [[pool.by_id(i) for i in ids] for ids in bm25_choices(pool, contexts, config.k,
                                                                     config.scoring.context_turns)]
    return {"uprise": retriever.retrieve_many(ctxs, langs, config.k),
            "base": base.retrieve_many(ctxs, langs, config.k),
            "bm25": as_demos,
            "random": [[pool.by_id(i) for i in ids] for ids in random_choices(pool, contexts, config.k, config.seed)],
            "none": [[] for _ in contexts]}


def score_conditions(lm: DecoderLM, contexts: Sequence[ContextPair], chosen: dict[str, list[list[Demonstration]]],
                     cache: ScoreCache, config: EvalPromptsConfig) -> dict[str, np.ndarray]:
    """Gold-reply mean log-prob per context under each condition's prompt (most useful demo last)."""
    prompts, replies, langs = [], [], []
    for name in chosen:
        for c, demos in zip(contexts, chosen[name], strict=True):
            prompts.append(build_prompt(lm, list(reversed(demos)), c.context, c.language, config.scoring))
            replies.append(c.response)
            langs.append(c.language)
    scores = np.array(score_prompts(lm, prompts, replies, langs, cache, config.scoring, f"eval prompts ({lm.lm_id})"))
    n = len(contexts)
    return {name: scores[i * n:(i + 1) * n] for i, name in enumerate(chosen)}


def summarize(scores: dict[str, np.ndarray], languages: np.ndarray, config: EvalPromptsConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for language in sorted(set(languages.tolist())):
        mask = languages == language
        row: dict[str, Any] = {"contexts": int(mask.sum()),
                               "mean_logprob": {k: float(v[mask].mean()) for k, v in scores.items()}}
        for other in [c for c in CONDITIONS[1:] if c in scores]:
            mean, low, high = bootstrap_mean(scores["uprise"][mask] - scores[other][mask], config.n_boot, config.seed)
            row[f"uprise_minus_{other}"] = {"mean": mean, "ci95": [low, high], "excludes_0": low > 0 or high < 0}
        out[language] = row
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| LM | lang | n | none | random | bm25 | base | uprise | uprise−random [95% CI] | uprise−none | "
             "uprise−bm25 | uprise−base |", "|" + "---|" * 12]
    for lm_id, per_language in results.items():
        for language, row in per_language.items():
            m = row["mean_logprob"]

            def ci(name: str, r: dict[str, Any] = row) -> str:
                d = r.get(f"uprise_minus_{name}")
                if d is None:
                    return "–"
                return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

            means = " | ".join(f"{m[c]:.3f}" if c in m else "–" for c in ("none", "random", "bm25", "base", "uprise"))
            deltas = " | ".join(ci(c) for c in ("random", "none", "bm25", "base"))
            lines.append(f"| {lm_id} | {language} | {row['contexts']} | {means} | {deltas} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]]) -> bytes:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(lm_id, lang) for lm_id, per in results.items() for lang in per]
    others = [c for c in CONDITIONS[1:] if f"uprise_minus_{c}" in results[groups[0][0]][groups[0][1]]]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(others)
    for j, other in enumerate(others):
        rows = [results[lm][lang][f"uprise_minus_{other}"] for lm, lang in groups]
        means = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["mean"] for r in rows]])
        ax.bar(np.arange(len(groups)) + j * width, means, width, yerr=err, capsize=3, label=f"uprise − {other}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(groups)) + width * (len(others) - 1) / 2)
    ax.set_xticklabels([f"{lm.split('@')[0]}\n{lang}" for lm, lang in groups], fontsize=8)
    ax.set_ylabel("Δ gold mean log-prob / token (95% CI)")
    ax.set_title("UPRISE demonstrations vs other prompt choices")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def generated_by_kind(settings: Settings, config: EvalPromptsConfig, contexts: Sequence[ContextPair],
                      chosen: dict[str, list[list[Demonstration]]], lm: DecoderLM, generate: Generate,
                      ranker: Ranker, out: Path) -> dict[str, Any]:
    """Sample replies per kind on the first N contexts of each language, then score and rank them."""
    from rl.relevance import workspace_relevance
    from rl.teacher import TeacherScorer

    n = config.generation.contexts_per_language
    rows = [i for language in sorted({c.language for c in contexts})
            for i in [j for j, c in enumerate(contexts) if c.language == language][:n]]
    subset = [contexts[i] for i in rows]
    picks = {kind: [chosen[kind][i] for i in rows] for kind in chosen if kind != "base"}
    requested = settings.generation.n_candidates
    records = sample_kinds(subset, picks, generate, lm.lm_id, requested, config.generation, out / CACHE_FILE)
    picked = picked_generated(records, subset, ranker)
    relevance, relevance_ref = workspace_relevance(settings)
    summary = summarize_kinds(records, subset, picked, relevance.score, TeacherScorer(lm), config.generation)
    return {"contexts_per_language": n, "requested_per_context": requested, "ranker": ranker.version,
            "relevance_model": relevance_ref, "specificity_teacher": f"{lm.lm_id}:uncond_surprisal",
            "by_kind": summary, "table": kinds_table(summary),
            "examples": [{"kind": r.kind, "language": r.language, "context_id": r.context_id,
                          "reply": r.kept[0]["text"], "picked": p} for r, p in zip(records, picked, strict=True)
                         if r.kept][:40]}


def run_eval_prompts(settings: Settings, config: EvalPromptsConfig, encoder: Any = None,
                     lms: Sequence[DecoderLM] | None = None, generate: Generate | None = None,
                     ranker: Ranker | None = None) -> dict[str, Any]:
    """Score every condition with the main LM and each transfer LM; write report.json, report.png.

    With ``config.generation.contexts_per_language`` > 0, ``generate`` (``dialog.generation.prompt_kinds``)
    and ``ranker`` (``dialog.serving.replay``) also give the generated-reply table by prompt kind."""
    config.validate()
    config.generation.validate()
    if config.generation.contexts_per_language and (generate is None or ranker is None):
        raise ValueError("generated replies by prompt kind need a generator and the served ranker")
    pool, _ = load_pool(settings.artifacts_dir / POOL_DIR)
    encoder = encoder or base_encoder(settings)
    retriever, manifest = load_prompt_retriever(settings.artifacts_dir / RETRIEVER_DIR, pool, encoder)
    base = PromptRetriever(pool, encoder, retriever.indexes, None, retriever.context_turns)
    sources = read_sources(config.corpora)
    contexts = training_examples((d for ds in sources.values() for d in ds), config.contexts_per_language,
                                 config.seed, config.scoring.context_turns, split=config.split)
    if not contexts:
        raise ValueError("no dev contexts in the given corpora; give --russian / --topicalchat or enable chitchat")
    chosen = {k: v for k, v in choose(retriever, base, pool, contexts, config).items() if k in config.conditions}
    languages = np.array([c.language for c in contexts])
    if lms is None:
        lms = [load_lm(settings.models_dir, name, config.threads)
               for name in [config.lm or settings.lm.name, *config.transfer_lms]]
    results: dict[str, dict[str, Any]] = {}
    for lm in lms:
        cache = ScoreCache(cache_path(settings.artifacts_dir, lm.lm_id))
        results[lm.lm_id] = summarize(score_conditions(lm, contexts, chosen, cache, config), languages, config)
    report = {"retriever": manifest.ref, "trained_on_lm": manifest.lineage.get("lm"), "pool": pool.ref,
              "split": config.split,
              "k": config.k, "contexts_per_language": {k: int((languages == k).sum()) for k in sorted(set(languages))},
              "results": results, "table": table(results)}
    out = Path(config.out or settings.artifacts_dir / "eval-prompts")
    if config.generation.contexts_per_language:
        assert generate is not None and ranker is not None
        report["generation"] = generated_by_kind(settings, config, contexts, chosen, lms[0], generate, ranker, out)
    atomic_write_json(Path(out) / "report.json", report)
    atomic_write_bytes(Path(out) / "report.png", plot(results))
    return report

"""`repliq eval teachers`: score specificity-teacher candidates on the dev human signals, beyond reply length.

Straight-line: read the dev-split signals (``rl.specificity_signals``), LM-score every (context, reply)
through the teacher cache (a rerun or a killed run rescores nothing it has seen), fit the residualized
teacher's length model on *train* replies, compute every candidate's partial Spearman given length with
bootstrap intervals, pick the teacher by the issue-14 rule, and write ``report.json`` and ``table.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import shipped_dir
from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.config import Settings
from core.figures import png_bytes
from core.job_configs import DEFAULT_TEACHER
from core.lm.wrapper import DecoderLM, LMOptions
from ranker.blender import IDF_NAME
from ranker.idf import IdfTable
from rl.specificity_signals import SignalSources, human_signals, train_replies
from rl.specificity_study import (
    SOURCE_WEIGHTS,
    LengthModel,
    choose_teacher,
    markdown_table,
    study_candidates,
    study_table,
)
from rl.teacher import TeacherCache, score_with_cache

REPORT_DIR = "eval-teachers"


@dataclass
class TeacherEvalConfig:
    """`repliq eval teachers`: which specificity teacher adds most beyond length on the dev human signals."""

    # Folder holding convai2/, topicalchat_valid/ and ru/koziev_anekdot_dialogues.tar.xz (the shared data).
    data: Path | None = None
    # tests/data/specificity_hand_labels.jsonl in a checkout; None leaves the hand labels out.
    hand_labels: Path | None = None
    chitchat: bool = True
    # Replies per signal at most (LM scoring is the cost), and train replies per language for the length model.
    limit: int = 1500
    train_per_language: int = 400
    resamples: int = 1000
    # IDF table for NIDF rarity; None takes the shipped blender's.
    idf: Path | None = None
    batch_size: int = 16
    seed: int = 0
    # None: <home>/artifacts/eval-teachers.
    out: Path | None = None


def signal_sources(config: TeacherEvalConfig, context_turns: int) -> SignalSources:
    data = config.data
    russian = data / "ru" / "koziev_anekdot_dialogues.tar.xz" if data is not None else None
    return SignalSources(
        convai2=data / "convai2" if data is not None and (data / "convai2").is_dir() else None,
        topicalchat=data / "topicalchat_valid" if data is not None and (data / "topicalchat_valid").is_dir() else None,
        russian=russian if russian is not None and russian.is_file() else None,
        hand_labels=config.hand_labels, chitchat=config.chitchat, limit=config.limit, context_turns=context_turns,
        seed=config.seed)


def _idf(config: TeacherEvalConfig) -> tuple[IdfTable | None, str]:
    path = config.idf or shipped_dir("blender") / IDF_NAME
    if not Path(path).is_file():
        return None, f"no IDF table at {path} (NIDF candidates left out)"
    return IdfTable.load(Path(path)), str(path)


def fit_length_model(lm: Any, cache: TeacherCache, sources: SignalSources, per_language: int,
                     batch_size: int) -> tuple[LengthModel, dict[str, int]]:
    texts, languages = train_replies(sources, per_language)
    scores = score_with_cache(lm, [None] * len(texts), texts, languages, cache, batch_size=batch_size)
    surprisal = np.array([-s.unconditional.sum_logprob for s in scores])
    n_tokens = np.array([s.unconditional.n_tokens for s in scores], dtype=np.float64)
    return LengthModel.fit(surprisal, n_tokens, languages), {lang: languages.count(lang) for lang in set(languages)}


def eval_teachers(settings: Settings, config: TeacherEvalConfig, lm: Any | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """The study; ``lm`` overrides loading ``[lm] name`` from the model cache (tests pass a tiny one)."""
    out = config.out or settings.artifacts_dir / REPORT_DIR
    sources = signal_sources(config, settings.retrieval.context_turns)
    signals = human_signals(sources, say)
    if not signals:
        raise ValueError("no human signal to judge teachers on: pass --data (convai2/, topicalchat_valid/) and/or "
                         "--hand-labels, or keep chitchat enabled")
    if lm is None:
        lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, LMOptions(dtype=settings.lm.dtype))
    cache = TeacherCache(settings.models_dir.parent / "teacher_cache.jsonl")
    started = time.perf_counter()
    length_model, train_counts = fit_length_model(lm, cache, sources, config.train_per_language, config.batch_size)
    say(f"length model fitted on train replies {train_counts}")
    idf, idf_source = _idf(config)
    values = {}
    for signal in signals:
        scores = score_with_cache(lm, signal.contexts, signal.replies, signal.languages, cache,
                                  context_turns=sources.context_turns, batch_size=config.batch_size,
                                  progress=lambda done, total, name=signal.name: say(f"{name}: scored {done}/{total}"))
        values[signal.name] = study_candidates(scores, signal.replies, signal.languages, length_model, idf)
    scoring_s = time.perf_counter() - started
    table = study_table(values, signals, config.resamples, config.seed)
    names = [s.name for s in signals]
    choice = choose_teacher(table, names, SOURCE_WEIGHTS)
    report = {"lm_id": lm.lm_id, "signals": {s.name: len(s.replies) for s in signals}, "split": "dev",
              "control": "length_tokens (the teacher LM's token count)", "weights": SOURCE_WEIGHTS,
              "length_model": {"coefficients": length_model.to_json(), "train_replies": train_counts,
                               "form": "surprisal ~ 1 + tokens + log(1 + tokens), per language"},
              "idf": idf_source, "table": table, "choice": choice, "current_default": DEFAULT_TEACHER,
              "scoring_s": scoring_s, "resamples": config.resamples, "seed": config.seed}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "table.md", markdown_table(table, names, choice))
    atomic_write_bytes(out / "partial_spearman.png", forest_png(table, names, choice["ranking"]))
    say(f"chosen teacher: {choice['chosen']} (covers {len(choice['candidates'][choice['chosen']]['covers'])} of "
        f"{len(choice['informative'])} signals where some candidate beats length); report in {out}")
    return report


def forest_png(table: dict[str, Any], signals: list[str], candidates: list[str]) -> bytes:
    """One panel per signal: each candidate's partial Spearman given length with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(signals), figsize=(2.2 * len(signals) + 2, 0.35 * len(candidates) + 1.5),
                             sharey=True, squeeze=False)
    rows = np.arange(len(candidates))
    for ax, signal in zip(axes[0], signals, strict=True):
        cells = [table[name][signal] for name in candidates]
        point = np.array([c["partial"] for c in cells])
        low = np.array([c["partial_ci95"][0] for c in cells])
        high = np.array([c["partial_ci95"][1] for c in cells])
        # A percentile interval need not contain its point estimate: clip, and draw NaN cells as empty.
        spread = np.nan_to_num(np.clip([point - low, high - point], 0.0, None))
        ax.errorbar(point, rows, xerr=spread, fmt="o", markersize=3)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(signal, fontsize=8)
    axes[0][0].set_yticks(rows, candidates, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("partial Spearman given reply length, 95% bootstrap interval (dev signals)", fontsize=9)
    return png_bytes(fig)

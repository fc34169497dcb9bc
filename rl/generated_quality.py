"""Generated replies by prompt kind: are replies from better demonstrations relevant, specific and chosen?

The log-probability table of `repliq eval prompts` scores the *gold* reply. What a user meets is a
*sampled* reply, so ``--generate N`` also samples replies for N dev contexts per language with each
kind's demonstrations (the same choice the log-probability table scored) through the served
generator and filters, and reports per kind and language:

* ``yield``: kept replies per requested sample; ``pass_share``: the share of finished samples that
  pass the serving filters (the rest were empty, echoes, loops, wrong language, blocklisted);
* ``relevance``: the workspace's relevance model (the RL reward's relevance head), P(the reply fits);
* ``specificity``: the LM teacher's value for the reply (unconditional surprisal, the RL reward's
  teacher), higher = more specific;
* ``picked``: the share of contexts whose served answer is generated, when the kind's replies join the
  bank pool of the served pipeline (retrieval, hygiene, the workspace's blender).

Attempts are cached in ``generated.jsonl`` beside the report, one line per (LM, kind, context,
demonstrations), so a killed run resumes and a rerun with another blender re-ranks without sampling.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.corpora import ContextPair
from core.types import SOURCE_GENERATED, Candidate, Context
from retriever.prompt_pool import Demonstration

CACHE_FILE = "generated.jsonl"


@dataclass
class GenerationEvalConfig:
    contexts_per_language: int = 0  # dev contexts per language that get sampled replies (0 = skip)
    budget_s: float = 30.0  # wall-clock budget per (kind, context) attempt
    n_boot: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.contexts_per_language < 0 or self.budget_s <= 0 or self.n_boot < 100:
            raise ValueError(f"need contexts_per_language >= 0, budget_s > 0 and n_boot >= 100; got {self}")


class AttemptLike(Protocol):
    sampled: int
    kept: list[Candidate]
    dropped: dict[str, int]


Generate = Callable[[Context, str, Sequence[Demonstration], float], AttemptLike]
Score = Callable[[Sequence[Context], Sequence[str]], np.ndarray]


class Ranker(Protocol):
    version: str

    def rank(self, context: Context, language: str, extra: Sequence[Candidate]) -> list[Candidate]: ...


@dataclass(frozen=True)
class Record:
    kind: str
    context_id: str
    language: str
    requested: int
    sampled: int
    kept: list[dict[str, Any]]  # {"text", "stage_scores"}
    dropped: dict[str, int]


RECORD_FORMAT = 2  # 2: kept replies carry all their stage scores (1 had gen_logprob only)


def _key(lm_version: str, kind: str, context_id: str, demos: Sequence[Demonstration], requested: int) -> str:
    # The demonstrations by content: a rebuilt pool reuses ids for other excerpts.
    shown = [[d.conversation_id, d.passage_text, d.reply] for d in demos]
    payload = json.dumps([RECORD_FORMAT, lm_version, kind, context_id, shown, requested], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def read_cache(path: Path) -> dict[str, Record]:
    """Cached attempts; a line cut by a kill (the last one) is ignored and sampled again."""
    out: dict[str, Record] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            out[row["key"]] = Record(**row["record"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _append(path: Path, key: str, record: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": key, "record": record.__dict__}, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def sample_kinds(contexts: Sequence[ContextPair], chosen: dict[str, list[list[Demonstration]]], generate: Generate,
                 lm_version: str, requested: int, config: GenerationEvalConfig, cache_path: Path,
                 progress: bool = True) -> list[Record]:
    """One generation attempt per (kind, context), cached and resumable."""
    from tqdm import tqdm

    cache = read_cache(cache_path)
    records: list[Record] = []
    todo = [(kind, i) for kind in chosen for i in range(len(contexts))]
    for kind, i in tqdm(todo, desc="generating by prompt kind", unit="reply", disable=not progress):
        pair, demos = contexts[i], chosen[kind][i]
        key = _key(lm_version, kind, pair.context_id, demos, requested)
        if key not in cache:
            attempt = generate(pair.context, pair.language, demos, time.monotonic() + config.budget_s)
            # Every stage score is kept: the blender's generation features (``gen_logprob``, ``gen_pmi``) read them.
            kept = [{"text": c.text, "stage_scores": {k: float(v) for k, v in c.stage_scores.items()}}
                    for c in attempt.kept]
            cache[key] = Record(kind, pair.context_id, pair.language, requested, attempt.sampled, kept,
                                dict(attempt.dropped))
            _append(cache_path, key, cache[key])
        records.append(cache[key])
    return records


def bootstrap_mean(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean and its 95% percentile-bootstrap interval, resampling rows (contexts; per-context differences for a
    paired comparison)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        raise ValueError(f"need at least 2 contexts for a bootstrap interval, got {len(values)}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def _mean_ci(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(x) < 2:
        return {"mean": float(x.mean()) if len(x) else None, "ci95": None, "n": len(x)}
    mean, low, high = bootstrap_mean(x, n_boot, seed)
    return {"mean": mean, "ci95": [low, high], "n": len(x)}


def picked_generated(records: Sequence[Record], contexts: Sequence[ContextPair], ranker: Ranker) -> list[bool]:
    """Per record: is the served answer generated when its kept replies join the bank pool?"""
    by_id = {c.context_id: c for c in contexts}
    out = []
    for r in records:
        extra = [Candidate(k["text"], SOURCE_GENERATED, r.language, stage_scores=dict(k["stage_scores"]))
                 for k in r.kept]
        ranked = ranker.rank(by_id[r.context_id].context, r.language, extra) if extra else []
        out.append(bool(ranked) and ranked[0].source == SOURCE_GENERATED)
    return out


def summarize_kinds(records: Sequence[Record], contexts: Sequence[ContextPair], picked: Sequence[bool],
                    relevance: Score | None, specificity: Score | None, config: GenerationEvalConfig
                    ) -> dict[str, dict[str, Any]]:
    """Per kind and language: yield, pass share, relevance, specificity and the picked share."""
    by_id = {c.context_id: c for c in contexts}
    texts = [(i, k["text"]) for i, r in enumerate(records) for k in r.kept]
    ctxs = [by_id[records[i].context_id].context for i, _ in texts]
    rel = relevance(ctxs, [t for _, t in texts]) if relevance is not None and texts else np.full(len(texts), np.nan)
    spec = (specificity(ctxs, [t for _, t in texts]) if specificity is not None and texts
            else np.full(len(texts), np.nan))
    per_record: dict[int, list[tuple[float, float]]] = {}
    for (i, _), a, b in zip(texts, rel, spec, strict=True):
        per_record.setdefault(i, []).append((float(a), float(b)))
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r.kind for r in records):
        out[kind] = {}
        for language in sorted({r.language for r in records}):
            rows = [i for i, r in enumerate(records) if r.kind == kind and r.language == language]
            requested = sum(records[i].requested for i in rows)
            sampled = sum(records[i].sampled for i in rows)
            kept = sum(len(records[i].kept) for i in rows)
            scored = [per_record[i] for i in rows if i in per_record]  # one mean per context with a reply
            out[kind][language] = {
                "contexts": len(rows), "requested": requested, "finished": sampled, "kept": kept,
                "yield": kept / requested if requested else None,
                "pass_share": kept / sampled if sampled else None,
                "relevance": _mean_ci([np.mean([a for a, _ in s]) for s in scored], config.n_boot, config.seed),
                "specificity": _mean_ci([np.mean([b for _, b in s]) for s in scored], config.n_boot, config.seed),
                "picked": float(np.mean([picked[i] for i in rows])) if rows else None,
                "picked_when_offered": (float(np.mean([picked[i] for i in rows if records[i].kept]))
                                        if any(records[i].kept for i in rows) else None),
                "dropped": dict(sum((Counter(records[i].dropped) for i in rows), Counter())),
            }
    return out


def kinds_table(summary: dict[str, dict[str, Any]]) -> str:
    def fmt(d: dict[str, Any]) -> str:
        if d["mean"] is None:
            return "–"
        return f"{d['mean']:.3f}" + (f" [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d["ci95"] else "")

    def share(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    lines = ["| kind | lang | contexts | yield | pass share | relevance [95% CI] | specificity [95% CI] | "
             "picked | picked when offered |", "|" + "---|" * 9]
    for kind, per in summary.items():
        for language, row in per.items():
            lines.append(f"| {kind} | {language} | {row['contexts']} | {share(row['yield'])} | "
                         f"{share(row['pass_share'])} | {fmt(row['relevance'])} | {fmt(row['specificity'])} | "
                         f"{share(row['picked'])} | {share(row['picked_when_offered'])} |")
    return "\n".join(lines)

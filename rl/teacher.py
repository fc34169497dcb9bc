"""The teacher: specificity targets derived from decoder-LM scores, and the study that picks one.

Every candidate is oriented so that *higher should mean more specific* if its hypothesis holds; the
study reports signed correlations, so a negative number means the hypothesis failed on that signal.

* ``uncond_surprisal``  −log p(r): information content of the reply alone (forward perplexity, sum form).
* ``uncond_log_ppl``    −mean log p(r): the per-token form, i.e. log perplexity.
* ``cond_surprisal``    −log p(r | c); ``cond_log_ppl`` its per-token form.
* ``pmi``               log p(r | c) − log p(r): how much the dialogue explains the reply; generic replies
                        ("ok", "I don't know") fit every dialogue about equally and score near 0.
* ``pmi_per_token``     the same with per-token means (does not favour long replies).
* ``pmi_fraction``      pmi / −log p(r): the share of the reply's information the context accounts for.
* ``length_tokens``     the reply's token count: a length-only baseline every LM score must beat.

Why a study at all: DialogRPT found the forward perplexity of a single reply predicts human preference
at chance, while Meena's perplexity–SSA link holds between models, not between replies. So the
definition is chosen by its correlation with human signals (``bench/bench_rewards.py``, ``docs/rewards.md``).

Teacher scores are slow (a 270M LM on CPU), so :class:`TeacherCache` keeps them on disk by content:
reruns and retraining of the proxy never rescore a (model, context, reply) they have seen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from core.atomic import atomic_write_text
from core.executor import BatchFn, Executor, LocalExecutor, WorkerFactory
from core.job_configs import DEFAULT_TEACHER
from core.lm.bank_scores import ScoringBank as ScoringBankLike
from core.lm.scoring import LMScore, ReplyScore, score_pairs, score_texts
from core.lm.wrapper import AnyLM, DecoderLM, LMSpec
from core.types import Context

CANDIDATES: dict[str, Callable[[ReplyScore], float]] = {
    "uncond_surprisal": lambda s: -s.unconditional.sum_logprob,
    "uncond_log_ppl": lambda s: -s.unconditional.mean_logprob,
    "cond_surprisal": lambda s: -s.conditional.sum_logprob,
    "cond_log_ppl": lambda s: -s.conditional.mean_logprob,
    "pmi": lambda s: s.pmi_sum,
    "pmi_per_token": lambda s: s.pmi_mean,
    "pmi_fraction": lambda s: s.pmi_sum / max(-s.unconditional.sum_logprob, 1e-6),
    "length_tokens": lambda s: float(s.unconditional.n_tokens),
}
# Candidates that need the dialogue; the rest are properties of the reply alone.
CONDITIONAL = frozenset({"cond_surprisal", "cond_log_ppl", "pmi", "pmi_per_token", "pmi_fraction"})

# The definition chosen by the study (see docs/rewards.md for the table and the reasons).
DEFAULT_DEFINITION = DEFAULT_TEACHER  # declared with ProxyConfig, whose default it is


def candidate_scores(scores: Sequence[ReplyScore]) -> dict[str, np.ndarray]:
    return {name: np.array([fn(s) for s in scores], dtype=np.float64) for name, fn in CANDIDATES.items()}


def teacher_values(scores: Sequence[ReplyScore], definition: str = DEFAULT_DEFINITION) -> np.ndarray:
    if definition not in CANDIDATES:
        raise ValueError(f"unknown teacher definition {definition!r}; use one of {', '.join(CANDIDATES)}")
    return np.array([CANDIDATES[definition](s) for s in scores], dtype=np.float64)


# ---- disk cache ----------------------------------------------------------------------------------


def _score_to_json(score: LMScore) -> list[float]:
    return [score.sum_logprob, score.mean_logprob, score.n_tokens]


def _score_from_json(row: Sequence[float]) -> LMScore:
    return LMScore(float(row[0]), float(row[1]), int(row[2]))


class TeacherCache:
    """JSONL of ``{"key", "cond", "uncond"}`` rows, keyed by a hash of (LM id, language, dialogue, reply).

    Creating one reads the file if it exists. ``score_with_cache`` rewrites it atomically at most every
    ``save_every_s`` seconds, at the end and when scoring fails, so an interrupted run keeps its work and a
    big bank does not rewrite a large file after every chunk. A row whose ``cond`` is null holds an
    unconditional score only.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if not self.path.exists():
            return
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.rows[str(row["key"])] = row
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}:{number}: not a teacher-cache row ({exc}); "
                                 "delete the file to rescore from scratch") from exc

    @classmethod
    def open(cls, path: Path) -> TeacherCache:
        return cls(path)

    def save(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values()))


def default_cache_path() -> Path:
    """Next to the model cache (``$REPLIQ_MODELS/..``): shared by every checkout on the machine, never committed."""
    from core.config import default_models_dir

    return default_models_dir().parent / "teacher_cache.jsonl"


def cache_key(lm_id: str, language: str, context: Context | None, reply: str, context_turns: int) -> str:
    dialogue = None if context is None else [t.text for t in context.window(context_turns).turns]
    blob = json.dumps([lm_id, language, dialogue, reply, context_turns], ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TeacherWorker:
    """Worker factory for ``core.executor``: each worker (a Ray actor) loads the teacher LM once."""

    spec: LMSpec
    batch_size: int
    context_turns: int

    def __call__(self) -> BatchFn:
        return functools.partial(_score_part, self.spec.load(), batch_size=self.batch_size,
                                 context_turns=self.context_turns)


def _score_part(lm: AnyLM, items: list[tuple[Context | None, str, str]], batch_size: int,
                context_turns: int) -> list[tuple[list[float] | None, list[float]]]:
    """``(cond, uncond)`` cache columns of ``(context or None, reply, language)`` items, in order."""
    out: list[tuple[list[float] | None, list[float]]] = [([], [])] * len(items)
    paired = [i for i, item in enumerate(items) if item[0] is not None]
    alone = [i for i, item in enumerate(items) if item[0] is None]
    if paired:
        got = score_pairs(lm, [items[i][0] for i in paired], [items[i][1] for i in paired],  # type: ignore[misc]
                          [items[i][2] for i in paired], batch_size=batch_size, context_turns=context_turns)
        for i, s in zip(paired, got, strict=True):
            out[i] = (_score_to_json(s.conditional), _score_to_json(s.unconditional))
    if alone:
        for i, u in zip(alone, score_texts(lm, [items[i][1] for i in alone], batch_size=batch_size), strict=True):
            out[i] = (None, _score_to_json(u))
    return out


def score_with_cache(
    lm: AnyLM, contexts: Sequence[Context | None], replies: Sequence[str], languages: Sequence[str],
    cache: TeacherCache | None = None, chunk: int = 128, context_turns: int = 3, batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None, save_every_s: float = 30.0,
    executor: Executor | None = None,
) -> list[ReplyScore]:
    """Reply scores; a ``None`` context scores the reply alone (its conditional side is NaN).

    With a Ray ``executor`` the chunks are scored on its actors (each loads ``lm`` again from its directory)
    and land in the cache as they come back, so a killed run keeps what it received.
    """
    if not len(contexts) == len(replies) == len(languages):
        raise ValueError(f"contexts, replies and languages differ in length "
                         f"({len(contexts)}, {len(replies)}, {len(languages)})")
    keys = [cache_key(lm.lm_id, lang, ctx, reply, context_turns)
            for ctx, reply, lang in zip(contexts, replies, languages, strict=True)]
    rows = cache.rows if cache is not None else {}
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    todo = [first[key] for key in dict.fromkeys(keys) if key not in rows]
    parts = [todo[start:start + chunk] for start in range(0, len(todo), chunk)]
    executor = executor or LocalExecutor()
    factory: WorkerFactory = (
        (lambda: functools.partial(_score_part, lm, batch_size=batch_size, context_turns=context_turns))
        if executor.name == "local" or not parts else TeacherWorker(_spec(lm), batch_size, context_turns))
    saved_at, unsaved, done = time.monotonic(), False, 0
    try:
        for index, results in executor.map(factory, [[(contexts[i], replies[i], languages[i]) for i in part]
                                                     for part in parts]):
            for i, (cond, uncond) in zip(parts[index], results, strict=True):
                rows[keys[i]] = {"key": keys[i], "cond": cond, "uncond": uncond}
            unsaved, done = True, done + len(parts[index])
            if cache is not None and time.monotonic() - saved_at >= save_every_s:
                cache.save()
                saved_at, unsaved = time.monotonic(), False
            if progress:
                progress(done, len(todo))
    finally:
        if cache is not None and unsaved:
            cache.save()
    nan = LMScore(math.nan, math.nan, 0)
    return [ReplyScore(_score_from_json(rows[k]["cond"]) if rows[k]["cond"] is not None else nan,
                       _score_from_json(rows[k]["uncond"])) for k in keys]


def _spec(lm: AnyLM) -> LMSpec:
    if not isinstance(lm, DecoderLM):
        raise ValueError("teacher scoring on Ray needs a decoder LM; configure one or use --executor local")
    return lm.spec()


# ---- the correlation study -----------------------------------------------------------------------


def pairwise_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a higher-labelled item > score of a lower-labelled one), ties count half (= AUC)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    hits = total = 0.0
    for level in np.unique(labels)[1:]:
        high, low = scores[labels == level], scores[labels < level]
        ranks = rankdata(np.concatenate([high, low]))
        u = ranks[: len(high)].sum() - len(high) * (len(high) + 1) / 2
        hits += u
        total += len(high) * len(low)
    return hits / total if total else math.nan


def within_group_accuracy(scores: np.ndarray, labels: np.ndarray, groups: Sequence[str]) -> tuple[float, int]:
    """Pairwise accuracy over pairs from the same group only (e.g. one dialogue): controls for who spoke."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    hits = total = 0.0
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for members in by_group.values():
        for a in members:
            for b in members:
                if labels[a] > labels[b]:
                    total += 1
                    hits += 1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0
    return (hits / total if total else math.nan), int(total)


@dataclass(frozen=True)
class HumanSignal:
    """Human judgements of replies. With ``aggregate`` the label belongs to a group (a conversation) and
    the candidate is averaged over the group's replies before correlating."""

    name: str
    contexts: list[Context]
    replies: list[str]
    languages: list[str]
    labels: np.ndarray
    groups: list[str] | None = None
    aggregate: bool = False


def partial_spearman(values: np.ndarray, labels: np.ndarray, control: np.ndarray) -> float:
    """Spearman of ``values`` and ``labels`` after removing the linear effect of ``control``'s ranks from both:
    does a score know anything about the label beyond, say, reply length?"""
    ranks = [rankdata(a).astype(np.float64) for a in (values, labels, control)]
    c = ranks[2] - ranks[2].mean()
    if not c.any():
        return float(spearmanr(values, labels).statistic)
    residuals = [r - r.mean() - c * ((r - r.mean()) @ c) / (c @ c) for r in ranks[:2]]
    norm = float(np.linalg.norm(residuals[0]) * np.linalg.norm(residuals[1]))
    return float(residuals[0] @ residuals[1] / norm) if norm > 0 else math.nan


def signal_metrics(values: np.ndarray, signal: HumanSignal, control: np.ndarray | None = None) -> dict[str, float]:
    """Spearman and pairwise accuracy vs the signal; with ``control`` also the partial Spearman given it."""
    labels, groups = signal.labels, signal.groups
    if signal.aggregate:
        if groups is None:
            raise ValueError(f"{signal.name}: aggregate signals need groups")
        keys = list(dict.fromkeys(groups))
        index = {g: k for k, g in enumerate(keys)}
        codes = np.array([index[g] for g in groups])
        counts = np.bincount(codes)
        values = np.bincount(codes, weights=values) / counts
        control = None if control is None else np.bincount(codes, weights=control) / counts
        labels = np.array([labels[groups.index(g)] for g in keys], dtype=np.float64)
        groups = None
    rho = spearmanr(values, labels).statistic if np.ptp(labels) > 0 else math.nan
    out = {"spearman": float(rho), "pairwise_accuracy": pairwise_accuracy(values, labels), "n": float(len(values))}
    if control is not None and np.ptp(labels) > 0:
        out["spearman_given_control"] = partial_spearman(values, labels, control)
    if groups is not None:
        out["within_group_accuracy"], out["within_group_pairs"] = within_group_accuracy(values, labels, groups)
    return out


def correlation_table(candidates: Mapping[str, Mapping[str, np.ndarray]], signals: Sequence[HumanSignal],
                      control: str | None = "length_tokens") -> dict[str, dict[str, dict[str, float]]]:
    """``table[candidate][signal] -> metrics`` from precomputed ``candidates[signal][candidate]`` values;
    ``control`` names the candidate partialled out (length by default)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for signal in signals:
        given = candidates[signal.name].get(control) if control else None
        for name, values in candidates[signal.name].items():
            table.setdefault(name, {})[signal.name] = signal_metrics(values, signal, given)
    return table


def rank_definitions(table: Mapping[str, Mapping[str, Mapping[str, float]]], signals: Sequence[str],
                     weights: Mapping[str, float] | None = None, metric: str = "spearman") -> list[tuple[str, float]]:
    """Candidates by weighted mean signed ``metric`` over ``signals``, best first (NaN counts as 0)."""
    weights = weights or {}
    total_weight = sum(weights.get(s, 1.0) for s in signals)
    ranked = []
    for name, per_signal in table.items():
        score = sum(weights.get(s, 1.0) * np.nan_to_num(per_signal[s].get(metric, np.nan)) for s in signals)
        ranked.append((name, float(score / total_weight)))
    return sorted(ranked, key=lambda item: -item[1])


class TeacherScorer:
    """The teacher as a callable ``(contexts, texts) -> values``: for evaluating with the LM itself
    (Goodhart: the tuned policy is judged by the teacher, not by the proxy it was tuned on)."""

    def __init__(self, lm: AnyLM, definition: str = DEFAULT_DEFINITION, cache: TeacherCache | None = None,
                 context_turns: int = 3, language: str | None = None, executor: Executor | None = None) -> None:
        if definition not in CANDIDATES:
            raise ValueError(f"unknown teacher definition {definition!r}; use one of {', '.join(CANDIDATES)}")
        self.lm, self.definition, self.cache = lm, definition, cache
        self.context_turns, self.language, self.executor = context_turns, language, executor

    def __call__(self, contexts: Sequence[Context], texts: Sequence[str]) -> np.ndarray:
        from core.text import detect_language

        languages = [self.language or detect_language(t) for t in texts]
        needs_context = self.definition in CONDITIONAL
        scores = score_with_cache(self.lm, [c if needs_context else None for c in contexts], texts, languages,
                                  self.cache, context_turns=self.context_turns, executor=self.executor)
        return teacher_values(scores, self.definition)


def bank_reply_scores(bank: ScoringBankLike, lm_id: str, definition: str) -> tuple[list[Any], list[ReplyScore]]:
    """Approved bank phrases with stored ``score_bank`` scores, as unconditional-only :class:`ReplyScore` rows.

    The cheap path to proxy training data: the bank's ``lm_scores`` table already holds the unconditional
    side. Conditional definitions need dialogues and cannot come from the bank alone.
    """
    from core.lm.bank_scores import load_bank_scores

    if definition in CONDITIONAL:
        raise ValueError(f"teacher definition {definition!r} needs a dialogue context; bank scores hold only the "
                         "unconditional side, so score (context, reply) pairs with score_with_cache instead")
    stored = load_bank_scores(bank, lm_id)
    phrases = [p for p in bank.phrases(status="approved") if p.id in stored]
    if not phrases:
        raise ValueError(f"the bank has no stored scores from {lm_id!r}; run `repliq bank score` first")
    nan = LMScore(math.nan, math.nan, 0)
    return phrases, [ReplyScore(nan, stored[p.id]) for p in phrases]


def bank_targets(bank: ScoringBankLike, lm_id: str,
                 definition: str = DEFAULT_DEFINITION) -> tuple[list[str], list[str], np.ndarray]:
    """``(texts, languages, teacher values)`` of approved bank phrases from scores ``score_bank`` stored."""
    phrases, scores = bank_reply_scores(bank, lm_id, definition)
    return [p.text for p in phrases], [p.language for p in phrases], teacher_values(scores, definition)


def seed_teacher_from_bank(cache: Any, bank: Any, lm_id: str, context_turns: int = 3) -> int:
    """Put the bank's stored unconditional LM scores (`repliq bank score`, same ``lm_id``) into the teacher's
    cache rows, so judging a chosen bank phrase costs no LM pass; returns how many rows were added.

    Only unconditional rows (no dialogue) are written, keyed as ``rl.teachers.judge_scorer`` looks them up;
    a row already cached is kept, so the values a run reports never change under it.
    """
    from core.lm.bank_scores import load_bank_scores
    from core.text import detect_language

    stored = load_bank_scores(bank, lm_id)
    added = 0
    for phrase in bank.phrases(status="approved"):
        score = stored.get(phrase.id)
        if score is None:
            continue
        key = cache_key(lm_id, detect_language(phrase.text), None, phrase.text, context_turns)
        if key not in cache.rows:
            cache.rows[key] = {"key": key, "cond": None,
                               "uncond": [score.sum_logprob, score.mean_logprob, score.n_tokens]}
            added += 1
    return added

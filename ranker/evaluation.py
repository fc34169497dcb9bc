"""Ranking evaluation: next-response selection on held-out dialogues, every scorer side by side.

For each sampled context the candidate list is the gold reply followed by ``pool_size - 1`` replies
drawn (seeded) from *other* dialogues of the same dataset. R@1 of 10 uses the first ten candidates and
R@1 of 100 all of them, so both come from one scoring pass; MRR is over the whole list. Ties count at
their expected value under random tie-breaking, so a scorer that returns all-equal scores gets chance,
never a free hit because the gold happens to come first. Full-bank recall@10 asks scorers that can
search (BM25, bi-encoders) for the 10 best texts of a bank of dev responses and counts a hit when the
gold's exact text is among them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.corpora import (
    ContextPair,
    Dialogue,
    context_response_pairs,
    known_splits,
    read_anekdot_dialogues,
    read_jsonl_dialogues,
    read_topicalchat_folder,
    split_of,
)
from core.text import word_tokens
from core.types import Context, QueryPassageEncoder
from ranker.bm25 import bm25_many
from ranker.idf import IdfTable

HELD_OUT = ("dev", "test")


@runtime_checkable
class Scorer(Protocol):
    """Scores candidate replies per context: one float array per context, higher is better."""

    name: str

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


@runtime_checkable
class BankSearcher(Protocol):
    """A scorer that can also search a whole bank: indices of the ``k`` best bank texts per context."""

    def top_k(self, contexts: Sequence[Context], bank: Sequence[str], k: int) -> list[list[int]]: ...


@dataclass(frozen=True)
class EvalExample:
    context: Context
    gold: str
    conversation_id: str
    candidates: tuple[str, ...]  # the gold first


@dataclass
class EvalDataset:
    name: str
    language: str
    examples: list[EvalExample]
    bank: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


# ---- metrics ------------------------------------------------------------------------------------


def _rank_span(scores: np.ndarray, gold: int) -> tuple[int, int]:
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores[gold]):
        return len(scores) - 1, 0  # an unscorable gold ranks last
    others = np.delete(scores, gold)
    return int(np.sum(others > scores[gold])), int(np.sum(others == scores[gold]))


def recall_at_k(scores: np.ndarray, k: int, gold: int = 0) -> float:
    """Probability that the gold is in the top ``k`` when ties are broken at random."""
    above, ties = _rank_span(scores, gold)
    return min(max(k - above, 0), ties + 1) / (ties + 1)


def reciprocal_rank(scores: np.ndarray, gold: int = 0) -> float:
    """Expected 1/rank of the gold under random tie-breaking."""
    above, ties = _rank_span(scores, gold)
    return float(np.mean([1.0 / r for r in range(above + 1, above + ties + 2)]))


def bank_hit(ranked_texts: Sequence[str], gold: str, k: int = 10) -> float:
    return float(gold in ranked_texts[:k])


# ---- datasets -----------------------------------------------------------------------------------


def dataset_from_dialogues(name: str, dialogues: Iterable[Dialogue], *, n_contexts: int = 500, pool_size: int = 100,
                           context_turns: int = 3, split: str | Collection[str] | None = None,
                           bank_size: int | None = 2000, extra_bank: Sequence[str] = (),
                           seed: int = 0) -> EvalDataset:
    """A fixed sample of contexts (at most one per dialogue while dialogues last) with distractors and a bank.

    ``split`` keeps only dialogues of that :func:`core.corpora.split_of` split, or of any of several
    (``("dev", "test")``: everything a training run on ``train`` never saw); ``meta["split"]`` records it
    (``"dev+test"``), so a report says which part of a corpus it measured. Contexts and distractors come
    from the kept dialogues only. The bank is every distinct response of the kept dialogues, down-sampled
    to ``bank_size`` (golds always kept; ``None`` keeps all) because encoding tens of thousands of replies
    takes many CPU minutes, plus ``extra_bank`` (e.g. the default phrase bank).
    """
    if pool_size < 2 or n_contexts < 1:
        raise ValueError(f"need pool_size >= 2 and n_contexts >= 1, got {pool_size} and {n_contexts}")
    splits = _splits(split)
    kept = [d for d in dialogues if splits is None or split_of(d.id) in splits]
    languages = {d.language for d in kept}
    if len(languages) != 1:
        raise ValueError(f"{name}: expected dialogues of one language, found {sorted(languages) or 'none'}; "
                         "split the file by language (see jsonl_datasets)")
    pairs = [p for p in context_response_pairs(kept, context_turns=context_turns) if len(p.response) >= 2]
    rng = random.Random(seed)
    order = list(pairs)
    rng.shuffle(order)
    firsts: dict[str, ContextPair] = {}
    for pair in order:
        firsts.setdefault(pair.conversation_id, pair)
    first_of_dialogue = list(firsts.values())
    chosen = {p.context_id for p in first_of_dialogue[:n_contexts]}
    sample = (first_of_dialogue + [p for p in order if p.context_id not in chosen])[:n_contexts]
    responses = list(dict.fromkeys((p.response, p.conversation_id) for p in order))
    gold_keys = {(p.response, p.conversation_id) for p in sample}
    others = [r for r in responses if r not in gold_keys]
    pool = [(p.response, p.conversation_id) for p in sample] + others[:max(0, 3 * pool_size - len(sample))]
    examples = []
    for pair in sample:
        eligible = list(dict.fromkeys(text for text, conv in pool
                                      if conv != pair.conversation_id and _key(text) != _key(pair.response)))
        if len(eligible) < pool_size - 1:
            raise ValueError(f"{name}: only {len(eligible)} distractors for a pool of {pool_size}; lower pool_size "
                             "or give more dialogues")
        examples.append(EvalExample(pair.context, pair.response, pair.conversation_id,
                                    (pair.response, *rng.sample(eligible, pool_size - 1))))
    golds = list(dict.fromkeys(p.response for p in sample))
    rest = [t for t in dict.fromkeys(text for text, _ in responses) if t not in set(golds)]
    if bank_size is not None:
        rest = rest[:max(0, bank_size - len(golds))]
    bank = list(dict.fromkeys([*golds, *rest, *extra_bank]))
    meta = {"dialogues": len(kept), "pairs": len(pairs), "split": None if splits is None else "+".join(splits),
            "pool_size": pool_size, "seed": seed,
            "context_turns": context_turns, "bank_size": len(bank), "bank_all_dev": bank_size is None}
    return EvalDataset(name, languages.pop(), examples, bank, meta)


def _splits(split: str | Collection[str] | None) -> tuple[str, ...] | None:
    return None if split is None else known_splits([split] if isinstance(split, str) else split)


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def topicalchat_dataset(directory: Path, **options: Any) -> EvalDataset:
    """English held-out set: the ``dev`` and ``test`` hash splits of Topical-Chat valid (freq + rare).

    The ``train`` split is left out because ``repliq train retriever --topicalchat`` may adapt the
    encoder on it; evaluating on it would credit the model for conversations it was trained on. The
    name says ``heldout`` so a report on this part is never mistaken for one on all conversations.
    """
    dialogues = read_topicalchat_folder(Path(directory))
    return dataset_from_dialogues("en-topicalchat-heldout", dialogues, split=HELD_OUT, **options)


def russian_dataset(path: Path, **options: Any) -> EvalDataset:
    """Russian dev: the ``dev`` hash split of Koziev's joke dialogues (training uses only ``train``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Russian dialogues file {path} does not exist; give koziev_anekdot_dialogues.tar.xz")
    return dataset_from_dialogues("ru-anekdot-dev", read_anekdot_dialogues(Path(path)), split="dev", **options)


def jsonl_datasets(path: Path, **options: Any) -> list[EvalDataset]:
    """Any dialogue file in the ``core.corpora`` JSONL format, one dataset per language, every dialogue used."""
    by_language: dict[str, list[Dialogue]] = {}
    for dialogue in read_jsonl_dialogues(Path(path)):
        by_language.setdefault(dialogue.language, []).append(dialogue)
    if not by_language:
        raise ValueError(f"{path} holds no dialogues")
    return [dataset_from_dialogues(f"{language}-{Path(path).stem}", items, **options)
            for language, items in sorted(by_language.items())]


# ---- running ------------------------------------------------------------------------------------


def _check_scores(scorer: Scorer, scores: list[np.ndarray], lists: Sequence[Sequence[str]]) -> None:
    if len(scores) != len(lists) or any(len(s) != len(c) for s, c in zip(scores, lists, strict=False)):
        raise ValueError(f"scorer {scorer.name!r} returned scores that do not match the candidate lists")


def evaluate_scorer(scorer: Scorer, dataset: EvalDataset, bank_k: int = 10) -> dict[str, Any]:
    contexts = [ex.context for ex in dataset.examples]
    lists = [ex.candidates for ex in dataset.examples]
    started = time.perf_counter()
    scores = [np.asarray(s, dtype=np.float64) for s in scorer.score(contexts, lists)]
    _check_scores(scorer, scores, lists)
    n = len(scores)
    r10 = float(np.mean([recall_at_k(s[:10], 1) for s in scores]))
    result: dict[str, Any] = {
        "n": n, "r1_of_10": r10, "r1_of_10_se": math.sqrt(r10 * (1 - r10) / n) if n else float("nan"),
        "r1_of_100": float(np.mean([recall_at_k(s, 1) for s in scores])) if len(lists[0]) >= 100 else None,
        "mrr": float(np.mean([reciprocal_rank(s) for s in scores])), "pool_size": len(lists[0]),
        f"bank_recall_at_{bank_k}": None}
    if isinstance(scorer, BankSearcher) and dataset.bank:
        ranked = scorer.top_k(contexts, dataset.bank, bank_k)
        hits = [bank_hit([dataset.bank[i] for i in row], ex.gold, bank_k)
                for row, ex in zip(ranked, dataset.examples, strict=True)]
        result[f"bank_recall_at_{bank_k}"] = float(np.mean(hits))
    result["seconds"] = time.perf_counter() - started
    return result


def evaluate_ranking(datasets: Sequence[EvalDataset], scorers: Sequence[Scorer], *, bank_k: int = 10,
                     say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every scorer on every dataset; the report is JSON-ready (see :func:`ranking_table`)."""
    say = say or (lambda _message: None)
    bad = [type(s).__name__ for s in scorers if not isinstance(s, Scorer)]
    if bad:
        raise TypeError(f"not scorers (need .name and .score(contexts, candidate_lists)): {', '.join(bad)}")
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be unique, got {names}")
    results: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        results[dataset.name] = {}
        for scorer in scorers:
            say(f"{dataset.name}: scoring with {scorer.name}")
            results[dataset.name][scorer.name] = evaluate_scorer(scorer, dataset, bank_k)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "scorers": names, "bank_k": bank_k,
        "datasets": {d.name: {"language": d.language, "contexts": len(d.examples), **d.meta} for d in datasets},
        "results": results,
        "chance": {"r1_of_10": 0.1, "r1_of_100": 0.01},
    }


def ranking_table(report: dict[str, Any]) -> str:
    """Markdown table, one row per (dataset, scorer); R@1/10 carries a 95% interval."""
    k = report.get("bank_k", 10)
    lines = [f"| dataset | lang | N | scorer | R@1/10 | R@1/100 | MRR | bank R@{k} (bank size) | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    for name, per_scorer in report["results"].items():
        meta = report["datasets"][name]
        for scorer, m in per_scorer.items():
            bank = m.get(f"bank_recall_at_{k}")
            bank_cell = "–" if bank is None else f"{bank:.3f} ({meta['bank_size']})"
            lines.append(f"| {name} | {meta['language']} | {m['n']} | {scorer} | {m['r1_of_10']:.3f} ± "
                         f"{1.96 * m['r1_of_10_se']:.3f} | {fmt(m['r1_of_100'])} | {m['mrr']:.3f} | {bank_cell} | "
                         f"{m['seconds']:.0f} |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "ranking_eval") -> dict[str, Path]:
    """The JSON report, the Markdown table and the R@1/10 bar chart, each written atomically."""
    from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
    from ranker.eval_plots import recall_bars_png

    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["markdown"], ranking_table(report) + "\n")
    atomic_write_bytes(paths["png"], recall_bars_png(report))
    return paths


# ---- scorers ------------------------------------------------------------------------------------


class BM25Scorer:
    """Okapi BM25 of each candidate against the context window's words (the lexical baseline).

    Without a fixed ``idf`` table, document statistics come from the texts of each call (the candidate
    pool, or the bank when searching), which is what a deployed BM25 over that collection would see.
    """

    def __init__(self, idf: IdfTable | None = None, context_turns: int = 3, name: str = "bm25") -> None:
        self.idf, self.context_turns, self.name = idf, context_turns, name

    def _query(self, context: Context) -> set[str]:
        return set(word_tokens(context.as_query_text(self.context_turns)))

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        texts = list(dict.fromkeys(t for cands in candidate_lists for t in cands))
        idf = self.idf or IdfTable.build(texts or [""])
        tokens = {text: word_tokens(text) for text in texts}
        return [np.array([bm25_many([self._query(ctx)], tokens[t], idf)[0] for t in cands], dtype=np.float64)
                for ctx, cands in zip(contexts, candidate_lists, strict=True)]

    def top_k(self, contexts: Sequence[Context], bank: Sequence[str], k: int) -> list[list[int]]:
        idf = self.idf or IdfTable.build(bank)
        queries = [self._query(ctx) for ctx in contexts]
        matrix = np.array([bm25_many(queries, word_tokens(text), idf) for text in bank], dtype=np.float64).T
        return _top_rows(matrix, k)


class BiEncoderScorer:
    """Cosine between the encoded context and each candidate; passage vectors are cached by text."""

    def __init__(self, encoder: QueryPassageEncoder, name: str | None = None, context_turns: int = 3) -> None:
        self.encoder, self.context_turns = encoder, context_turns
        self.name = name or getattr(getattr(encoder, "manifest", None), "model_id", "bi-encoder")
        self._cache: dict[str, np.ndarray] = {}

    def _passages(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._cache.update(zip(missing, self.encoder.encode_passages(missing), strict=True))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1), dtype=np.float32)

    def _queries(self, contexts: Sequence[Context]) -> np.ndarray:
        return self.encoder.encode_queries([ctx.as_query_text(self.context_turns) for ctx in contexts])

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        self._passages([t for cands in candidate_lists for t in cands])
        queries = self._queries(contexts)
        return [self._passages(list(cands)) @ query for query, cands in zip(queries, candidate_lists, strict=True)]

    def top_k(self, contexts: Sequence[Context], bank: Sequence[str], k: int) -> list[list[int]]:
        return _top_rows(self._queries(contexts) @ self._passages(list(bank)).T, k)


class CallableScorer:
    """Wraps a plain function ``fn(contexts, candidate_lists) -> list[np.ndarray]`` (e.g. the blender)."""

    def __init__(self, name: str, fn: Callable[[Sequence[Context], Sequence[Sequence[str]]], list[np.ndarray]]) -> None:
        self.name, self._fn = name, fn

    def score(self, contexts: Sequence[Context], candidate_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return self._fn(contexts, candidate_lists)


def _top_rows(matrix: np.ndarray, k: int) -> list[list[int]]:
    k = min(k, matrix.shape[1])
    if k <= 0:
        return [[] for _ in range(matrix.shape[0])]
    part = np.argpartition(-matrix, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(matrix, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).tolist()

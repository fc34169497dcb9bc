"""Ranking evaluation harness: metrics on hand-computed cases, dataset construction, scorers and reports."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from core.corpora import Dialogue, DialogueTurn, split_of, write_jsonl_dialogues
from core.types import Context
from ranker.evaluation import (
    BiEncoderScorer,
    BM25Scorer,
    CallableScorer,
    bank_hit,
    dataset_from_dialogues,
    evaluate_ranking,
    jsonl_datasets,
    ranking_table,
    recall_at_k,
    reciprocal_rank,
    write_report,
)


def test_recall_and_reciprocal_rank_on_hand_computed_cases() -> None:
    assert recall_at_k(np.array([0.9, 0.1, 0.5]), 1) == 1.0
    assert recall_at_k(np.array([0.1, 0.9, 0.5]), 1) == 0.0
    assert recall_at_k(np.array([0.1, 0.9, 0.5]), 2) == 0.0
    assert recall_at_k(np.array([0.1, 0.9, 0.5]), 3) == 1.0
    assert recall_at_k(np.array([0.2, 0.9, 0.5, 0.1]), 2, gold=2) == 1.0
    assert reciprocal_rank(np.array([0.2, 0.9, 0.5, 0.1])) == pytest.approx(1 / 3)
    assert reciprocal_rank(np.array([0.2, 0.9, 0.5, 0.1]), gold=1) == 1.0


def test_ties_count_at_their_expected_value_not_as_free_hits() -> None:
    assert recall_at_k(np.array([0.5, 0.5, 0.1]), 1) == pytest.approx(0.5)
    assert recall_at_k(np.zeros(10), 1) == pytest.approx(0.1)
    assert recall_at_k(np.array([0.5, 0.5, 0.5, 0.9]), 2) == pytest.approx(1 / 3)  # one above, 3-way tie
    assert reciprocal_rank(np.zeros(4)) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert reciprocal_rank(np.array([np.nan, 0.1, 0.2])) == pytest.approx(1 / 3)  # unscorable gold ranks last


def test_bank_hit_needs_the_exact_gold_text_in_the_top_k() -> None:
    ranked = ["a", "b", "gold", "c"]
    assert bank_hit(ranked, "gold", k=3) == 1.0
    assert bank_hit(ranked, "gold", k=2) == 0.0
    assert bank_hit(ranked, "Gold", k=10) == 0.0


def toy_dialogues(n: int, language: str = "en", prefix: str = "toy") -> list[Dialogue]:
    out = []
    for i in range(n):
        texts = [f"do you like topic{i}?", f"yes topic{i} rocks", f"why topic{i} though?", f"topic{i} feels like home"]
        turns = tuple(DialogueTurn("AB"[t % 2], x) for t, x in enumerate(texts))
        out.append(Dialogue(f"{prefix}:{i}", language, turns))
    out.append(Dialogue(f"{prefix}:same", language, (DialogueTurn("A", "hi"), DialogueTurn("B", "ok"),
                                                     DialogueTurn("A", "ok?"), DialogueTurn("B", "ok"))))
    return out


def test_candidates_put_the_gold_first_and_distractors_from_other_dialogues() -> None:
    dataset = dataset_from_dialogues("toy", toy_dialogues(60), n_contexts=40, pool_size=10, bank_size=70, seed=3)
    assert len(dataset.examples) == 40 and dataset.language == "en"
    assert len({ex.conversation_id for ex in dataset.examples}) == 40  # one context per dialogue while they last
    by_text = {t.text: d.id for d in toy_dialogues(60) for t in d.turns}
    for ex in dataset.examples:
        assert ex.candidates[0] == ex.gold and len(ex.candidates) == len(set(ex.candidates)) == 10
        assert all(by_text[c] != ex.conversation_id for c in ex.candidates[1:])
        assert all(c.casefold() != ex.gold.casefold() for c in ex.candidates[1:])
    assert {ex.gold for ex in dataset.examples} <= set(dataset.bank)
    assert len(dataset.bank) == 70 == dataset.meta["bank_size"]
    again = dataset_from_dialogues("toy", toy_dialogues(60), n_contexts=40, pool_size=10, bank_size=70, seed=3)
    other = dataset_from_dialogues("toy", toy_dialogues(60), n_contexts=40, pool_size=10, bank_size=70, seed=4)
    assert again.examples == dataset.examples and other.examples != dataset.examples
    everything = dataset_from_dialogues("toy", toy_dialogues(60), n_contexts=5, pool_size=10, bank_size=None,
                                        extra_bank=["an extra phrase"])
    assert len(everything.bank) == len({t.text for d in toy_dialogues(60) for t in d.turns[1:]}) + 1


def test_split_filter_and_refusals() -> None:
    dialogues = toy_dialogues(200)
    dev = dataset_from_dialogues("toy", dialogues, n_contexts=10, pool_size=5, split="dev")
    assert {split_of(ex.conversation_id) for ex in dev.examples} == {"dev"}
    assert dev.meta["split"] == "dev"
    held_out = dataset_from_dialogues("toy", dialogues, n_contexts=500, pool_size=5, split={"test", "dev"})
    assert {split_of(ex.conversation_id) for ex in held_out.examples} == {"dev", "test"}
    assert held_out.meta["split"] == "dev+test"  # SPLITS order, whatever order the caller gave
    assert held_out.meta["dialogues"] == sum(split_of(d.id) != "train" for d in dialogues)
    with pytest.raises(ValueError, match="unknown split"):
        dataset_from_dialogues("toy", dialogues, pool_size=5, split=("dev", "valid"))
    with pytest.raises(ValueError, match="unknown split"):
        dataset_from_dialogues("toy", dialogues, pool_size=5, split=())
    with pytest.raises(ValueError, match="one language"):
        dataset_from_dialogues("mixed", toy_dialogues(5) + toy_dialogues(5, "ru", "ru"), pool_size=3)
    with pytest.raises(ValueError, match="lower pool_size"):
        dataset_from_dialogues("small", toy_dialogues(3), n_contexts=2, pool_size=100)


def test_jsonl_file_gives_one_dataset_per_language(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    write_jsonl_dialogues(path, toy_dialogues(20) + toy_dialogues(20, "ru", "ru"))
    datasets = jsonl_datasets(path, n_contexts=8, pool_size=5)
    assert [(d.name, d.language, len(d.examples)) for d in datasets] == [("en-dev", "en", 8), ("ru-dev", "ru", 8)]


class WordEncoder:
    """Bag-of-words vectors, counting how many passages it was asked to encode."""

    def __init__(self) -> None:
        self.passages_encoded = 0

    def _vec(self, texts: Sequence[str]) -> np.ndarray:
        import zlib

        rows = np.zeros((len(texts), 4096), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in text.replace("?", " ").split():
                rows[r, zlib.crc32(word.encode()) % 4096] += 1.0
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._vec(texts)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        self.passages_encoded += len(texts)
        return self._vec(texts)


def constant(contexts: Sequence[Context], lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
    return [np.zeros(len(c)) for c in lists]


def oracle(contexts: Sequence[Context], lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
    return [np.r_[1.0, np.zeros(len(c) - 1)] for c in lists]


def test_evaluation_runs_scorers_side_by_side(tmp_path: Path) -> None:
    dataset = dataset_from_dialogues("toy", toy_dialogues(130), n_contexts=60, pool_size=100, bank_size=200)
    encoder = WordEncoder()
    scorers = [CallableScorer("constant", constant), CallableScorer("oracle", oracle), BM25Scorer(),
               BiEncoderScorer(encoder, name="words")]
    report = evaluate_ranking([dataset], scorers)
    results = report["results"]["toy"]
    assert results["constant"]["r1_of_10"] == pytest.approx(0.1)
    assert results["constant"]["r1_of_100"] == pytest.approx(0.01)
    assert results["constant"]["mrr"] == pytest.approx(sum(1 / r for r in range(1, 101)) / 100)
    assert results["oracle"]["r1_of_10"] == results["oracle"]["mrr"] == 1.0
    assert results["oracle"]["bank_recall_at_10"] is None  # a callable cannot search a bank
    # Replies echo the context's topic word: both must beat chance (0.1, 0.01) by far. Measured: BM25 1.0 on
    # every metric; the hashed bag of words 0.81 R@1/10, 0.74 R@1/100, 0.78 bank recall@10 (hash collisions).
    assert min(results["bm25"][m] for m in ("r1_of_10", "r1_of_100", "bank_recall_at_10")) >= 0.95
    words = results["words"]
    assert words["r1_of_10"] > 0.7 and words["r1_of_100"] > 0.6 and words["bank_recall_at_10"] > 0.65
    assert encoder.passages_encoded == len({t for ex in dataset.examples for t in ex.candidates} | set(dataset.bank))
    table = ranking_table(report)
    assert table.count("\n") == 1 + len(scorers) and "| toy | en | 60 | bm25 |" in table
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["results"]["toy"]["oracle"]["r1_of_10"] == 1.0
    assert paths["markdown"].read_text().startswith("| dataset |")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_small_pools_report_no_r1_of_100_and_bad_scorers_are_refused() -> None:
    dataset = dataset_from_dialogues("toy", toy_dialogues(30), n_contexts=20, pool_size=10)
    report = evaluate_ranking([dataset], [CallableScorer("oracle", oracle)])
    assert report["results"]["toy"]["oracle"]["r1_of_100"] is None
    assert math.isclose(report["results"]["toy"]["oracle"]["r1_of_10_se"], 0.0)
    with pytest.raises(ValueError, match="unique"):
        evaluate_ranking([dataset], [CallableScorer("x", oracle), CallableScorer("x", constant)])
    with pytest.raises(TypeError, match="not scorers"):
        evaluate_ranking([dataset], [object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="do not match"):
        evaluate_ranking([dataset], [CallableScorer("short", lambda c, lists: [np.zeros(3) for _ in lists])])

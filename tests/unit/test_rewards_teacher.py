"""Teacher definitions, correlation metrics and the teacher-score cache, on hand-made LM scores."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import rl.teacher as teacher
from core.lm.scoring import LMScore, ReplyScore
from core.lm.wrapper import NullLM
from core.types import Context, Turn
from rl.teacher import (
    CANDIDATES,
    HumanSignal,
    TeacherCache,
    candidate_scores,
    pairwise_accuracy,
    partial_spearman,
    rank_definitions,
    score_with_cache,
    signal_metrics,
    teacher_values,
    within_group_accuracy,
)


def reply(cond_sum: float, uncond_sum: float, n: int) -> ReplyScore:
    return ReplyScore(LMScore(cond_sum, cond_sum / n, n), LMScore(uncond_sum, uncond_sum / n, n))


def test_candidate_formulas() -> None:
    scores = [reply(-6.0, -10.0, 4), reply(-3.0, -3.5, 2)]
    values = candidate_scores(scores)
    assert set(values) == set(CANDIDATES)
    np.testing.assert_allclose(values["uncond_surprisal"], [10.0, 3.5])
    np.testing.assert_allclose(values["uncond_log_ppl"], [2.5, 1.75])
    np.testing.assert_allclose(values["cond_surprisal"], [6.0, 3.0])
    np.testing.assert_allclose(values["cond_log_ppl"], [1.5, 1.5])
    np.testing.assert_allclose(values["pmi"], [4.0, 0.5])
    np.testing.assert_allclose(values["pmi_per_token"], [1.0, 0.25])
    np.testing.assert_allclose(values["pmi_fraction"], [0.4, 0.5 / 3.5])
    np.testing.assert_allclose(values["length_tokens"], [4, 2])
    np.testing.assert_allclose(teacher_values(scores, "pmi"), values["pmi"])
    with pytest.raises(ValueError, match="unknown teacher definition"):
        teacher_values(scores, "perplexity-ish")


def brute_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    hits = total = 0.0
    for a, b in itertools.permutations(range(len(scores)), 2):
        if labels[a] > labels[b]:
            total += 1
            hits += 1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0
    return hits / total


def test_pairwise_accuracy_matches_brute_force_with_ties_and_levels() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)
    labels = rng.integers(0, 3, 40).astype(float)
    assert pairwise_accuracy(scores, labels) == pytest.approx(brute_accuracy(scores, labels))
    assert pairwise_accuracy(labels, labels) == 1.0
    assert pairwise_accuracy(-labels, labels) == 0.0
    assert math.isnan(pairwise_accuracy(scores, np.zeros(40)))


def test_within_group_accuracy_only_compares_inside_groups() -> None:
    scores = np.array([1.0, 0.0, 0.0, 5.0])
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    accuracy, pairs = within_group_accuracy(scores, labels, ["a", "a", "b", "b"])
    assert pairs == 2 and accuracy == 0.5
    # One group holding everything is plain pairwise accuracy, which differs here.
    pooled = within_group_accuracy(scores, labels, ["x"] * 4)[0]
    assert pooled == pytest.approx(brute_accuracy(scores, labels)) == pytest.approx(0.375)


def test_partial_spearman_removes_a_confounder() -> None:
    rng = np.random.default_rng(1)
    length = rng.normal(size=500)
    label = length + 0.1 * rng.normal(size=500)
    only_length = length + 0.1 * rng.normal(size=500)
    extra = rng.normal(size=500)
    knows_more = length + extra
    label_with_extra = length + extra
    assert abs(partial_spearman(only_length, label, length)) < 0.15
    assert partial_spearman(knows_more, label_with_extra, length) > 0.8


def test_aggregate_signal_averages_per_group() -> None:
    context = Context((Turn("u", "hi"),))
    signal = HumanSignal("conv", [context] * 6, ["r"] * 6, ["en"] * 6, np.array([1, 1, 5, 5, 9, 9.0]),
                         groups=["a", "a", "b", "b", "c", "c"], aggregate=True)
    metrics = signal_metrics(np.array([0.0, 2.0, 1.5, 2.5, 3.0, 5.0]), signal)
    assert metrics["n"] == 3 and metrics["spearman"] == pytest.approx(1.0)
    metrics = signal_metrics(np.array([9.0, 9.0, 0.0, 0.0, 1.0, 1.0]), signal)
    assert metrics["spearman"] < 0


def test_rank_definitions_weights_sources() -> None:
    table = {"a": {"s1": {"spearman": 0.9}, "s2": {"spearman": -0.1}},
             "b": {"s1": {"spearman": 0.1}, "s2": {"spearman": 0.5}}}
    assert rank_definitions(table, ["s1", "s2"])[0][0] == "a"
    assert rank_definitions(table, ["s1", "s2"], {"s1": 0.1, "s2": 1.0})[0][0] == "b"


def test_cache_scores_each_item_once_and_survives_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"pairs": 0, "texts": 0}

    def fake_pairs(lm, contexts, replies, languages, **_):  # type: ignore[no-untyped-def]
        calls["pairs"] += len(replies)
        return [reply(-float(len(r)), -2.0 * len(r), len(r)) for r in replies]

    def fake_texts(lm, texts, **_):  # type: ignore[no-untyped-def]
        calls["texts"] += len(texts)
        return [LMScore(-3.0 * len(t), -3.0, len(t)) for t in texts]

    monkeypatch.setattr(teacher, "score_pairs", fake_pairs)
    monkeypatch.setattr(teacher, "score_texts", fake_texts)
    path = tmp_path / "cache.jsonl"
    ctx = Context((Turn("u", "hello"),))
    replies = ["ab", "abcd", "ab", "xyz"]
    contexts = [ctx, ctx, ctx, None]
    first = score_with_cache(NullLM(), contexts, replies, ["en"] * 4, TeacherCache.open(path), chunk=2)
    assert calls == {"pairs": 2, "texts": 1}  # the duplicate (ctx, "ab") is scored once
    assert first[0] == first[2] and first[1].pmi_sum == pytest.approx(4.0)
    assert math.isnan(first[3].conditional.sum_logprob) and first[3].unconditional.sum_logprob == -9.0
    again = score_with_cache(NullLM(), contexts, replies, ["en"] * 4, TeacherCache.open(path))
    assert calls == {"pairs": 2, "texts": 1} and again == first
    # Another language or dialogue is another key.
    score_with_cache(NullLM(), [ctx], ["ab"], ["ru"], TeacherCache.open(path))
    assert calls["pairs"] == 3


def test_cache_refuses_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "cond": null, "uncond": [1, 1, 1]}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="delete the file"):
        TeacherCache.open(path)


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        score_with_cache(NullLM(), [None], ["a", "b"], ["en"])

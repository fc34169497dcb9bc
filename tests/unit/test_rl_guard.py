"""The RL job's judgement of a tuned policy: R@1 against the gold reply, the relevance guard that picks the
served β, and the per-language "target met" verdict. Synthetic pools and a fake teacher; no models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from core.types import Context, Turn
from dialog.jobs.rl_tune import DevJudge, RLRunConfig, _r_at_1, _targets, choose_beta


def test_r_at_1_is_a_hit_only_when_the_top_candidate_is_a_best_labelled_one() -> None:
    sizes = np.array([3, 3, 2, 3])
    y = np.array([0, 1, 0,    # pool 0: gold in the middle
                  0, 0, 1,    # pool 1: gold last
                  0, 0,       # pool 2: no gold reply in the pool
                  1, 2, 0])   # pool 3: graded labels, the best is 2
    scores = np.array([0.1, 0.9, 0.2,
                       0.8, 0.1, 0.3,
                       0.5, 0.1,
                       0.9, 0.3, 0.1])
    assert _r_at_1(scores, sizes, y).tolist() == [1.0, 0.0, 0.0, 0.0]
    best_everywhere = np.array([0.1, 0.9, 0.2, 0.1, 0.1, 0.3, 0.5, 0.1, 0.3, 0.9, 0.1])
    # A pool without any gold reply is never a hit, whatever the policy picks: it counts as a miss.
    assert _r_at_1(best_everywhere, sizes, y).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_r_at_1_over_pools_without_gold_is_zero() -> None:
    sizes = np.array([4, 4])
    assert _r_at_1(np.arange(8.0), sizes, np.zeros(8)).tolist() == [0.0, 0.0]


@dataclass
class FakeDev:
    group_sizes: np.ndarray
    texts: list[str]
    y: np.ndarray


def test_dev_judge_reports_r_at_1_per_language_with_gold_less_pools_as_misses() -> None:
    dev = FakeDev(np.array([2, 2, 2]), ["a", "long reply b", "c", "dd", "eee", "f"], np.array([1, 0, 0, 1, 0, 0]))
    contexts = [Context((Turn("user", t),)) for t in ("hello", "привет", "hi")]

    def teacher(ctx: list[Context], texts: list[str]) -> np.ndarray:
        return np.array([float(len(t)) for t in texts])

    judge = DevJudge(dev, contexts, ["en", "ru", "en"], teacher, RLRunConfig(teacher_reference=6))
    metrics = judge.metrics(np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]))  # hit, hit, no gold
    assert metrics["r_at_1"] == pytest.approx(2 / 3)
    assert metrics["r_at_1_en"] == pytest.approx(0.5) and metrics["r_at_1_ru"] == pytest.approx(1.0)
    lengths = np.array([1, 12, 1, 2, 3, 1], dtype=float)
    z = (np.array([1.0, 2.0, 3.0]) - lengths.mean()) / lengths.std()
    assert metrics["teacher_specificity_z"] == pytest.approx(z.mean())
    assert metrics["teacher_specificity_z_ru"] == pytest.approx(z[1])


def report(ref: dict[str, float], final: dict[str, float], beta: str = "0.2") -> dict:
    return {"reference": ref, "runs": {beta: {"final": final}}}


def metrics(r1: float, spec: float, r1_en: float | None = None, spec_en: float | None = None) -> dict[str, float]:
    return {"r_at_1": r1, "teacher_specificity_z": spec, "r_at_1_en": r1 if r1_en is None else r1_en,
            "teacher_specificity_z_en": spec if spec_en is None else spec_en}


def hits(n: int, ones: int) -> np.ndarray:
    out = np.zeros(n)
    out[:ones] = 1.0
    return out


@pytest.mark.parametrize(("gain", "drop", "met"), [
    (0.35, 0.0, True), (0.35, 0.015, True), (1.0, 0.025, False), (1.0, 0.05, False), (1.0, 0.19, False),
    (0.25, 0.0, False), (0.05, 0.0, False), (0.29, -0.01, False)])
def test_target_met_needs_a_third_of_an_sd_more_specificity_and_at_most_two_points_less_r_at_1(
        gain: float, drop: float, met: bool) -> None:
    ref = metrics(0.60, 0.10)
    final = metrics(0.60 - drop, 0.10 + gain)
    n = 1000
    ref_hits, tuned_hits = hits(n, 600), hits(n, round(n * (0.60 - drop)))
    targets = _targets(report(ref, final), 0.2, ref_hits, tuned_hits, np.array(["en"] * n), seed=0)
    assert set(targets) == {"all", "en"}
    for row in targets.values():
        assert row["met"] is met
        assert row["specificity_gain_sd"] == pytest.approx(gain)
        assert row["r_at_1_drop"] == pytest.approx(drop)
        lo, hi = row["r_at_1_drop_ci95"]
        assert lo <= drop + 1e-9 and drop - 1e-9 <= hi


def test_targets_are_judged_per_language_on_that_language_s_pools() -> None:
    ref = {"r_at_1": 0.5, "r_at_1_en": 0.6, "r_at_1_ru": 0.4,
           "teacher_specificity_z": 0.0, "teacher_specificity_z_en": 0.0, "teacher_specificity_z_ru": 0.0}
    final = {"r_at_1": 0.47, "r_at_1_en": 0.6, "r_at_1_ru": 0.34,
             "teacher_specificity_z": 0.5, "teacher_specificity_z_en": 0.6, "teacher_specificity_z_ru": 0.4}
    languages = np.array(["en"] * 100 + ["ru"] * 100)
    ref_hits = np.concatenate([hits(100, 60), hits(100, 40)])
    tuned_hits = np.concatenate([hits(100, 60), hits(100, 34)])
    targets = _targets(report(ref, final, "1"), 1.0, ref_hits, tuned_hits, languages, seed=0)
    assert {k: v["met"] for k, v in targets.items()} == {"all": False, "en": True, "ru": False}
    assert targets["en"]["r_at_1_drop_ci95"] == [0.0, 0.0]  # same hits on the English pools
    assert targets["ru"]["r_at_1_drop_ci95"][0] > 0.0  # six Russian pools lost, none gained


def test_the_guard_refuses_a_beta_that_loses_more_than_two_points_in_any_language() -> None:
    ref = metrics(0.70, 0.0, r1_en=0.80)
    runs = {"0.05": metrics(0.65, 0.9, r1_en=0.75),   # 5 points lost: refused
            "0.2": metrics(0.70, 0.5, r1_en=0.77),    # 3 points lost in English: refused
            "1": metrics(0.69, 0.3, r1_en=0.795),     # within 2 points everywhere
            "3": metrics(0.71, 0.1, r1_en=0.80)}
    config = RLRunConfig()
    assert config.max_r_at_1_drop == pytest.approx(0.02)
    beta, selection = choose_beta({"reference": ref, "runs": {b: {"final": f} for b, f in runs.items()}}, config)
    assert beta == 1.0 and selection["passing"] == [1.0, 3.0]
    assert selection["max_r_at_1_drop"] == pytest.approx(0.02)


def test_without_a_passing_beta_the_one_closest_to_the_reference_is_served() -> None:
    ref = metrics(0.70, 0.0)
    runs = {"0.05": metrics(0.60, 0.9), "0.5": metrics(0.66, 0.4), "2": metrics(0.67, 0.2)}
    beta, selection = choose_beta({"reference": ref, "runs": {b: {"final": f} for b, f in runs.items()}},
                                  RLRunConfig())
    assert beta == 2.0 and selection["passing"] == [] and "no β" in selection["rule"]


def test_a_drop_of_exactly_two_points_is_within_the_guard() -> None:
    """14 → 9 hits of 250 pools is a 2-point drop, though 14/250 − 9/250 exceeds 0.02 in floating point."""
    n = 250
    ref, final = metrics(14 / n, 0.0), metrics(9 / n, 0.4)
    assert ref["r_at_1"] - final["r_at_1"] > 0.02  # the float difference the guard must tolerate
    runs = {"0.5": final, "3": metrics(14 / n, 0.1)}
    beta, selection = choose_beta({"reference": ref, "runs": {b: {"final": f} for b, f in runs.items()}},
                                  RLRunConfig())
    assert beta == 0.5 and selection["passing"] == [0.5, 3.0]
    targets = _targets(report(ref, final, "0.5"), 0.5, hits(n, 14), hits(n, 9), np.array(["en"] * n), seed=0)
    assert targets["all"]["met"] is True and targets["en"]["met"] is True
    worse = metrics(8 / n, 0.4)
    assert choose_beta({"reference": ref, "runs": {"0.5": {"final": worse}}}, RLRunConfig())[1]["passing"] == []

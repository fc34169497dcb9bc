"""The RL judge's parts on synthetic pools: paired intervals, best-of-N at matched KL, the target rule, the
binding constraint, the spread over seeds and the judge's content cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.job_configs import RLRunConfig
from core.types import Context, Turn
from rl.judge_cache import CachedJudge
from rl.policy_eval import (
    analytic_bon_kl,
    best_of_n_choice,
    best_of_n_kl,
    matched_n,
    paired_interval,
    seed_spread,
    spread,
)
from rl.policy_targets import binding_constraints, choose_by_target, target_check


def test_paired_interval_covers_the_shift_and_pairing_narrows_it() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=1000)
    shifted = reference + 0.1 + 0.05 * rng.normal(size=1000)
    paired = paired_interval(reference, shifted, seed=0)
    assert paired["lo"] < 0.1 < paired["hi"] and paired["hi"] - paired["lo"] < 0.02
    assert paired["diff"] == pytest.approx(float((shifted - reference).mean()))
    unpaired = paired_interval(reference, rng.permutation(shifted), seed=0)
    assert unpaired["hi"] - unpaired["lo"] > 5 * (paired["hi"] - paired["lo"])
    assert paired_interval(reference, shifted, seed=0) == paired  # seeded: the same numbers every run


def test_matched_n_inverts_the_analytic_kl() -> None:
    for n in (1, 2, 3, 8, 64):
        assert matched_n(analytic_bon_kl(n)) == n
    assert matched_n(0.0) == 1 and matched_n(math.nan) == 1
    assert analytic_bon_kl(1) == 0.0 and analytic_bon_kl(2) == pytest.approx(math.log(2) - 0.5)


def test_best_of_n_samples_from_pi_ref_and_its_exact_kl_matches_the_draws() -> None:
    rng = np.random.default_rng(1)
    sizes = np.full(400, 6)
    ref = rng.normal(size=sizes.sum())
    rewards = rng.normal(size=sizes.sum())
    assert best_of_n_kl(ref, rewards, sizes, 1) == pytest.approx(0.0, abs=1e-12)
    # continuous rewards: the exact KL on a finite pool stays below log N − (N−1)/N
    assert 0 < best_of_n_kl(ref, rewards, sizes, 4) < analytic_bon_kl(4)
    one, many = (best_of_n_choice(ref, rewards, sizes, n, seed=3) for n in (1, 16))
    assert rewards[many].mean() > rewards[one].mean() + 0.3
    assert np.array_equal(best_of_n_choice(ref, rewards, sizes, 16, seed=3), many)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    assert ((many >= starts) & (many < starts + sizes)).all()  # each pick is in its own pool


def comparison(spec: float, sensible_lo: float | None, r1_diff: float) -> dict:
    sensible = None if sensible_lo is None else {"diff": sensible_lo + 0.01, "lo": sensible_lo, "hi": 0.1}
    return {"pools": 1000, "teacher_z": {"diff": spec}, "sensible": sensible, "r_at_1": {"diff": r1_diff}}


def test_the_target_needs_all_three_constraints_in_every_language() -> None:
    config = RLRunConfig()
    good = target_check({"en": comparison(0.4, 0.0, -0.01), "ru": comparison(0.35, -0.005, -0.02),
                         "all": comparison(0.0, -1.0, -1.0)}, config)
    assert set(good) == {"en", "ru"} and all(entry["met"] for entry in good.values())
    short = target_check({"en": comparison(0.2, 0.0, 0.0), "ru": comparison(0.5, -0.02, -0.03)}, config)
    assert not short["en"]["met"] and short["en"]["constraints"]["specificity_gain_sd"]["gap"] == pytest.approx(0.1)
    ru = short["ru"]["constraints"]
    assert ru["sensible_diff_lower95"]["gap"] == pytest.approx(0.01) and ru["r_at_1_drop"]["gap"] == pytest.approx(0.01)
    unjudged = target_check({"en": comparison(0.5, None, 0.0)}, config)["en"]
    assert not unjudged["met"] and "--judge" in unjudged["constraints"]["sensible_diff_lower95"]["note"]


def test_binding_constraint_and_choice_over_betas() -> None:
    config = RLRunConfig()
    checks = {0.1: target_check({"en": comparison(0.6, -0.05, -0.05), "ru": comparison(0.5, 0.0, 0.0)}, config),
              1.0: target_check({"en": comparison(0.2, 0.0, -0.01), "ru": comparison(0.4, 0.0, 0.0)}, config),
              3.0: target_check({"en": comparison(0.1, 0.0, 0.0), "ru": comparison(0.1, 0.0, 0.0)}, config)}
    binding = binding_constraints(checks)
    assert binding["en"] == {"binding": "specificity_gain_sd", "beta": 1.0, "value": 0.2, "limit": 0.3,
                             "gap": pytest.approx(0.1)}
    assert binding["ru"]["binding"] is None and binding["ru"]["met_by"] == [0.1, 1.0]
    assert choose_by_target(checks, {0.1: 0.55, 1.0: 0.3, 3.0: 0.1}) == (None, [])  # en fails everywhere
    checks[1.0] = target_check({"en": comparison(0.31, 0.0, 0.0), "ru": comparison(0.4, 0.0, 0.0)}, config)
    assert choose_by_target(checks, {0.1: 0.55, 1.0: 0.35, 3.0: 0.1}) == (1.0, [1.0])
    guards = binding_constraints({3.0: target_check({"en": comparison(0.5, -0.03, -0.05)}, config)})["en"]
    assert guards["binding"] == ["r_at_1_drop", "sensible_diff_lower95"]
    assert guards["gaps"]["r_at_1_drop"]["gap"] == pytest.approx(0.03)


def test_spread_over_seeds() -> None:
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "seeds": 3}
    assert spread([0.5])["sd"] == 0.0
    rows = [{"en": {"top1_flip_rate": f, "r_at_1": {"value": v, "diff": d}, "sensible": None,
                    "teacher_z": {"value": v, "diff": d}}} for f, v, d in ((0.1, 0.5, 0.0), (0.3, 0.7, 0.2))]
    out = seed_spread(rows)["en"]
    assert out["sensible"] is None and out["r_at_1"]["diff"]["max"] == 0.2
    assert out["top1_flip_rate"]["mean"] == pytest.approx(0.2)


def test_judge_cache_scores_each_pair_once_and_a_rerun_reads_the_same_values(tmp_path: Path) -> None:
    calls: list[int] = []

    def score(contexts: list[Context], replies: list[str]) -> np.ndarray:
        calls.append(len(replies))
        return np.array([1.0 / (2.0 + len(c.last_text) + len(r)) for c, r in zip(contexts, replies, strict=True)])

    contexts = [Context((Turn("A", f"hello {i % 3}"),)) for i in range(10)]
    replies = [f"reply {i % 4}" for i in range(10)]
    path = tmp_path / "judge_cache.jsonl"
    first = CachedJudge(score, "judge@1", lambda c: c.last_text, path, chunk=4)
    values = first(contexts, replies)
    distinct = len({(c.last_text, r) for c, r in zip(contexts, replies, strict=True)})
    assert sum(calls) == distinct and max(calls) <= 4
    assert np.array_equal(first(contexts, replies), values) and sum(calls) == distinct
    again = CachedJudge(score, "judge@1", lambda c: c.last_text, path)
    assert np.array_equal(again(contexts, replies), values) and sum(calls) == distinct
    other = CachedJudge(score, "judge@2", lambda c: c.last_text, path)  # a retrained judge reads nothing old
    other(contexts[:1], replies[:1])
    assert sum(calls) == distinct + 1
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"judge_cache\.jsonl:1"):
        CachedJudge(score, "judge@1", lambda c: c.last_text, path)


def test_stored_encoder_encodes_each_text_once_per_kind_and_the_store_survives_a_restart(tmp_path: Path) -> None:
    from rl.vector_store import StoredEncoder, VectorStore, prefetch

    class Counting:
        identity, dim = "enc@1", 3

        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode_queries(self, texts: list[str]) -> np.ndarray:
            self.seen += texts
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

        def encode_passages(self, texts: list[str]) -> np.ndarray:
            self.seen += texts
            return np.array([[len(t), 0.0, 1.0] for t in texts], dtype=np.float32)

    inner = Counting()
    store = VectorStore.for_encoder(tmp_path, inner)
    encoder = StoredEncoder(inner, store)
    assert prefetch(encoder, ["a b", "привет", "a b"], ["a b"], chunk=1, say=lambda _m: None) == 3
    assert sorted(inner.seen) == ["a b", "a b", "привет"]  # the query and the passage "a b" are different vectors
    again = StoredEncoder(inner, VectorStore.for_encoder(tmp_path, inner))
    assert np.array_equal(again.encode_queries(["привет", "a b"]), encoder.encode_queries(["привет", "a b"]))
    assert again.encode_passages(["a b"])[0].tolist() == [3.0, 0.0, 1.0] and len(inner.seen) == 3
    other = VectorStore.for_encoder(tmp_path, type("Other", (), {"identity": "enc@2"})())
    assert other.path != store.path and len(other) == 0  # another encoder never reads these vectors

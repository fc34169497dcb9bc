"""Tuning the blender on a synthetic pool where the reward is a known function of one feature."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from rl.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from rl.plots import pareto_front, plot_history, plot_pareto
from rl.policy import Groups, group_argmax
from rl.standardize import RewardStandardizer
from rl.tune import PolicyTuneConfig, load_checkpoint, tune_policy

POOL = 8


def make_pools(rng: np.random.Generator, n_groups: int) -> tuple[Groups, np.ndarray, np.ndarray]:
    """Feature 0 drives the reward, feature 1 the supervised label; 10% of feature values are missing."""
    n = n_groups * POOL
    X = rng.normal(size=(n, 4))
    rewards = np.tanh(X[:, 0])
    labels = (X[:, 1] + 0.3 * rng.normal(size=n) > 0.5).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan
    return Groups(X.astype(np.float32), np.full(n_groups, POOL)), rewards, labels


@pytest.fixture(scope="module")
def problem() -> dict:
    rng = np.random.default_rng(7)
    train, train_r, train_y = make_pools(rng, 300)
    dev, dev_r, dev_y = make_pools(rng, 150)
    ref = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 10, "seed": 1,
                     "num_threads": 1},
                    lgb.Dataset(train.X, train_y, group=train.group_sizes), num_boost_round=15)
    return {"ref": ref, "train": train, "dev": dev, "train_r": train_r, "dev_r": dev_r, "dev_y": dev_y}


def run(problem: dict, config: PolicyTuneConfig, **kwargs: object):
    dev_y = problem["dev_y"]

    def label_at_1(scores: np.ndarray, groups: Groups) -> float:
        return float(dev_y[group_argmax(scores, groups.group_sizes)].mean())

    return tune_policy(problem["ref"], problem["train"], problem["dev"], problem["train_r"],
                       {"label_at_1": label_at_1}, config, dev_rewards=problem["dev_r"], **kwargs)


BASE = PolicyTuneConfig(beta=0.1, alpha=0.0, rounds_per_iteration=5, iterations=3, learning_rate=0.2, num_leaves=7,
                        min_data_in_leaf=10, seed=3)


def test_tuning_raises_held_out_reward_and_beta_bounds_kl(problem: dict) -> None:
    loose = run(problem, BASE)
    tight = run(problem, dataclasses.replace(BASE, beta=1.0))
    frozen = run(problem, dataclasses.replace(BASE, beta=100.0))
    start, end = loose.history[0], loose.history[-1]
    assert start["dev_kl"] == pytest.approx(0.0, abs=1e-12)
    assert end["dev_reward"] > start["dev_reward"] + 0.05
    assert end["dev_top1_reward"] > start["dev_top1_reward"]
    assert [row["iteration"] for row in loose.history] == [0, 1, 2, 3]
    assert "dev_label_at_1" in end and 0.0 <= end["dev_label_at_1"] <= 1.0
    assert tight.history[-1]["train_kl"] < end["train_kl"]
    assert tight.history[-1]["dev_kl"] < end["dev_kl"]
    assert frozen.history[-1]["train_kl"] < 0.01 and frozen.history[-1]["dev_kl"] < 0.01
    scores = loose.predict(problem["dev"].X)
    assert scores.shape == (len(problem["dev"].X),)
    assert loose.booster.num_trees() == problem["ref"].num_trees() + 15


def test_tuned_booster_keeps_the_reference_feature_names(problem: dict) -> None:
    names = ["spec", "label", "noise_a", "noise_b"]
    train = problem["train"]
    labels = (np.nan_to_num(train.X[:, 1]) > 0.5).astype(int)
    ref = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_leaves": 7, "seed": 1, "num_threads": 1},
                    lgb.Dataset(train.X, labels, group=train.group_sizes, feature_name=names), num_boost_round=5)
    result = tune_policy(ref, train, problem["dev"], problem["train_r"], {},
                         dataclasses.replace(BASE, iterations=1))
    assert result.booster.feature_name() == names


def test_resume_continues_from_the_saved_iteration(problem: dict, tmp_path: Path) -> None:
    straight = run(problem, BASE)
    first = run(problem, dataclasses.replace(BASE, iterations=2), out_dir=tmp_path)
    assert load_checkpoint(tmp_path)["iteration"] == 2
    seen: list[dict] = []
    resumed = run(problem, BASE, out_dir=tmp_path, progress=seen.append)
    assert [row["iteration"] for row in seen] == [3]
    assert len(resumed.history) == 4 and resumed.history[:3] == first.history
    np.testing.assert_allclose(resumed.predict(problem["dev"].X), straight.predict(problem["dev"].X), atol=1e-9)
    assert load_checkpoint(tmp_path)["iteration"] == 3
    again = run(problem, BASE, out_dir=tmp_path, progress=seen.append)
    assert len(seen) == 1 and again.history == resumed.history
    with pytest.raises(ValueError, match=r"different settings.*beta"):
        run(problem, dataclasses.replace(BASE, beta=0.5), out_dir=tmp_path)
    other = dict(problem, train_r=problem["train_r"] * 2)
    with pytest.raises(ValueError, match=r"different inputs.*train"):
        run(other, BASE, out_dir=tmp_path)


def test_adaptive_beta_rises_when_kl_overshoots_the_target(problem: dict) -> None:
    result = run(problem, dataclasses.replace(BASE, target_kl=1e-4, kl_horizon=5.0))
    betas = [row["beta"] for row in result.history[1:]]
    assert betas[0] == BASE.beta and all(b2 > b1 for b1, b2 in itertools.pairwise(betas))


def test_kl_controllers() -> None:
    fixed = make_kl_controller(0.3, None)
    assert isinstance(fixed, FixedKLController) and fixed.update(100.0, 10) == 0.3
    ctl = AdaptiveKLController(1.0, target=0.1, horizon=10, clip=0.2)
    assert ctl.update(0.2, 5) == pytest.approx(1.1)  # error clipped to +0.2
    assert ctl.update(0.09, 10) == pytest.approx(1.1 * 0.9)  # error -0.1
    assert ctl.update(0.1, 10) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.0, target=0.1)
    with pytest.raises(ValueError):
        PolicyTuneConfig(beta=0.0, target_kl=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        PolicyTuneConfig(optimizer="ppo")


def test_reward_standardizer_fits_reference_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(3.0, 2.0, size=500)
    std = RewardStandardizer.fit(reference, name="teacher")
    z = std.transform(reference)
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    other = rng.normal(5.0, 2.0, size=100)
    assert std.transform(other).mean() == pytest.approx((other.mean() - reference.mean()) / reference.std())
    np.testing.assert_allclose(std.inverse(std.transform(other)), other)
    std.save(tmp_path / "std.json")
    assert RewardStandardizer.load(tmp_path / "std.json") == std
    with pytest.raises(ValueError, match="all equal"):
        RewardStandardizer.fit(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        RewardStandardizer.fit(np.array([1.0, np.nan]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="refit"):
        RewardStandardizer.load(tmp_path / "bad.json")


def test_plots_write_pngs(problem: dict, tmp_path: Path) -> None:
    result = run(problem, dataclasses.replace(BASE, iterations=1))
    path = plot_history(result.history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = [{"beta": b, "dev_specificity": s, "dev_r_at_1": r} for b, s, r in [(0.1, 0.9, 0.2), (1, 0.5, 0.5),
                                                                                  (10, 0.2, 0.6), (3, 0.3, 0.3)]]
    assert plot_pareto(points, tmp_path / "pareto.png").stat().st_size > 1000
    assert pareto_front(np.array([0.9, 0.5, 0.2, 0.3]), np.array([0.2, 0.5, 0.6, 0.3])).tolist() == [
        True, True, True, False]
    with pytest.raises(ValueError, match="dev_r_at_1"):
        plot_pareto([{"dev_specificity": 1.0}], tmp_path / "x.png")


def _report(runs: dict[str, tuple[float, float, float]]) -> dict:
    """β → (R@1 overall, R@1 ru, teacher specificity z) beside a π_ref at R@1 0.70 / 0.80, z 0."""
    def final(r1: float, r1_ru: float, spec: float) -> dict[str, float]:
        return {"r_at_1": r1, "r_at_1_ru": r1_ru, "teacher_specificity_z": spec}

    return {"reference": final(0.70, 0.80, 0.0), "runs": {b: {"final": final(*v)} for b, v in runs.items()}}


def test_saved_beta_is_the_most_specific_within_the_relevance_guard() -> None:
    from dialog.jobs.rl_tune import RLRunConfig, choose_beta

    report = _report({"0.05": (0.40, 0.50, 0.9), "0.2": (0.69, 0.79, 0.4), "1": (0.70, 0.80, 0.1),
                      "0.5": (0.69, 0.75, 0.6)})  # 0.5 loses 5 points in Russian: refused
    beta, selection = choose_beta(report, RLRunConfig())
    assert beta == 0.2 and selection["passing"] == [0.2, 1.0]
    assert choose_beta(report, RLRunConfig(main_beta=0.05))[0] == 0.05
    failing = _report({"0.05": (0.40, 0.50, 0.9), "0.2": (0.60, 0.70, 0.4)})
    beta, selection = choose_beta(failing, RLRunConfig())
    assert beta == 0.2 and selection["passing"] == [] and "no β" in selection["rule"]


def test_paired_drop_interval_covers_the_drop_and_narrows_with_pairing() -> None:
    from dialog.jobs.rl_tune import paired_drop_interval

    rng = np.random.default_rng(1)
    ref = (rng.random(400) < 0.5).astype(float)
    tuned = ref.copy()
    tuned[np.flatnonzero(ref)[:12]] = 0.0  # lose the gold on 12 of 400 pools: a 3-point drop
    lo, hi = paired_drop_interval(ref, tuned)
    assert lo <= 0.03 <= hi and lo > 0.0  # the drop is real: the interval excludes 0
    same_lo, same_hi = paired_drop_interval(ref, ref)
    assert same_lo == same_hi == 0.0
    assert all(np.isnan(paired_drop_interval(np.array([]), np.array([]))))

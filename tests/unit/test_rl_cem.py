"""The cross-entropy method optimizer and the best-of-N baseline."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from rl.best_of_n import best_of_n, best_of_n_curve, expected_max_reward
from rl.cem import CEMConfig, FeatureScaler, mean_objective, optimize_cem
from rl.objective import Regularization
from rl.policy import Groups, softmax
from rl.tune import PolicyTuneConfig, tune_policy


def synthetic(seed: int, n_groups: int = 200, size: int = 6) -> tuple[Groups, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_groups * size, 5))
    rewards = X[:, 2] - 0.5 * X[:, 4]
    X[rng.random(X.shape) < 0.1] = np.nan
    ref_scores = 0.5 * rng.normal(size=len(X))
    return Groups(X, np.full(n_groups, size)), rewards, ref_scores


def test_cem_raises_the_objective_and_is_deterministic() -> None:
    train, rewards, ref = synthetic(0)
    reg = Regularization(beta=0.2)
    config = CEMConfig(population=32, elite=6, init_std=0.5, seed=11)
    result = optimize_cem(train, ref, rewards, reg, generations=8, config=config)
    Xt = result.adjustment.scaler.transform(train.X)
    start = mean_objective(Xt, np.zeros(5), ref, rewards, train.group_sizes, reg)
    end = mean_objective(Xt, result.adjustment.weights, ref, rewards, train.group_sizes, reg)
    assert end > start + 0.1
    assert result.history[-1]["objective"] == pytest.approx(end)
    w = result.adjustment.weights
    assert w[2] > 0 and w[4] < 0 and abs(w[2]) > max(abs(w[0]), abs(w[1]), abs(w[3]))
    again = optimize_cem(train, ref, rewards, reg, generations=8, config=config)
    np.testing.assert_array_equal(again.adjustment.weights, w)
    other = optimize_cem(train, ref, rewards, reg, generations=8, config=CEMConfig(32, 6, 0.5, seed=12))
    assert not np.array_equal(other.adjustment.weights, w)
    half = optimize_cem(train, ref, rewards, reg, generations=4, config=config)
    rest = optimize_cem(train, ref, rewards, reg, generations=4, config=config, state=half.state)
    np.testing.assert_array_equal(rest.adjustment.weights, w)


def test_cem_generalizes_to_held_out_pools() -> None:
    train, rewards, ref = synthetic(1)
    dev, dev_rewards, dev_ref = synthetic(2, n_groups=100)
    result = optimize_cem(train, ref, rewards, Regularization(beta=0.2), 6, CEMConfig(32, 6, seed=0))
    before = np.mean(np.add.reduceat(softmax(dev_ref, dev.group_sizes) * dev_rewards, dev.starts))
    tuned = result.adjustment.scores(dev.X, dev_ref)
    after = np.mean(np.add.reduceat(softmax(tuned, dev.group_sizes) * dev_rewards, dev.starts))
    assert after > before + 0.1


def test_feature_scaler_fills_missing_with_the_mean() -> None:
    X = np.array([[1.0, np.nan, 5.0], [3.0, np.nan, 5.0], [np.nan, np.nan, 5.0]])
    scaler = FeatureScaler.fit(X)
    Xt = scaler.transform(X)
    assert np.isfinite(Xt).all()
    np.testing.assert_allclose(Xt[:, 0], [-1.0, 1.0, 0.0])
    np.testing.assert_allclose(Xt[:, 1:], 0.0)
    with pytest.raises(ValueError, match="features"):
        scaler.transform(np.zeros((2, 4)))


def test_tune_policy_with_cem_optimizer_resumes(tmp_path: Path) -> None:
    train, rewards, _ = synthetic(3, n_groups=120)
    dev, dev_rewards, _ = synthetic(4, n_groups=60)
    labels = (np.nan_to_num(train.X[:, 0]) > 0).astype(int)
    ref = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_leaves": 4, "min_data_in_leaf": 10,
                     "num_threads": 1}, lgb.Dataset(train.X, labels, group=train.group_sizes), num_boost_round=5)
    config = PolicyTuneConfig(beta=0.2, alpha=0.0, optimizer="cem", rounds_per_iteration=3, iterations=2,
                              cem_population=24, cem_elite=5, seed=5)
    straight = tune_policy(ref, train, dev, rewards, {}, config, dev_rewards=dev_rewards)
    assert straight.history[-1]["dev_reward"] > straight.history[0]["dev_reward"] + 0.05
    assert straight.booster.num_trees() == ref.num_trees()
    tune_policy(ref, train, dev, rewards, {}, PolicyTuneConfig(**{**config.__dict__, "iterations": 1}),
                dev_rewards=dev_rewards, out_dir=tmp_path)
    resumed = tune_policy(ref, train, dev, rewards, {}, config, dev_rewards=dev_rewards, out_dir=tmp_path)
    np.testing.assert_allclose(resumed.predict(dev.X), straight.predict(dev.X), atol=1e-12)


def test_best_of_n_picks_the_highest_reward() -> None:
    rewards = np.array([0.1, 0.7, 0.3, -1.0, 2.0])
    assert best_of_n(rewards, np.array([3, 2])).tolist() == [1, 4]
    with pytest.raises(ValueError, match="NaN"):
        best_of_n(np.array([np.nan, 1.0]), np.array([2]))


def test_expected_max_matches_brute_force_enumeration() -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=5)
    probs = rng.dirichlet(np.ones(5))
    sizes = np.array([5])
    for n in (1, 2, 3):
        brute = sum(np.prod(probs[list(t)]) * pool[list(t)].max() for t in itertools.product(range(5), repeat=n))
        assert expected_max_reward(pool, sizes, n, probs)[0] == pytest.approx(brute, abs=1e-12)
        combos = list(itertools.combinations(range(5), n))
        brute_wo = np.mean([pool[list(c)].max() for c in combos])
        assert expected_max_reward(pool, sizes, n, replace=False)[0] == pytest.approx(brute_wo, abs=1e-12)
    assert expected_max_reward(pool, sizes, 9, replace=False)[0] == pool.max()


def test_best_of_n_curve_rises_from_mean_to_max() -> None:
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=40)
    sizes = np.full(5, 8)
    curve = best_of_n_curve(rewards, sizes, [1, 2, 4, 16, 256])
    values = list(curve.values())
    assert values[0] == pytest.approx(rewards.mean())
    assert all(b > a for a, b in itertools.pairwise(values))
    pool_max = np.maximum.reduceat(rewards, np.arange(0, 40, 8)).mean()
    assert values[-1] == pytest.approx(pool_max, abs=1e-3)
    with pytest.raises(ValueError, match="sum"):
        expected_max_reward(rewards, sizes, 2, probs=np.full(40, 0.5))

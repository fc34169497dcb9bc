"""The policy math: group softmax, KL/entropy, and the analytic derivatives of the regularized objective."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from rl.objective import Regularization, clip_hessian, loss_derivatives, make_lgb_objective, objective_per_group
from rl.policy import (
    Groups,
    entropy_per_group,
    group_argmax,
    kl_per_group,
    log_softmax,
    policy_metrics,
    softmax,
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def random_pools(seed: int, n_groups: int = 6, max_size: int = 7) -> Arrays:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=n_groups)
    n = int(sizes.sum())
    return sizes, rng.normal(size=n) * 2, rng.normal(size=n) * 2, rng.normal(size=n)


def test_softmax_sums_to_one_per_pool_and_survives_huge_scores() -> None:
    sizes = np.array([3, 1, 4])
    scores = np.array([1e4, 1e4 + 1, 1e4 - 2, -5e3, 0.0, 800.0, 801.0, 799.0])
    p = softmax(scores, sizes)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(np.add.reduceat(p, [0, 3, 4]), 1.0, atol=1e-12)
    assert p[3] == 1.0
    shifted = softmax(scores - 1e4 * np.repeat([1, 0, 0], sizes), sizes)
    np.testing.assert_allclose(p, shifted, atol=1e-12)


def test_temperature_flattens_the_policy() -> None:
    sizes = np.array([4])
    scores = np.array([3.0, 1.0, 0.0, -1.0])
    sharp = entropy_per_group(log_softmax(scores, sizes, 0.5), sizes)[0]
    flat = entropy_per_group(log_softmax(scores, sizes, 5.0), sizes)[0]
    assert flat > sharp
    uniform = entropy_per_group(log_softmax(np.zeros(4), sizes), sizes)[0]
    assert uniform == pytest.approx(np.log(4))


def test_kl_is_zero_for_equal_policies_and_matches_a_direct_sum() -> None:
    sizes, s, s_ref, _ = random_pools(1)
    lp, lq = log_softmax(s, sizes), log_softmax(s_ref, sizes)
    np.testing.assert_allclose(kl_per_group(lp, lp, sizes), 0.0, atol=1e-12)
    kl = kl_per_group(lp, lq, sizes)
    start = 0
    for g, size in enumerate(sizes):
        p = np.exp(s[start : start + size]) / np.exp(s[start : start + size]).sum()
        q = np.exp(s_ref[start : start + size]) / np.exp(s_ref[start : start + size]).sum()
        assert kl[g] == pytest.approx(float(np.sum(p * np.log(p / q))), abs=1e-10)
        start += size
    assert (kl[sizes > 1] > 0).all()


def test_group_argmax_returns_first_best_flat_index() -> None:
    sizes = np.array([3, 2, 1])
    values = np.array([0.1, 0.9, 0.9, -1.0, -2.0, 5.0])
    assert group_argmax(values, sizes).tolist() == [1, 3, 5]


def test_policy_metrics_at_the_reference() -> None:
    sizes, s, _, r = random_pools(2)
    m = policy_metrics(s, s, sizes, r)
    assert m["kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["reward"] == pytest.approx(float(np.mean(np.add.reduceat(softmax(s, sizes) * r, Groups(
        np.zeros((len(s), 1)), sizes).starts))))


@pytest.mark.parametrize("beta,alpha,temperature", [(0.0, 0.0, 1.0), (0.1, 0.0, 1.0), (1.0, 0.5, 1.0), (5.0, 0.2, 0.7),
                                                   (0.3, 2.0, 2.0)])
def test_gradient_and_hessian_match_finite_differences(beta: float, alpha: float, temperature: float) -> None:
    reg = Regularization(beta, alpha, temperature)
    for seed in range(3):
        sizes, s, s_ref, r = random_pools(10 + seed)
        d = loss_derivatives(s, s_ref, r, sizes, reg)
        eps = 1e-5
        fd_grad = np.empty_like(s)
        fd_hess = np.empty_like(s)
        for i in range(len(s)):
            up, down = s.copy(), s.copy()
            up[i] += eps
            down[i] -= eps
            fd_grad[i] = -(objective_per_group(up, s_ref, r, sizes, reg).sum()
                           - objective_per_group(down, s_ref, r, sizes, reg).sum()) / (2 * eps)
            fd_hess[i] = (loss_derivatives(up, s_ref, r, sizes, reg).grad[i]
                          - loss_derivatives(down, s_ref, r, sizes, reg).grad[i]) / (2 * eps)
        np.testing.assert_allclose(d.grad, fd_grad, atol=1e-6)
        np.testing.assert_allclose(d.hess, fd_hess, atol=1e-6)
        np.testing.assert_allclose(d.objective, objective_per_group(s, s_ref, r, sizes, reg))


def test_objective_is_regularized_reward() -> None:
    sizes, s, s_ref, r = random_pools(3)
    reg = Regularization(beta=0.7, alpha=0.3)
    lp, lq = log_softmax(s, sizes), log_softmax(s_ref, sizes)
    expected = (np.add.reduceat(np.exp(lp) * r, np.r_[0, np.cumsum(sizes)[:-1]])
                - 0.7 * kl_per_group(lp, lq, sizes) + 0.3 * entropy_per_group(lp, sizes))
    np.testing.assert_allclose(objective_per_group(s, s_ref, r, sizes, reg), expected, atol=1e-12)


def test_clipped_hessian_is_positive_and_keeps_convex_entries() -> None:
    sizes, s, s_ref, r = random_pools(4, n_groups=30)
    reg = Regularization(beta=0.2)
    d = loss_derivatives(s, s_ref, r * 5, sizes, reg)
    assert (d.hess < 0).any(), "the test needs some negative curvature to be meaningful"
    clipped = clip_hessian(d.hess, s, sizes, reg, floor=1e-4)
    assert (clipped >= 1e-4).all()
    pi = softmax(s, sizes)
    keep = d.hess >= np.maximum(0.2 * pi * (1 - pi), 1e-4)
    np.testing.assert_array_equal(clipped[keep], d.hess[keep])


def test_bad_inputs_are_rejected() -> None:
    sizes, s, s_ref, r = random_pools(5)
    reg = Regularization()
    with pytest.raises(ValueError, match="add up"):
        loss_derivatives(s, s_ref, r, sizes + 1, reg)
    with pytest.raises(ValueError, match="NaN"):
        loss_derivatives(s, s_ref, np.where(np.arange(len(r)) == 0, np.nan, r), sizes, reg)
    with pytest.raises(ValueError, match="at least one"):
        log_softmax(np.zeros(3), np.array([3, 0]))
    with pytest.raises(ValueError):
        Regularization(beta=-1.0)


def test_custom_objective_sees_full_scores_when_continuing_from_reference() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    sizes = np.full(40, 10)
    ref = lgb.train({"objective": "lambdarank", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 5},
                    lgb.Dataset(X, (X[:, 1] > 0).astype(int), group=sizes), num_boost_round=5)
    s_ref = ref.predict(X, raw_score=True)
    rewards = np.nan_to_num(X[:, 0].astype(np.float64))
    inner = make_lgb_objective(s_ref, rewards, sizes, Regularization(beta=0.1))
    seen: list[np.ndarray] = []

    def spy(preds: np.ndarray, data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
        seen.append(preds.copy())
        return inner(preds, data)

    tuned = lgb.train({"objective": spy, "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 5},
                      lgb.Dataset(X, group=sizes), num_boost_round=3, init_model=ref)
    np.testing.assert_allclose(seen[0], s_ref, atol=1e-12)
    assert tuned.num_trees() == ref.num_trees() + 3
    r0 = policy_metrics(s_ref, s_ref, sizes, rewards)["reward"]
    r1 = policy_metrics(tuned.predict(X, raw_score=True), s_ref, sizes, rewards)["reward"]
    assert r1 > r0

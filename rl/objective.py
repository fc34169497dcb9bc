"""The KL- and entropy-regularized expected reward of the reranking policy, and its derivatives.

Per pool, with z = s / T, π = softmax(z) and the frozen reference ρ = softmax(s_ref / T)::

    J(s) = Σ π r − β·KL(π‖ρ) + α·H(π) = Σ_i π_i f_i,   f_i = r_i + β log ρ_i − (β+α) log π_i

Derivation (d log π_i / dz_j = δ_ij − π_j, dπ_i / dz_j = π_i (δ_ij − π_j)):

    dJ/dz_j  = π_j (f_j − J) + Σ_i π_i · (−(β+α)) (δ_ij − π_j) = π_j (f_j − J)
    d²J/dz_j² = π_j (1 − 2π_j)(f_j − J) − (β+α) π_j (1 − π_j)

The loss handed to LightGBM is −J summed over pools, and the chain rule through z = s / T divides the
gradient by T and the Hessian by T². The KL term keeps the policy near the supervised blender: the
reward models are imperfect proxies, and without it the booster would learn to please them (Goodhart).
The entropy term stops every pool from collapsing onto one candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from rl.policy import broadcast, group_sum, log_softmax, validate_group_sizes

DEFAULT_HESS_FLOOR = 1e-6

LightGBMObjective = Callable[[np.ndarray, lgb.Dataset], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Regularization:
    beta: float = 0.1
    alpha: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.beta < 0 or self.alpha < 0:
            raise ValueError(f"beta and alpha must be >= 0, got beta={self.beta}, alpha={self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class Derivatives:
    """Per-candidate derivatives of the loss −J with respect to the raw scores s."""

    grad: np.ndarray
    hess: np.ndarray
    objective: np.ndarray


def _check_inputs(scores: np.ndarray, ref_scores: np.ndarray, rewards: np.ndarray, group_sizes: np.ndarray) -> None:
    n = len(scores)
    if len(ref_scores) != n or len(rewards) != n:
        raise ValueError(f"scores ({n}), ref_scores ({len(ref_scores)}) and rewards ({len(rewards)}) must align")
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinity; fill or drop unscored candidates before tuning")
    validate_group_sizes(group_sizes, n)


def _f_and_j(
    log_pi: np.ndarray, log_ref: np.ndarray, rewards: np.ndarray, group_sizes: np.ndarray, reg: Regularization
) -> tuple[np.ndarray, np.ndarray]:
    f = rewards + reg.beta * log_ref - (reg.beta + reg.alpha) * log_pi
    return f, group_sum(np.exp(log_pi) * f, group_sizes)


def objective_per_group(
    scores: np.ndarray, ref_scores: np.ndarray, rewards: np.ndarray, group_sizes: np.ndarray, reg: Regularization
) -> np.ndarray:
    """J for each pool (higher is better)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    _check_inputs(scores, ref_scores, rewards, group_sizes)
    log_pi = log_softmax(scores, group_sizes, reg.temperature)
    log_ref = log_softmax(ref_scores, group_sizes, reg.temperature)
    return _f_and_j(log_pi, log_ref, rewards, group_sizes, reg)[1]


def loss_derivatives(
    scores: np.ndarray, ref_scores: np.ndarray, rewards: np.ndarray, group_sizes: np.ndarray, reg: Regularization
) -> Derivatives:
    """Exact gradient and Hessian diagonal of −J; the Hessian may be negative (see ``clip_hessian``)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    _check_inputs(scores, ref_scores, rewards, group_sizes)
    log_pi = log_softmax(scores, group_sizes, reg.temperature)
    log_ref = log_softmax(ref_scores, group_sizes, reg.temperature)
    f, j = _f_and_j(log_pi, log_ref, rewards, group_sizes, reg)
    pi = np.exp(log_pi)
    advantage = f - broadcast(j, group_sizes)
    t = reg.temperature
    grad = -pi * advantage / t
    hess = (-pi * (1.0 - 2.0 * pi) * advantage + (reg.beta + reg.alpha) * pi * (1.0 - pi)) / (t * t)
    return Derivatives(grad=grad, hess=hess, objective=j)


def clip_hessian(
    hess: np.ndarray,
    scores: np.ndarray,
    group_sizes: np.ndarray,
    reg: Regularization,
    floor: float = DEFAULT_HESS_FLOOR,
) -> np.ndarray:
    """Make the Hessian usable as Newton weights for LightGBM's leaf values (−Σg / (Σh + λ)).

    Choice: the exact diagonal is (reward curvature) + (β+α)·π(1−π)/T². The second part is always
    positive; the first is not, and a negative or near-zero sum would flip or blow up the leaf step.
    Where the exact value falls below the regularizer's curvature we use that curvature instead (a
    Gauss-Newton-style "keep only the convex part"), and everything is floored at ``floor`` so that
    β = α = 0 and single-candidate pools (π = 1, zero curvature) still give finite steps; the tuner's
    ``lambda_l2`` and learning rate then bound the step size.
    """
    if floor <= 0:
        raise ValueError(f"the Hessian floor must be positive, got {floor}")
    pi = np.exp(log_softmax(scores, group_sizes, reg.temperature))
    convex_part = (reg.beta + reg.alpha) * pi * (1.0 - pi) / reg.temperature**2
    return np.maximum(np.maximum(hess, convex_part), floor)


def make_lgb_objective(
    ref_scores: np.ndarray,
    rewards: np.ndarray,
    group_sizes: np.ndarray,
    reg: Regularization,
    hess_floor: float = DEFAULT_HESS_FLOOR,
) -> LightGBMObjective:
    """A LightGBM 4.x custom objective (pass it as ``params["objective"]``).

    When training continues from ``init_model``, LightGBM stores the initial booster's raw predictions as
    the dataset's init score and hands the objective init score + new trees, i.e. the full policy
    scores; so ``preds`` can be used directly and π_ref stays the frozen ``ref_scores``.
    """
    ref_scores = np.asarray(ref_scores, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    sizes = validate_group_sizes(group_sizes, len(ref_scores))
    _check_inputs(ref_scores, ref_scores, rewards, sizes)

    def objective(preds: np.ndarray, train_data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
        if preds.shape != ref_scores.shape:
            raise ValueError(f"LightGBM passed {preds.shape} predictions for {ref_scores.shape} reference scores")
        d = loss_derivatives(preds, ref_scores, rewards, sizes, reg)
        return d.grad, clip_hessian(d.hess, preds, sizes, reg, hess_floor)

    return objective

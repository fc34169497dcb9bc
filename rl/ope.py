"""Off-policy evaluation: the value of a target policy estimated from decisions another policy served.

Each logged decision i has a candidate pool, the logging policy's propensity μ_i(a) of every candidate,
the served candidate a_i and its observed reward r_i. For a target policy π with probabilities π_i(a):

- IPS    V = mean(w_i r_i),                        w_i = π_i(a_i) / μ_i(a_i)   (unbiased where μ > 0 wherever π > 0)
- SNIPS  V = Σ w_i r_i / Σ w_i                     (biased, O(1/n), but far less variance)
- DR     V = mean(Σ_a π_i(a) r̂_i(a) + w_i (r_i − r̂_i(a_i)))   (unbiased if either μ or r̂ is right)

r̂ is a ridge regression on the candidates' logged features and, when given, a reward model's scores of
them (``rl.ope_rewards``: relevance, specificity, total), cross-fitted (each fold predicted by a model that
never saw it) so its errors do not correlate with the rewards it corrects. Every estimate has a
percentile bootstrap interval over decisions, the effective sample size (Σw)² / Σw² of the weights,
and the target mass that falls where the logging policy never explored (which IPS cannot see and DR
can only guess through r̂): a warning when it is not negligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
UNSUPPORTED_WARNING = 0.01  # mean target mass on never-explored candidates above which a warning is given
LOW_ESS_WARNING = 0.01  # effective sample size below this share of the decisions


@dataclass
class LoggedDecisions:
    """Pools stored back to back (``group_sizes``), as in ``rl.policy``; one chosen index per pool."""

    logging_p: np.ndarray  # flat μ per candidate
    group_sizes: np.ndarray
    chosen: np.ndarray  # index within each pool
    rewards: np.ndarray  # per decision
    features: np.ndarray | None = None  # flat (candidates, features) for the reward model

    def __post_init__(self) -> None:
        self.logging_p = np.asarray(self.logging_p, dtype=np.float64)
        self.group_sizes = np.asarray(self.group_sizes, dtype=np.int64)
        self.chosen = np.asarray(self.chosen, dtype=np.int64)
        self.rewards = np.asarray(self.rewards, dtype=np.float64)
        n = len(self.group_sizes)
        if n == 0:
            raise ValueError("no logged decisions with rewards to evaluate")
        if int(self.group_sizes.sum()) != len(self.logging_p) or (self.group_sizes <= 0).any():
            raise ValueError("group sizes do not match the logged propensities; every pool needs a candidate")
        if len(self.chosen) != n or len(self.rewards) != n:
            raise ValueError(f"{n} pools but {len(self.chosen)} chosen indices and {len(self.rewards)} rewards")
        if (self.chosen < 0).any() or (self.chosen >= self.group_sizes).any():
            raise ValueError("a chosen index lies outside its pool")
        if self.features is not None and len(self.features) != len(self.logging_p):
            raise ValueError("features need one row per logged candidate")

    @property
    def n(self) -> int:
        return len(self.group_sizes)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.group_sizes)[:-1])).astype(np.int64)

    @property
    def chosen_flat(self) -> np.ndarray:
        return self.starts + self.chosen


@dataclass
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float

    def to_json(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class OffPolicyReport:
    estimates: list[Estimate]
    logging_value: float  # mean observed reward: the serving policy's own value
    n: int
    ess: float
    max_weight: float
    unsupported_mass: float  # mean π mass on candidates with μ = 0
    unsupported_share: float  # share of decisions where that mass is > 0
    warnings: list[str] = field(default_factory=list)

    def estimate(self, name: str) -> Estimate:
        return next(e for e in self.estimates if e.estimator == name)

    def to_json(self) -> dict[str, object]:
        return {"estimates": [e.to_json() for e in self.estimates], "logging_value": self.logging_value, "n": self.n,
                "ess": self.ess, "max_weight": self.max_weight, "unsupported_mass": self.unsupported_mass,
                "unsupported_share": self.unsupported_share, "warnings": list(self.warnings)}


def _segment_sum(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    starts = np.concatenate(([0], np.cumsum(group_sizes)[:-1])).astype(np.int64)
    return np.add.reduceat(np.asarray(values, dtype=np.float64), starts)


def _design(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    missing = np.isnan(X)
    filled = np.where(missing, 0.0, X)
    scale = np.maximum(np.abs(filled).max(axis=0), 1e-12) if len(filled) else np.ones(X.shape[1])
    return np.hstack([np.clip(filled / scale, -1e3, 1e3), missing.astype(np.float64), np.ones((len(X), 1))])


def cross_fit_reward_model(data: LoggedDecisions, folds: int = 2, alpha: float = 1.0, seed: int = 0,
                           model_scores: np.ndarray | None = None) -> np.ndarray:
    """r̂ for every logged candidate; decisions of fold k are predicted by a model fit on the other folds.

    ``model_scores`` (one row per logged candidate) are a reward model's outputs (``rl.ope_rewards``); they
    join the logged features as regressors, so the fit calibrates the reward model to the observed rewards
    instead of trusting its scale.
    """
    parts = [np.asarray(a, dtype=np.float64).reshape(len(data.logging_p), -1)
             for a in (data.features, model_scores) if a is not None]
    if not parts:
        raise ValueError("the doubly robust estimate needs candidate features or reward-model scores; log features "
                         "(a blender must be serving) or give a reward model")
    X = np.hstack(parts)
    fold_of = np.random.default_rng(seed).integers(0, max(folds, 2), size=data.n)
    pool_of = np.repeat(np.arange(data.n), data.group_sizes)
    chosen = data.chosen_flat
    out = np.empty(len(X))
    # Scale once on all rows so each fold's design has the same columns.
    design = _design(X)
    for k in range(max(folds, 2)):
        train = fold_of != k
        if not train.any() or train.all():
            weights = fit_ridge_design(design[chosen], data.rewards, alpha)
        else:
            weights = fit_ridge_design(design[chosen[train]], data.rewards[train], alpha)
        rows = fold_of[pool_of] == k
        out[rows] = design[rows] @ weights
    return np.clip(out, data.rewards.min(), data.rewards.max())


def fit_ridge_design(A: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    penalty = alpha * np.eye(A.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(A.T @ A + penalty, A.T @ y)


def _terms(data: LoggedDecisions, target_p: np.ndarray, reward_hat: np.ndarray | None) -> dict[str, np.ndarray]:
    chosen = data.chosen_flat
    mu = data.logging_p[chosen]
    if (mu <= 0).any():
        raise ValueError(f"{int((mu <= 0).sum())} logged decisions served a candidate with propensity 0; the log "
                         "is corrupt or the serving policy was misreported")
    w = target_p[chosen] / mu
    terms = {"w": w, "wr": w * data.rewards}
    if reward_hat is not None:
        direct = _segment_sum(target_p * reward_hat, data.group_sizes)
        terms["dr"] = direct + w * (data.rewards - reward_hat[chosen])
    return terms


def _values(terms: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    pick = (lambda a: a) if idx is None else (lambda a: a[idx])
    w, wr = pick(terms["w"]), pick(terms["wr"])
    out = {"ips": float(wr.mean()), "snips": float(wr.sum() / w.sum()) if w.sum() > 0 else float("nan")}
    if "dr" in terms:
        out["dr"] = float(pick(terms["dr"]).mean())
    return out


def evaluate(data: LoggedDecisions, target_p: np.ndarray, reward_hat: np.ndarray | None = None,
             n_boot: int = 500, alpha: float = 0.05, seed: int = 0) -> OffPolicyReport:
    """IPS, SNIPS and (given ``reward_hat``) DR estimates of the target policy, with bootstrap intervals."""
    target_p = np.asarray(target_p, dtype=np.float64)
    if len(target_p) != len(data.logging_p):
        raise ValueError(f"the target policy has {len(target_p)} probabilities, the log {len(data.logging_p)}")
    sums = _segment_sum(target_p, data.group_sizes)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError("target probabilities must sum to 1 within every pool")
    terms = _terms(data, target_p, reward_hat)
    point = _values(terms)
    rng = np.random.default_rng(seed)
    boots = [_values(terms, rng.integers(0, data.n, size=data.n)) for _ in range(n_boot)]
    w = terms["w"]
    ess = float(w.sum() ** 2 / (w ** 2).sum()) if (w > 0).any() else 0.0
    estimates = []
    for name, value in point.items():
        samples = np.array([b[name] for b in boots])
        samples = samples[np.isfinite(samples)]
        low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2]) if len(samples) else (np.nan, np.nan)
        estimates.append(Estimate(name, value, float(low), float(high), data.n, ess))
    unsupported = _segment_sum(np.where(data.logging_p <= 0, target_p, 0.0), data.group_sizes)
    report = OffPolicyReport(estimates, float(data.rewards.mean()), data.n, ess, float(w.max()),
                             float(unsupported.mean()), float((unsupported > 1e-12).mean()))
    report.warnings = _warnings(report)
    return report


def _warnings(report: OffPolicyReport) -> list[str]:
    out = []
    if report.unsupported_mass > UNSUPPORTED_WARNING:
        out.append(f"the target policy puts {report.unsupported_mass:.1%} of its mass (in "
                   f"{report.unsupported_share:.0%} of decisions) on candidates the logging policy never "
                   "explored: IPS and SNIPS are biased towards zero there and DR relies on its reward model; "
                   "log with more exploration ([exploration] epsilon, top_k or softmax)")
    if report.ess < LOW_ESS_WARNING * report.n:
        out.append(f"effective sample size {report.ess:.0f} of {report.n} decisions: the policies rarely agree, so "
                   "the intervals are wide; collect more logs or evaluate a policy closer to the served one")
    return out


def target_from_scores(scores: Sequence[np.ndarray], kind: str = "greedy", temperature: float = 1.0) -> np.ndarray:
    """Flat target probabilities from per-pool scores: greedy (argmax, first on ties) or a full softmax."""
    from rl.exploration import ServingPolicy

    policy = ServingPolicy(kind, epsilon=0.0, temperature=temperature, top_k=0)
    return np.concatenate([policy.propensities(s) for s in scores]) if len(scores) else np.zeros(0)

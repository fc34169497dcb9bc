"""Policy tuning of the LightGBM blender against a reward, regularized toward the supervised blender.

Each iteration runs a few boosting rounds with the custom objective of ``rl.objective`` (or a few CEM
generations of a linear correction, ``optimizer="cem"``), continuing from the previous iteration's
model, then logs train/dev reward, KL to the reference policy, entropy and the caller's dev metrics.
π_ref is always the *reference* booster's scores, never the previous iteration's, so the KL budget
is spent once over the whole run rather than once per iteration.

Runs are resumable: after every iteration the model and the metric log are swapped into
``out_dir/checkpoint`` in one atomic directory rename; rerunning with the same out dir, data and
settings continues from there (``iterations`` may be raised to extend a finished run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from core.atomic import atomic_directory, atomic_write_json, atomic_write_text, sha256_bytes
from core.job_configs import PolicyTuneConfig
from rl.cem import CEMConfig, CEMState, LinearAdjustment, optimize_cem
from rl.kl_control import make_kl_controller
from rl.objective import Regularization, make_lgb_objective, objective_per_group
from rl.policy import Groups, policy_metrics

EvalFn = Callable[[np.ndarray, Groups], float]
Progress = Callable[[dict[str, float]], None]


def cem_config(config: PolicyTuneConfig) -> CEMConfig:
    return CEMConfig(config.cem_population, config.cem_elite, config.cem_init_std, seed=config.seed)


@dataclass
class TuneResult:
    booster: lgb.Booster
    history: list[dict[str, float]]
    adjustment: LinearAdjustment | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw policy scores (the booster's, plus the CEM correction when there is one)."""
        scores = np.asarray(self.booster.predict(X, raw_score=True), dtype=np.float64)
        return scores if self.adjustment is None else scores + self.adjustment.delta(X)


def _fingerprint(ref_model: str, train: Groups, dev: Groups, train_rewards: np.ndarray,
                 dev_rewards: np.ndarray | None) -> dict[str, str]:
    def arrays(*items: np.ndarray | None) -> str:
        return sha256_bytes(b"".join(b"-" if a is None else np.ascontiguousarray(a).tobytes() for a in items))

    return {
        "reference": sha256_bytes(ref_model.encode("utf-8")),
        "train": arrays(train.X, train.group_sizes, train_rewards),
        "dev": arrays(dev.X, dev.group_sizes, dev_rewards),
    }


def _log_row(iteration: int, beta: float, train_scores: np.ndarray, dev_scores: np.ndarray, ctx: _RunData,
             config: PolicyTuneConfig) -> dict[str, float]:
    reg = Regularization(beta, config.alpha, config.temperature)
    row: dict[str, float] = {"iteration": float(iteration), "beta": float(beta)}
    train_m = policy_metrics(train_scores, ctx.ref_train, ctx.train.group_sizes, ctx.train_rewards, config.temperature)
    dev_m = policy_metrics(dev_scores, ctx.ref_dev, ctx.dev.group_sizes, ctx.dev_rewards, config.temperature)
    row.update({f"train_{k}": v for k, v in train_m.items()})
    row.update({f"dev_{k}": v for k, v in dev_m.items()})
    row["train_objective"] = float(
        objective_per_group(train_scores, ctx.ref_train, ctx.train_rewards, ctx.train.group_sizes, reg).mean())
    for name, fn in ctx.eval_fns.items():
        row[f"dev_{name}"] = float(fn(dev_scores, ctx.dev))
    return row


@dataclass
class _RunData:
    train: Groups
    dev: Groups
    train_rewards: np.ndarray
    dev_rewards: np.ndarray | None
    ref_train: np.ndarray
    ref_dev: np.ndarray
    eval_fns: dict[str, EvalFn]


def _boost(booster: lgb.Booster, ctx: _RunData, reg: Regularization, config: PolicyTuneConfig,
           iteration: int) -> lgb.Booster:
    objective = make_lgb_objective(ctx.ref_train, ctx.train_rewards, ctx.train.group_sizes, reg, config.hess_floor)
    params = {
        "objective": objective,
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "lambda_l2": config.lambda_l2,
        "seed": config.seed + iteration,
        "deterministic": True,
        "num_threads": config.num_threads,
        "verbosity": -1,
    }
    if config.bagging_fraction < 1.0:  # the row sample is what makes runs of different seeds differ
        params.update(bagging_fraction=config.bagging_fraction, bagging_freq=1, bagging_seed=config.seed + iteration)
    # The reference booster's feature names must survive: a tuned booster named Column_0.. would be
    # refused by the blender that wraps it.
    data = lgb.Dataset(ctx.train.X, group=ctx.train.group_sizes, feature_name=list(booster.feature_name()),
                       params={"verbosity": -1, "feature_pre_filter": False})
    return lgb.train(params, data, num_boost_round=config.rounds_per_iteration, init_model=booster)


def _save(out_dir: Path, state: dict[str, Any], booster: lgb.Booster, cem: dict[str, Any] | None) -> None:
    with atomic_directory(out_dir / "checkpoint") as scratch:
        atomic_write_text(scratch / "booster.txt", booster.model_to_string())
        if cem is not None:
            atomic_write_json(scratch / "cem.json", cem)
        atomic_write_json(scratch / "state.json", state)


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The saved run state (config, fingerprint, history, ...) or None when there is no checkpoint yet."""
    path = Path(out_dir) / "checkpoint" / "state.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({exc}); delete {path.parent} to start over") from exc


def _check_resumable(
    saved: dict[str, Any], config: PolicyTuneConfig, fingerprint: dict[str, str], out_dir: Path
) -> None:
    if saved["config"] != config.resume_key():
        changed = sorted(k for k, v in config.resume_key().items() if saved["config"].get(k) != v)
        raise ValueError(f"{out_dir} holds a run with different settings ({', '.join(changed)}); "
                         "use a new out dir or the same settings")
    if saved["fingerprint"] != fingerprint:
        changed = sorted(k for k, v in fingerprint.items() if saved["fingerprint"].get(k) != v)
        raise ValueError(f"{out_dir} holds a run on different inputs ({', '.join(changed)}); use a new out dir")


def tune_policy(
    ref_booster: lgb.Booster,
    train: Groups,
    dev: Groups,
    train_rewards: np.ndarray,
    eval_fns: dict[str, EvalFn],
    config: PolicyTuneConfig,
    progress: Progress | None = None,
    *,
    dev_rewards: np.ndarray | None = None,
    out_dir: Path | None = None,
) -> TuneResult:
    """Tune the blender toward ``train_rewards``; history row 0 is the reference policy itself."""
    train_rewards = np.asarray(train_rewards, dtype=np.float64)
    if len(train_rewards) != len(train.X) or (dev_rewards is not None and len(dev_rewards) != len(dev.X)):
        raise ValueError("rewards need one value per candidate row of their Groups")
    ref_model = ref_booster.model_to_string()  # trims to best_iteration, exactly what init_model continues from
    reference = lgb.Booster(model_str=ref_model)
    ctx = _RunData(train, dev, train_rewards, None if dev_rewards is None else np.asarray(dev_rewards, np.float64),
                   reference.predict(train.X, raw_score=True), reference.predict(dev.X, raw_score=True), eval_fns)
    fingerprint = _fingerprint(ref_model, train, dev, train_rewards, ctx.dev_rewards)

    booster, adjustment, cem_state, scaler = reference, None, None, None
    saved = load_checkpoint(out_dir) if out_dir is not None else None
    if saved is not None:
        _check_resumable(saved, config, fingerprint, Path(out_dir))
        history: list[dict[str, float]] = saved["history"]
        beta = float(saved["next_beta"])
        booster = lgb.Booster(model_file=str(Path(out_dir) / "checkpoint" / "booster.txt"))
        if config.optimizer == "cem":
            cem = json.loads((Path(out_dir) / "checkpoint" / "cem.json").read_text(encoding="utf-8"))
            cem_state, adjustment = CEMState.from_dict(cem["state"]), LinearAdjustment.from_dict(cem["adjustment"])
            scaler = adjustment.scaler
    else:
        beta = config.beta
        history = [_log_row(0, beta, ctx.ref_train, ctx.ref_dev, ctx, config)]
        if progress is not None:
            progress(history[0])
    controller = make_kl_controller(beta, config.target_kl, config.kl_horizon)

    for iteration in range(len(history), config.iterations + 1):
        started = time.monotonic()
        reg = Regularization(beta, config.alpha, config.temperature)
        if config.optimizer == "lgbm":
            booster = _boost(booster, ctx, reg, config, iteration)
            train_scores = booster.predict(train.X, raw_score=True)
            dev_scores = booster.predict(dev.X, raw_score=True)
        else:
            cem = optimize_cem(train, ctx.ref_train, train_rewards, reg, config.rounds_per_iteration,
                               cem_config(config), cem_state, scaler)
            cem_state, adjustment, scaler = cem.state, cem.adjustment, cem.adjustment.scaler
            train_scores = adjustment.scores(train.X, ctx.ref_train)
            dev_scores = adjustment.scores(dev.X, ctx.ref_dev)
        row = _log_row(iteration, beta, train_scores, dev_scores, ctx, config)
        row["seconds"] = time.monotonic() - started
        history.append(row)
        beta = controller.update(row["train_kl"], config.rounds_per_iteration)
        if out_dir is not None:
            state = {"config": config.resume_key(), "fingerprint": fingerprint, "iteration": iteration,
                     "next_beta": beta, "history": history}
            cem_blob = None
            if adjustment is not None and cem_state is not None:
                cem_blob = {"state": cem_state.to_dict(), "adjustment": adjustment.to_dict()}
            _save(Path(out_dir), state, booster, cem_blob)
        if progress is not None:
            progress(row)
    return TuneResult(booster=booster, history=history, adjustment=adjustment, extra={"next_beta": beta})


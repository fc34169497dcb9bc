"""The β × seed sweep of `repliq rl tune`, each policy judged against π_ref, and best-of-N at each β's KL.

Every (β, seed) run tunes π_ref with the policy seed set (``policy.bagging_fraction`` < 1 makes seeds
differ); the first seed's run is the one the job may save and the one its history and guard describe.
Each run, and best-of-N with the N whose analytic KL matches the β's mean dev KL, is judged by
``rl.policy_eval.PolicyJudge`` (R@1, sensibleness, teacher specificity, paired intervals vs π_ref); the
spread over seeds and the target check (``rl.policy_targets``) of the saved seed go into the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from core.job_configs import RLRunConfig
from rl.plots import plot_history
from rl.policy import Groups
from rl.policy_eval import (
    METRICS,
    PolicyJudge,
    analytic_bon_kl,
    best_of_n_choice,
    best_of_n_kl,
    matched_n,
    seed_spread,
)
from rl.policy_guard import flip_rate, tie_broken_scores
from rl.policy_targets import binding_constraints, target_check
from rl.tune import EvalFn, TuneResult, tune_policy

log = logging.getLogger("repliq.rl")


def run_dir(out_dir: Path, beta: float, seed: int) -> Path:
    """``beta-<β>`` for seed 0 (the layout runs had before seeds), ``beta-<β>-seed-<s>`` otherwise."""
    return out_dir / (f"beta-{beta:g}" if seed == 0 else f"beta-{beta:g}-seed-{seed}")


@dataclass
class SweepInputs:
    reference: lgb.Booster
    train: Groups
    dev: Groups
    train_rewards: np.ndarray
    dev_rewards: np.ndarray
    dev_disagreement: np.ndarray
    eval_fns: dict[str, EvalFn]
    judge: PolicyJudge
    final_metrics: Callable[[np.ndarray], dict[str, float]]  # the run's "final" dev metrics (DevJudge)


@dataclass
class SweepResult:
    results: dict[float, TuneResult]  # the first seed's run per β: the policy that may be saved
    runs: dict[str, Any]  # report["runs"]: history, final metrics and proxy spread of the saved seed
    evaluation: dict[str, Any]  # report["evaluation"]: per seed comparisons, spreads, best-of-N, targets


def _summary(outcome: dict[str, np.ndarray]) -> dict[str, float | None]:
    return {m: None if np.isnan(outcome[m]).any() else float(outcome[m].mean()) for m in METRICS}


def sweep(inputs: SweepInputs, config: RLRunConfig, out_dir: Path,
          progress: Callable[[dict[str, float]], None] | None = None) -> SweepResult:
    """Tune every (β, seed), judge each policy and best-of-N at its KL; the report's runs and evaluation."""
    seeds = config.evaluation.seeds
    if len(seeds) > 1 and config.policy.bagging_fraction >= 1.0:
        log.warning("%d seeds but policy.bagging_fraction = 1: LightGBM ignores the seed without sampling, so the "
                    "runs are identical and their spread is 0; set bagging_fraction < 1 (--bagging 0.8)", len(seeds))
    judge = inputs.judge
    betas = sorted(set(config.betas) | ({config.main_beta} if config.main_beta is not None else set()))
    results: dict[float, TuneResult] = {}
    runs: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    bon: dict[str, Any] = {}
    checks: dict[float, Any] = {}
    for beta in betas:
        per_seed: dict[str, Any] = {}
        for seed in seeds:
            tune_config = replace(config.policy, beta=beta, seed=seed)
            result = tune_policy(inputs.reference, inputs.train, inputs.dev, inputs.train_rewards, inputs.eval_fns,
                                 tune_config, progress, dev_rewards=inputs.dev_rewards,
                                 out_dir=run_dir(out_dir, beta, seed))
            raw = result.predict(inputs.dev.X)
            chosen = judge.chosen(raw)
            per_seed[str(seed)] = {"dev_kl": float(result.history[-1]["dev_kl"]),
                                   "comparison": judge.compare(judge.outcome(chosen))}
            log.info("judged β=%g seed %d: %s", beta, seed, _brief(per_seed[str(seed)]["comparison"]))
            if seed == seeds[0]:
                results[beta] = result
                runs[f"{beta:g}"] = _saved_run(inputs, result, raw, chosen, config)
                plot_history(result.history, out_dir / f"curves-beta-{beta:g}.png")
        comparisons = [entry["comparison"] for entry in per_seed.values()]
        policies[f"{beta:g}"] = {"beta": beta, "seeds": per_seed, "spread": seed_spread(comparisons),
                                 "dev_kl_mean": float(np.mean([e["dev_kl"] for e in per_seed.values()]))}
        checks[beta] = target_check(per_seed[str(seeds[0])]["comparison"], config)
        policies[f"{beta:g}"]["target"] = checks[beta]
        if config.evaluation.best_of_n:
            bon[f"{beta:g}"] = _best_of_n(inputs, policies[f"{beta:g}"]["dev_kl_mean"], config)
    evaluation = {"reference": {lang: {m: (entry[m] or {}).get("reference") for m in METRICS}
                                for lang, entry in judge.compare(judge.reference).items()},
                  "reference_summary": _summary(judge.reference), "seeds": list(seeds),
                  "policies": policies, "best_of_n": bon, "binding": binding_constraints(checks)}
    return SweepResult(results, runs, evaluation)


def _brief(comparison: dict[str, Any]) -> str:
    """One log line: each language's differences from π_ref."""
    return "; ".join(f"{lang}: " + ", ".join(f"Δ{m} {entry[m]['diff']:+.3f}" for m in METRICS if entry[m] is not None)
                     for lang, entry in comparison.items())


def _saved_run(inputs: SweepInputs, result: TuneResult, raw: np.ndarray, chosen: np.ndarray,
               config: RLRunConfig) -> dict[str, Any]:
    """The report entry of the seed that may be saved: history, final dev metrics, flip rates, proxy spread."""
    judge = inputs.judge
    broken = tie_broken_scores(raw, judge.ref_scores, inputs.dev.group_sizes, config.tie_tolerance)
    final = {**inputs.final_metrics(broken),
             "top1_flip_rate": flip_rate(broken, judge.ref_scores, inputs.dev.group_sizes),
             "top1_flip_rate_without_tie_break": flip_rate(raw, judge.ref_scores, inputs.dev.group_sizes)}
    spread = {"policy": float(np.mean(inputs.dev_disagreement[chosen])),
              "reference": float(np.mean(inputs.dev_disagreement[judge.reference["chosen"]]))}
    return {"history": result.history, "final": final, "proxy_disagreement_top1": spread["policy"],
            "proxy_disagreement_top1_reference": spread["reference"]}


def _best_of_n(inputs: SweepInputs, kl: float, config: RLRunConfig) -> dict[str, Any]:
    """Best-of-N with the tuned-on reward, N matched to ``kl`` (the β's mean dev KL), once per seed."""
    judge, sizes = inputs.judge, inputs.dev.group_sizes
    n = matched_n(kl)
    temperature = config.policy.temperature
    per_seed = {}
    for seed in config.evaluation.seeds[:config.evaluation.best_of_n_draws]:
        chosen = best_of_n_choice(judge.ref_scores, inputs.dev_rewards, sizes, n, seed, temperature)
        per_seed[str(seed)] = {"comparison": judge.compare(judge.outcome(chosen))}
    comparisons = [entry["comparison"] for entry in per_seed.values()]
    return {"n": n, "kl_matched": kl, "kl_analytic": analytic_bon_kl(n),
            "kl_exact": best_of_n_kl(judge.ref_scores, inputs.dev_rewards, sizes, n, temperature),
            "seeds": per_seed, "spread": seed_spread(comparisons)}

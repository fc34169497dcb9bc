"""How off-policy error falls with exploration and with log size, on the simulated bandit of rl.ope_simulation.

`python -m bench.bench_offpolicy [--reps 10]` prints a markdown table: for each logging policy
(epsilon-greedy over the whole pool at several ε) and log size, the mean absolute error of IPS, SNIPS
and DR against B's exact value, DR's mean 95% interval width and how often it covered the truth.
A second table gives DR's direct method a reward model's scores (``cross_fit_reward_model(model_scores=...)``):
the users' true reward probability plus Gaussian noise of a given sd, i.e. reward models of known quality.
"""

from __future__ import annotations

import argparse

import numpy as np

from rl.exploration import ServingPolicy
from rl.ope import cross_fit_reward_model, evaluate
from rl.ope_simulation import World, log_decisions, policy_probs, true_value


def run(reps: int, sizes: list[int], epsilons: list[float], n_boot: int) -> list[str]:
    world = World.make(seed=1)
    target = ServingPolicy("greedy")
    truth = true_value(world, target)
    served = true_value(World(world.beta, world.theta_a, world.theta_a), target)
    rows = [f"B's exact value {truth:.4f}; served A (greedy) {served:.4f}",
            "", "| ε | decisions | IPS abs err | SNIPS abs err | DR abs err | DR 95% width | DR coverage |",
            "|---|---|---|---|---|---|---|"]
    for eps in epsilons:
        for n in sizes:
            errs: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
            widths, covered = [], 0
            for rep in range(reps):
                data, X = log_decisions(world, n, ServingPolicy("epsilon-greedy", eps, top_k=0), seed=1000 + rep)
                report = evaluate(data, policy_probs(X, world.theta_b, target).reshape(-1),
                                  cross_fit_reward_model(data, seed=rep), n_boot=n_boot, seed=rep)
                for name in errs:
                    errs[name].append(abs(report.estimate(name).value - truth))
                dr = report.estimate("dr")
                widths.append(dr.ci_high - dr.ci_low)
                covered += dr.ci_low <= truth <= dr.ci_high
            rows.append(f"| {eps:g} | {n} | {np.mean(errs['ips']):.4f} | {np.mean(errs['snips']):.4f} | "
                        f"{np.mean(errs['dr']):.4f} | {np.mean(widths):.4f} | {covered}/{reps} |")
    return rows


def run_reward_model(reps: int, sizes: list[int], eps: float, noises: list[float | None], n_boot: int) -> list[str]:
    world = World.make(seed=1)
    target = ServingPolicy("greedy")
    truth = true_value(world, target)
    rows = [f"ε = {eps:g}; DR with the reward model's scores in its direct method", "",
            "| reward model noise sd | decisions | DR abs err | DR 95% width | DR coverage |", "|---|---|---|---|---|"]
    for noise in noises:
        for n in sizes:
            errs, widths, covered = [], [], 0
            for rep in range(reps):
                data, X = log_decisions(world, n, ServingPolicy("epsilon-greedy", eps, top_k=0), seed=1000 + rep)
                scores = None
                if noise is not None:
                    rng = np.random.default_rng(rep)
                    scores = (world.reward_p(X) + rng.normal(scale=noise, size=X.shape[:2])).reshape(-1, 1)
                report = evaluate(data, policy_probs(X, world.theta_b, target).reshape(-1),
                                  cross_fit_reward_model(data, seed=rep, model_scores=scores), n_boot=n_boot,
                                  seed=rep)
                dr = report.estimate("dr")
                errs.append(abs(dr.value - truth))
                widths.append(dr.ci_high - dr.ci_low)
                covered += dr.ci_low <= truth <= dr.ci_high
            label = "no reward model" if noise is None else f"{noise:g}"
            rows.append(f"| {label} | {n} | {np.mean(errs):.4f} | {np.mean(widths):.4f} | {covered}/{reps} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--only-reward-model", action="store_true", help="print only the reward-model table")
    args = parser.parse_args()
    if not args.only_reward_model:
        print("\n".join(run(args.reps, [2000, 5000, 20000], [0.05, 0.1, 0.3, 1.0], args.bootstrap)))
    print("\n".join(run_reward_model(args.reps, [2000, 5000], 0.05, [None, 0.3, 0.1, 0.0], args.bootstrap)))


if __name__ == "__main__":
    main()

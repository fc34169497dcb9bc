"""`repliq eval offpolicy`: estimate a blender's value from served decisions before serving it.

The target policy scores each logged pool with the blender's booster on the features serving logged,
so nothing is re-encoded; that is only valid when the blender reads exactly those features, so a log
written with other annotators, feature names or resources is refused with the difference. Rewards
(feedback, SSA labels) arrive keyed by request id; decisions without one are left out and counted. With
``reward_source="model"`` the reward is a reward model's score of the served candidate instead
(``rl.ope_rewards``), and whenever a reward model is given its scores of every logged candidate feed the
doubly robust estimate's direct-method regression.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ranker.blender import MANIFEST_NAME, RETRAIN_HINT, Blender, BlenderMismatchError
from rl.decision_records import policy_id, read_decisions
from rl.ope import ESTIMATORS, LoggedDecisions, OffPolicyReport, cross_fit_reward_model, evaluate, target_from_scores
from rl.ope_rewards import CandidateScorer, candidate_scores, model_rewards, workspace_reward_scorer

REWARD_SOURCES = ("feedback", "ssa", "model")
__all__ = ["REWARD_SOURCES", "OffPolicyConfig", "evaluate_offpolicy", "logs_hold_text",
           "workspace_reward_scorer"]


@dataclass
class OffPolicyConfig:
    target: str = "greedy"  # how the blender's scores become a policy: "greedy" or "softmax"
    temperature: float = 1.0
    n_boot: int = 500
    seed: int = 0


def logs_hold_text(logs: Path) -> bool:
    """Whether the logged decisions carry their dialogue turns (``log_user_text``), which a reward model reads."""
    records, _ = read_decisions(Path(logs))
    return bool(records) and all(r.get("context") for r in records)


def load_policy(directory: Path) -> Blender:
    """The blender as saved; only its booster and manifest are used (the logged features stand in for annotators)."""
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no blender ({MANIFEST_NAME} missing); pass a blender directory "
                                "such as <home>/artifacts/blender-rl")
    return Blender.load(directory)


def check_features(records: list[dict[str, Any]], blender: Blender) -> None:
    """Refuse logs whose features were computed by other annotators, resources or column order."""
    want_annotators = [{"name": a["name"], "version": a["version"]} for a in blender.manifest.annotators]
    problems: dict[str, int] = {}
    for record in records:
        schema = record.get("feature_schema") or {}
        if record.get("feature_names") != blender.feature_names:
            reason = "feature names differ" if record.get("feature_names") else "no features logged (bank-first)"
        elif schema.get("annotators") != want_annotators:
            reason = f"annotators {schema.get('annotators')} vs the policy's {want_annotators}"
        elif {k: v for k, v in (schema.get("resources") or {}).items() if k != "idf"} != \
                {k: v for k, v in blender.manifest.resources.items() if k != "idf"}:
            reason = f"resources {schema.get('resources')} vs the policy's {blender.manifest.resources}"
        else:
            continue
        problems[reason] = problems.get(reason, 0) + 1
    if problems:
        detail = "; ".join(f"{count} decision(s): {reason}" for reason, count in problems.items())
        raise BlenderMismatchError(f"the logs were written by other model versions than blender {blender.version} "
                                   f"reads ({detail}); evaluate a blender trained on the serving annotators, or "
                                   f"{RETRAIN_HINT}")


def logged_decisions(records: list[dict[str, Any]], rewards: Mapping[str, float]) -> tuple[LoggedDecisions, list]:
    """The rewarded decisions as a :class:`LoggedDecisions` (features as logged; null -> NaN)."""
    kept = [r for r in records if r["request_id"] in rewards]
    if not kept:
        raise ValueError(f"none of the {len(records)} logged decisions has a reward; collect Feedback or import "
                         "SSA labels for an export made with `repliq ssa export --from-logs`")
    width = len(kept[0]["feature_names"])
    rows = [[np.nan if v is None else v for v in (c["features"] or [None] * width)]
            for r in kept for c in r["candidates"]]
    data = LoggedDecisions(np.array([c["propensity"] for r in kept for c in r["candidates"]]),
                           np.array([len(r["candidates"]) for r in kept]), np.array([r["chosen"] for r in kept]),
                           np.array([rewards[r["request_id"]] for r in kept]),
                           features=np.array(rows, dtype=np.float64).reshape(len(rows), width))
    return data, kept


def evaluate_offpolicy(logs: Path, policy_dir: Path, rewards: Mapping[str, float] | None, out_dir: Path,
                       config: OffPolicyConfig | None = None, reward_source: str = "feedback",
                       reward_model: CandidateScorer | None = None) -> dict[str, Any]:
    """Estimate the blender in ``policy_dir`` from the decisions in ``logs``; report into ``out_dir``.

    ``rewards`` (request id -> reward) is the feedback or SSA reward; with ``reward_source="model"`` it is
    ignored and ``reward_model`` scores the served candidates. ``reward_model`` also feeds DR's r̂.
    """
    config = config or OffPolicyConfig()
    if reward_source not in REWARD_SOURCES:
        raise ValueError(f"reward source {reward_source!r}: choose one of {', '.join(REWARD_SOURCES)}")
    if reward_source == "model" and reward_model is None:
        raise ValueError("--reward model needs a reward model (the workspace's reward-relevance and "
                         "reward-specificity); train them with `repliq train reward`")
    records, problems = read_decisions(Path(logs))
    if not records:
        raise ValueError(f"no readable decisions in {logs} ({len(problems)} bad line(s)); see the log files")
    blender = load_policy(Path(policy_dir))
    check_features(records, blender)
    model_scores = candidate_scores(records, reward_model) if reward_model is not None else None
    if reward_source == "model":
        assert reward_model is not None and model_scores is not None
        rewards = model_rewards(records, model_scores, reward_model.columns)
    data, kept = logged_decisions(records, rewards or {})
    scores = np.split(blender.raw_scores(data.features), np.cumsum(data.group_sizes)[:-1])
    target = target_from_scores(scores, config.target, config.temperature)
    extra = None
    if model_scores is not None:
        by_id = {r["request_id"]: s for r, s in zip(records, model_scores, strict=True)}
        extra = np.vstack([by_id[r["request_id"]] for r in kept])
    reward_hat = cross_fit_reward_model(data, seed=config.seed, model_scores=extra)
    report = evaluate(data, target, reward_hat, n_boot=config.n_boot, seed=config.seed)
    direct = "cross-fitted ridge on the logged blender features" + (
        f" and reward model {reward_model.identity} ({', '.join(reward_model.columns)})" if reward_model else "")
    summary = {"policy": str(policy_dir), "policy_version": blender.version, "target": config.target,
               "temperature": config.temperature, "reward_source": reward_source, "logs": str(logs),
               "reward_model": reward_model.identity if reward_model is not None else None,
               "direct_method": direct,
               "decisions_read": len(records), "decisions_rewarded": len(kept),
               "skipped_lines": len(problems), "skipped_examples": [list(p) for p in problems[:20]],
               "logging_policies": sorted({policy_id(r) for r in kept}), **report.to_json()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "report.json", summary)
    atomic_write_text(out_dir / "report.md", render_markdown(summary))
    atomic_write_bytes(out_dir / "estimates.png", render_plot(report))
    return summary


def render_markdown(summary: Mapping[str, Any]) -> str:
    lines = [f"# Off-policy evaluation of blender {summary['policy_version']} ({summary['target']})", "",
             f"- logs: `{summary['logs']}`: {summary['decisions_read']} decisions read, "
             f"{summary['decisions_rewarded']} with a {summary['reward_source']} reward, "
             f"{summary['skipped_lines']} bad line(s) skipped",
             f"- logging policies: {', '.join(summary['logging_policies'])}",
             f"- doubly robust direct method: {summary['direct_method']}",
             f"- served value (mean observed reward): {summary['logging_value']:.4f}",
             f"- effective sample size {summary['ess']:.1f}, largest weight {summary['max_weight']:.2f}, "
             f"target mass never explored {summary['unsupported_mass']:.2%}", "",
             "| estimator | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {e['estimator']} | {e['value']:.4f} | [{e['ci_low']:.4f}, {e['ci_high']:.4f}] |"
              for e in summary["estimates"]]
    lines += [""] + [f"**Warning:** {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"


def render_plot(report: OffPolicyReport) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [e.estimator for e in report.estimates if e.estimator in ESTIMATORS]
    values = np.array([report.estimate(n).value for n in names])
    errors = np.array([[report.estimate(n).value - report.estimate(n).ci_low for n in names],
                       [report.estimate(n).ci_high - report.estimate(n).value for n in names]])
    ax.errorbar(range(len(names)), values, yerr=np.maximum(errors, 0), fmt="o", capsize=6)
    ax.axhline(report.logging_value, color="grey", linestyle="--", label="served policy")
    ax.set_xticks(range(len(names)), [n.upper() for n in names])
    ax.set_ylabel("estimated value (95% bootstrap)")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()

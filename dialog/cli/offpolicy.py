"""`repliq eval offpolicy`: argument parsing and reward loading for dialog/jobs/eval_offpolicy.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings


def register_offpolicy(ev_sub: argparse._SubParsersAction) -> None:
    parser = ev_sub.add_parser("offpolicy", help="IPS/SNIPS/DR value of a blender from served decision logs")
    parser.add_argument("--logs", type=Path, help="decision log directory (default: [logging] dir or <home>/decisions)")
    parser.add_argument("--policy", type=Path, required=True, help="blender directory to evaluate (e.g. blender-rl)")
    parser.add_argument("--reward", choices=("feedback", "ssa", "model"), default="feedback",
                        help="feedback: Chat/Feedback signals (<home>/feedback.sqlite); ssa: imported labels of an "
                             "export made with `ssa export --from-logs` (give --ssa-export); model: the workspace "
                             "reward model's score of the served reply (needs log_user_text)")
    parser.add_argument("--reward-model", choices=("auto", "none"), default="auto",
                        help="auto: the workspace reward model (reward-relevance + reward-specificity) joins the "
                             "doubly robust direct method when it exists and the logs hold user text; none: off")
    parser.add_argument("--ssa-export", type=Path, help="with --reward ssa: the export directory")
    parser.add_argument("--target", choices=("greedy", "softmax"), default="greedy",
                        help="the policy read from the blender: its top candidate, or a softmax over its scores")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (--target softmax)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="report directory (default: <home>/artifacts/offpolicy)")
    parser.set_defaults(func=run_offpolicy)


def _rewards(args: argparse.Namespace, settings: Settings) -> dict[str, float] | None:
    if args.reward == "model":
        return None
    if args.reward == "feedback":
        from dialog.serving.feedback import FEEDBACK_DB, feedback_rewards

        return feedback_rewards(settings.home / FEEDBACK_DB)
    if args.ssa_export is None:
        raise ValueError("--reward ssa needs --ssa-export DIR (an export made with `repliq ssa export --from-logs`)")
    from dialog.labeling import LabelStore
    from dialog.labeling.from_logs import ssa_rewards

    store = LabelStore(settings.home / "labels.sqlite")
    try:
        return ssa_rewards(store, args.ssa_export)
    finally:
        store.close()


def _reward_model(args: argparse.Namespace, settings: Settings, logs: Path) -> object | None:
    """The workspace reward model, when asked for (always with --reward model) and usable on these logs."""
    from dialog.jobs.eval_offpolicy import logs_hold_text, workspace_reward_scorer

    if args.reward != "model" and (args.reward_model == "none" or not logs_hold_text(logs)):
        return None
    try:
        return workspace_reward_scorer(settings)
    except FileNotFoundError as exc:
        if args.reward == "model":
            raise
        print(f"note: doubly robust without a reward model ({exc})")
        return None


def run_offpolicy(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.eval_offpolicy import OffPolicyConfig, evaluate_offpolicy

    logs = args.logs or (Path(settings.logging.dir).expanduser() if settings.logging.dir
                         else settings.home / "decisions")
    config = OffPolicyConfig(target=args.target, temperature=args.temperature, n_boot=args.bootstrap, seed=args.seed)
    out = args.out or settings.artifacts_dir / "offpolicy"
    summary = evaluate_offpolicy(logs, args.policy, _rewards(args, settings), out, config, args.reward,
                                 _reward_model(args, settings, logs))  # type: ignore[arg-type]
    print((out / "report.md").read_text(encoding="utf-8"))
    print(json.dumps({k: summary[k] for k in ("decisions_rewarded", "skipped_lines", "ess")}, indent=2))
    return 0

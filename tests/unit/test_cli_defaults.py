"""Every job flag's default is its config dataclass's field default (or its job function's parameter default).

The CLI builds these defaults from the dataclasses, so they agree by construction; this test is what keeps
it so when someone types a literal into a flag, or changes a field and forgets the flag (or the reverse).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from core.bank.default import build_default_bank
from core.executor import ExecutorConfig
from core.job_configs import (
    DEFAULT_POOLS,
    WORKSPACE_PROXY,
    BankScoreConfig,
    BlenderTrainConfig,
    EvalRankingConfig,
    RetrieverData,
    RetrieverTrainConfig,
    RLRunConfig,
)
from core.training_corpora import BlenderCorpora
from dialog.cli.main import build_parser
from dialog.generation.grading import GradeConfig
from dialog.generation.training import TrainingGeneration
from dialog.labeling.report import build_report
from dialog.labeling.simulate import SimulatedRater, simulate_answers
from dialog.labeling.workflow import export_pairwise, export_pointwise


def parameter(function: Any, name: str) -> Any:
    return inspect.signature(function).parameters[name].default


RUN = RLRunConfig()
# (command path, flag) -> the default it must have, read from where the job takes it.
EXPECTED: dict[tuple[str, str], Any] = {
    ("train blender", "--chitchat"): BlenderCorpora().chitchat_conversations,
    ("train blender", "--russian-conversations"): BlenderCorpora().russian_conversations,
    ("train blender", "--topicalchat-pairs"): BlenderCorpora().topicalchat_pairs,
    ("train blender", "--max-pairs"): BlenderCorpora().max_pairs_per_language,
    ("train blender", "--rounds"): BlenderTrainConfig().rounds,
    ("train blender", "--generate-per-context"): TrainingGeneration().per_context,
    ("train blender", "--generate-budget"): TrainingGeneration().budget_s,
    ("train blender", "--generated-labels"): GradeConfig().rule,
    ("train blender", "--corpus-negatives"): DEFAULT_POOLS.k_corpus,
    ("train blender", "--retrieved-negatives"): DEFAULT_POOLS.k_retrieved,
    ("train blender", "--random-negatives"): DEFAULT_POOLS.k_random,
    ("train retriever", "--base"): RetrieverTrainConfig().base,
    ("train retriever", "--name"): RetrieverTrainConfig().name,
    ("train retriever", "--per-language"): RetrieverData().per_language,
    ("train retriever", "--corpus-pairs"): RetrieverData().corpus_pairs,
    # None means "not given": the job then uses RetrieverData().topicalchat_pairs (the flag needs --topicalchat).
    ("train retriever", "--topicalchat-pairs"): None,
    ("train reward", "--members"): WORKSPACE_PROXY.members,
    ("train reward", "--head"): WORKSPACE_PROXY.head,
    ("train reward", "--inputs"): WORKSPACE_PROXY.inputs,
    ("rl tune", "--betas"): list(RUN.betas),
    ("rl tune", "--beta"): RUN.main_beta,
    ("rl tune", "--max-r1-drop"): RUN.max_r_at_1_drop,
    ("rl tune", "--alpha"): RUN.policy.alpha,
    ("rl tune", "--iterations"): RUN.policy.iterations,
    ("rl tune", "--standardize"): RUN.reward.standardize,
    ("rl tune", "--seeds"): list(RUN.evaluation.seeds),
    ("rl tune", "--bagging"): RUN.policy.bagging_fraction,
    ("rl tune", "--dev-contexts"): RUN.evaluation.dev_contexts,
    ("rl tune", "--dev-chitchat"): RUN.evaluation.corpora.chitchat_conversations,
    ("rl tune", "--dev-russian-conversations"): RUN.evaluation.corpora.russian_conversations,
    ("rl tune", "--best-of-n-draws"): RUN.evaluation.best_of_n_draws,
    ("eval ranking", "--contexts"): EvalRankingConfig().contexts,
    ("bank score", "--batch-size"): BankScoreConfig().batch_size,
    ("bank score", "--threads"): BankScoreConfig().threads,
    **{(command, "--executor"): ExecutorConfig().kind
       for command in ("bank score", "index build", "train reward", "train blender")},
    **{(command, "--actors"): ExecutorConfig().actors
       for command in ("bank score", "index build", "train reward", "train blender")},
    ("bank init", "--chitchat-limit"): parameter(build_default_bank, "chitchat_limit"),
    ("ssa export", "--overlap"): parameter(export_pointwise, "overlap"),
    ("ssa export", "--honeypot-rate"): parameter(export_pointwise, "honeypot_rate"),
    ("ssa export", "--seed"): parameter(export_pointwise, "seed"),
    ("ssa export", "--scale"): parameter(export_pairwise, "scale"),
    ("ssa export", "--format"): parameter(export_pointwise, "fmt"),
    ("ssa simulate", "--accuracy"): SimulatedRater("x").accuracy,
    ("ssa simulate", "--seed"): parameter(simulate_answers, "seed"),
    ("ssa report", "--method"): parameter(build_report, "method"),
    ("ssa report", "--min-honeypot-accuracy"): parameter(build_report, "min_honeypot_accuracy"),
    ("ssa report", "--seed"): parameter(build_report, "seed"),
}
# Commands that run a job: every flag with a default there must be listed above (or below, with the reason).
JOB_COMMANDS = ("train blender", "train retriever", "train reward", "rl tune", "eval ranking", "bank score",
                "bank init", "index build", "train adapter", "train default")
NOT_CONFIG = {
    **{(command, flag): "None: an unset flag takes [train.adapter] from the workspace settings (Settings.train)"
       for command in ("train adapter", "train default") for flag in ("--pairs", "--topicalchat-pairs", "--rank",
                                                                       "--epochs")},
    ("train blender", "--corpus"): "repeatable input list, starts empty",
    ("train retriever", "--corpus"): "repeatable input list, starts empty",
    ("eval ranking", "--corpus"): "repeatable input list, starts empty",
    ("eval ranking", "--encoder"): "repeatable; empty means the workspace encoder ([encoder] name)",
}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def flag_of(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


FLAGS = {(path, flag_of(action)): action for path, action in walk(build_parser())}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=" ".join)
def test_flag_default_is_its_field_default(key: tuple[str, str]) -> None:
    assert key in FLAGS, f"{key} is not a flag any more; update EXPECTED"
    assert FLAGS[key].default == EXPECTED[key], (
        f"`repliq {key[0]} {key[1]}` defaults to {FLAGS[key].default!r}, its config field to {EXPECTED[key]!r}; "
        "take the flag's default from the dataclass")


def test_every_job_flag_with_a_default_is_checked() -> None:
    """A new flag on a job command must say which field it sets, so its default cannot drift unseen."""
    unchecked = [key for key, action in FLAGS.items() if key[0] in JOB_COMMANDS
                 and action.default not in (None, False, [], argparse.SUPPRESS)
                 and key not in EXPECTED and key not in NOT_CONFIG]
    assert not unchecked, f"add these flags to EXPECTED (flag -> field): {unchecked}"


def test_the_walk_sees_the_parser() -> None:
    """The check above is only as good as the walk: it must reach nested sub-commands and their flags."""
    assert ("rl tune", "--alpha") in FLAGS and ("train blender", "--rounds") in FLAGS
    assert len({path for path, _ in FLAGS}) >= 20


def test_rl_tune_flags_build_the_run_config() -> None:
    """The parsed defaults, fed back through the command, give exactly the dataclass's run config."""
    from dataclasses import replace

    args = build_parser().parse_args(["rl", "tune"])
    built = replace(RUN, betas=tuple(args.betas), main_beta=args.beta, max_r_at_1_drop=args.max_r1_drop,
                    policy=replace(RUN.policy, alpha=args.alpha, iterations=args.iterations),
                    reward=replace(RUN.reward, standardize=args.standardize))
    assert built == RUN

"""`repliq train prompts` and `repliq eval prompts`: argument parsing for the UPRISE-style prompt retriever.

Both sub-commands join the existing ``train`` and ``eval`` groups, so this module registers after them
(dialog/cli/main.py lists it last).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings
from dialog.cli.executor import add_executor_flags, executor_config


def _group(commands: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The sub-command action of the already registered group ``name`` (``train`` or ``eval``)."""
    parser = commands.choices.get(name)
    actions = [a for a in getattr(parser, "_actions", []) if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        raise RuntimeError(f"`repliq {name}` must be registered before dialog.cli.prompts")
    return actions[0]


def register(commands: argparse._SubParsersAction) -> None:
    register_train(_group(commands, "train"))
    register_eval(_group(commands, "eval"))


def _corpora_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz)")
    parser.add_argument("--topicalchat", type=Path, help="folder with Topical-Chat valid_freq/valid_rare.json")
    parser.add_argument("--chitchat", type=int, default=3000, help="chitchat-dataset conversations to read (0 = none)")
    parser.add_argument("--lm", default="", help="scoring LM (default: [lm] name)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core CPU "
                        "one thread scored ~7x faster than two, no spin-waiting for a busy core)")


def register_train(sub: argparse._SubParsersAction) -> None:
    from dialog.jobs.prompt_train import PromptJobConfig
    from retriever.prompt_train import LOSSES

    defaults = PromptJobConfig()
    parser = sub.add_parser("prompts", help="UPRISE prompt retriever: demonstration pool, frozen-LM scores, adapter")
    _corpora_flags(parser)
    parser.add_argument("--pool-per-source", type=int, default=defaults.pool_per_source,
                        help=f"demonstrations per corpus (default {defaults.pool_per_source})")
    parser.add_argument("--examples", type=int, default=defaults.examples_per_language,
                        help=f"scored training examples per language (default {defaults.examples_per_language})")
    parser.add_argument("--candidates", type=int, default=defaults.scoring.candidates,
                        help=f"L: demonstrations scored per example (default {defaults.scoring.candidates}; "
                             "UPRISE used 50)")
    parser.add_argument("--epochs", type=int, default=defaults.train.epochs,
                        help=f"passes over the scored examples (default {defaults.train.epochs}; the epoch with the "
                             "best held-out choice gain is kept)")
    parser.add_argument("--loss", choices=(*LOSSES, "auto"), default=defaults.train.loss,
                        help="contrastive: UPRISE's best-scored positive; listwise: distil the LM's preference over "
                             "all L scored candidates; auto: train both, keep the better on held-out examples "
                             f"(default {defaults.train.loss})")
    parser.add_argument("--min-gain-z", type=float, default=defaults.train.min_gain_z,
                        help="keep a trained epoch over the plain encoder only if its held-out gain is this many "
                             f"standard errors above it (default {defaults.train.min_gain_z:g}: the best held-out "
                             "epoch)")
    add_executor_flags(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.prompt_train import PromptJobConfig, run_train_prompts
    from retriever.prompt_data import PromptCorpora

    for flag in ("pool_per_source", "examples", "candidates", "epochs", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    config = PromptJobConfig(corpora=PromptCorpora(chitchat_conversations=args.chitchat, russian=args.russian,
                                                   topicalchat=args.topicalchat),
                             pool_per_source=args.pool_per_source, examples_per_language=args.examples, lm=args.lm,
                             threads=args.threads, executor=executor_config(args))
    config.scoring.candidates = args.candidates
    config.train.epochs = args.epochs
    config.train.loss = args.loss
    config.train.min_gain_z = args.min_gain_z
    report = run_train_prompts(settings, config)
    print(json.dumps({k: report[k] for k in ("retriever", "pool", "lm", "metrics")}, indent=2, ensure_ascii=False))
    return 0


def register_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prompts", help="gold-reply log-prob with UPRISE vs random vs BM25 vs no demonstrations")
    _corpora_flags(parser)
    parser.add_argument("--contexts", type=int, default=60, help="dev contexts per language (default 60)")
    parser.add_argument("--k", type=int, default=3, help="demonstrations per prompt (default 3, as in UPRISE)")
    parser.add_argument("--transfer-lm", action="append", default=[],
                        help="another LM to score with the same retrieved prompts (repeatable, e.g. smollm2-135m)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev",
                        help="hash split of the evaluated conversations (default dev; test once, for a final check)")
    parser.add_argument("--skip-base", action="store_true",
                        help="leave out the plain-encoder condition (saves a fifth of the LM time)")
    from rl.generated_quality import GenerationEvalConfig

    generation = GenerationEvalConfig()
    parser.add_argument("--generate", type=int, default=generation.contexts_per_language, metavar="N",
                        help="also sample replies with each kind's demonstrations for N dev contexts per language and "
                             "report relevance, specificity, filter pass share and the served blender's picks "
                             "(default 0: off; ~5-10 s per reply on a CPU)")
    parser.add_argument("--generate-budget", type=float, default=generation.budget_s,
                        help=f"seconds allowed per generation attempt (default {generation.budget_s:g})")
    parser.add_argument("--out", type=Path, help="report directory (default: <home>/artifacts/eval-prompts)")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.eval_prompts import CONDITIONS, EvalPromptsConfig, run_eval_prompts
    from retriever.prompt_data import PromptCorpora
    from rl.generated_quality import GenerationEvalConfig

    if args.contexts < 1 or args.k < 1 or args.bootstrap < 100:
        raise ValueError("--contexts and --k must be at least 1 and --bootstrap at least 100")
    config = EvalPromptsConfig(corpora=PromptCorpora(chitchat_conversations=args.chitchat, russian=args.russian,
                                                     topicalchat=args.topicalchat),
                               contexts_per_language=args.contexts, k=args.k, lm=args.lm, split=args.split,
                               transfer_lms=list(args.transfer_lm), n_boot=args.bootstrap, threads=args.threads,
                               out=args.out,
                               conditions=tuple(c for c in CONDITIONS if not (args.skip_base and c == "base")),
                               generation=GenerationEvalConfig(contexts_per_language=args.generate,
                                                               budget_s=args.generate_budget, n_boot=args.bootstrap))
    config.generation.validate()
    if not args.generate:
        report = run_eval_prompts(settings, config)
    else:
        from dialog.generation.prompt_kinds import KindGenerator
        from dialog.serving.replay import PoolRanker

        ranker = PoolRanker.from_settings(settings)
        try:
            report = run_eval_prompts(settings, config, generate=KindGenerator.from_settings(settings, args.k,
                                                                                            args.threads),
                                      ranker=ranker)
        finally:
            ranker.close()
    print(report["table"])
    if "generation" in report:
        print(report["generation"]["table"])
    return 0

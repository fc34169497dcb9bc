"""`repliq train blender|retriever|reward|adapter|default`: each trained artifact lands in the workspace.

Flag defaults come from the jobs' config dataclasses (``core.job_configs``, ``core.training_corpora``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings
from core.job_configs import (
    DEFAULT_POOLS,
    REWARD_KINDS,
    TOPICALCHAT_PAIRS,
    WORKSPACE_PROXY,
    AdapterJobConfig,
    AdapterTrainConfig,
    BlenderTrainConfig,
    BuilderConfig,
    RetrieverData,
    RetrieverTrainConfig,
    RewardJobConfig,
    TrainDefaultConfig,
)
from core.training_corpora import BlenderCorpora
from dialog.cli.executor import add_executor_flags, executor_config
from dialog.generation.grading import GRADE_RULES, GradeConfig
from dialog.generation.training import TrainingGeneration


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train the blender, the retriever or a reward model")
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    register_blender(sub)
    register_retriever(sub)
    register_reward(sub)
    register_adapter(sub)
    register_default(sub)


def register_blender(sub: argparse._SubParsersAction) -> None:
    corpora, pools, train = BlenderCorpora(), DEFAULT_POOLS, BlenderTrainConfig()
    blender = sub.add_parser("blender", help="train the LightGBM blender on dialogue corpora against the live bank")
    blender.add_argument("--chitchat", type=int, default=corpora.chitchat_conversations,
                         help="English chitchat-dataset conversations to read "
                              f"(0 = none; default {corpora.chitchat_conversations})")
    blender.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz or .txt)")
    blender.add_argument("--russian-conversations", type=int, default=corpora.russian_conversations)
    blender.add_argument("--corpus", type=Path, action="append", default=[],
                         help="extra corpus in the repliq JSONL dialogue format (repeatable)")
    blender.add_argument("--topicalchat", type=Path, help="Topical-Chat folder (valid_freq/valid_rare.json); only "
                         "its train hash split is used, the part `repliq eval ranking` leaves out")
    blender.add_argument("--topicalchat-pairs", type=int, default=corpora.topicalchat_pairs, metavar="N",
                         help="Topical-Chat contexts, beside --max-pairs of the other corpora "
                              f"(default {corpora.topicalchat_pairs})")
    blender.add_argument("--max-pairs", type=int, default=corpora.max_pairs_per_language,
                         help=f"contexts per language (default {corpora.max_pairs_per_language})")
    blender.add_argument("--rounds", type=int, default=train.rounds,
                         help="maximum boosting rounds (early stopping on dev)")
    blender.add_argument("--corpus-negatives", type=int, default=pools.k_corpus, metavar="N",
                         help="negatives per context drawn from other dialogues' replies (same corpus, language "
                              f"and split); 0 = bank negatives only (default {pools.k_corpus})")
    blender.add_argument("--retrieved-negatives", type=int, default=pools.k_retrieved, metavar="N",
                         help=f"top retrieved bank phrases per context (default {pools.k_retrieved})")
    blender.add_argument("--random-negatives", type=int, default=pools.k_random, metavar="N",
                         help=f"random bank phrases per context (default {pools.k_random})")
    blender.add_argument("--reuse-data", action="store_true",
                         help="refit on the ranking data the last run saved beside --out (its -data folder) "
                              "instead of rebuilding it; refused if the annotators or resources changed")
    blender.add_argument("--generate-contexts", type=int, default=0, metavar="N",
                         help="add generated candidates (the served generator, with UPRISE demonstrations when a "
                              "prompt retriever is trained) to the pools of up to N contexts; ~1-4 s each on a CPU "
                              "(default 0: none)")
    blender.add_argument("--generate-per-context", type=int, default=TrainingGeneration().per_context, metavar="K",
                         help=f"generated candidates per chosen context (default {TrainingGeneration().per_context})")
    blender.add_argument("--generate-budget", type=float, default=TrainingGeneration().budget_s, metavar="S",
                         help=f"seconds of generation per chosen context (default {TrainingGeneration().budget_s:g})")
    blender.add_argument("--generated-labels", choices=GRADE_RULES, default=GradeConfig().rule,
                         help="labels of generated candidates: 'pmi' = 1 when the LM's PMI beats every one of the "
                              "bank's top retrieved phrases for the context (gold 2, the rest 0), 'none' = 0 like "
                              f"every non-gold candidate (default {GradeConfig().rule})")
    blender.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/blender)")
    add_executor_flags(blender)  # pools and features, batch by batch (encoding-bound)
    blender.set_defaults(func=run_blender)


def run_blender(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.train_blender import retrain_from_saved_data, train_workspace_blender
    from rl.blender_setup import BLENDER_DIR

    for flag in ("corpus_negatives", "retrieved_negatives", "random_negatives", "topicalchat_pairs"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    if args.topicalchat is not None and not args.topicalchat.is_dir():
        raise FileNotFoundError(f"--topicalchat {args.topicalchat} is not a folder; give the one holding "
                                "valid_freq.json and valid_rare.json")

    corpora = BlenderCorpora(chitchat_conversations=args.chitchat, russian_dialogues=args.russian,
                             russian_conversations=args.russian_conversations, jsonl=list(args.corpus),
                             max_pairs_per_language=args.max_pairs, topicalchat=args.topicalchat,
                             topicalchat_pairs=args.topicalchat_pairs)
    builder = BuilderConfig(k_corpus=args.corpus_negatives, k_retrieved=args.retrieved_negatives,
                            k_random=args.random_negatives, executor=executor_config(args))
    if args.reuse_data:
        metrics = retrain_from_saved_data(settings, BlenderTrainConfig(rounds=args.rounds),
                                          args.out or settings.artifacts_dir / BLENDER_DIR)
    else:
        generate, grade = None, None
        if args.generate_contexts > 0:
            from dialog.generation.grading import pmi_grader
            from dialog.generation.training import training_generator

            generate = training_generator(settings, TrainingGeneration(
                per_context=args.generate_per_context, max_contexts=args.generate_contexts,
                budget_s=args.generate_budget))
            if args.generated_labels != "none":  # the generator's LM is the teacher: loaded once
                grade = pmi_grader(settings, generate.source.generator.lm,  # type: ignore[attr-defined]
                                   GradeConfig(rule=args.generated_labels))
        metrics = train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=args.rounds), builder,
                                          out_dir=args.out, generate=generate, grade=grade)
    print(json.dumps(metrics, indent=2))
    return 0


def register_retriever(sub: argparse._SubParsersAction) -> None:
    config, data = RetrieverTrainConfig(), RetrieverData()
    retriever = sub.add_parser("retriever", help="fine-tune the bi-encoder on context→response pairs (resumable)")
    retriever.add_argument("--base", default=config.base, help="base encoder (cache name)")
    retriever.add_argument("--name", default=config.name, help="name of the new encoder in the model cache")
    retriever.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz)")
    retriever.add_argument("--per-language", type=int, default=data.per_language, help="training pairs per language")
    retriever.add_argument("--topicalchat", type=Path,
                           help="folder with Topical-Chat valid_freq/valid_rare.json; train hash split is added "
                                "(domain adaptation), dev split joins the dev metric")
    # No default here: the flag alone (without --topicalchat) is refused, so "not given" must be visible.
    retriever.add_argument("--topicalchat-pairs", type=int, metavar="N",
                           help=f"Topical-Chat training pairs (with --topicalchat; default {TOPICALCHAT_PAIRS})")
    retriever.add_argument("--corpus", type=Path, action="append", default=[],
                           help="a JSONL dialogue file (repeatable); train hash split is added, dev split joins "
                                "the dev metric (do not also evaluate it with `eval ranking --corpus`, which "
                                "uses every dialogue)")
    retriever.add_argument("--corpus-pairs", type=int, default=data.corpus_pairs, metavar="N",
                           help=f"training pairs per language of each --corpus file (default {data.corpus_pairs})")
    retriever.add_argument("--hard-negatives", action="store_true", help="mine hard negatives with the base encoder")
    retriever.add_argument("--work", type=Path, help="checkpoint directory (default: <home>/artifacts/train-<name>)")
    retriever.set_defaults(func=run_retriever)


def run_retriever(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.train_retriever import train_workspace_retriever

    if args.topicalchat_pairs is not None and args.topicalchat is None:
        raise ValueError("--topicalchat-pairs needs --topicalchat DIR (the folder with valid_freq/valid_rare.json)")
    data = RetrieverData(russian=args.russian, per_language=args.per_language, topicalchat=args.topicalchat,
                         corpora=list(args.corpus), corpus_pairs=args.corpus_pairs, hard_negatives=args.hard_negatives)
    if args.topicalchat_pairs is not None:
        data.topicalchat_pairs = args.topicalchat_pairs
    result = train_workspace_retriever(settings, RetrieverTrainConfig(base=args.base, name=args.name), data,
                                       args.work, say=print)
    print(f"encoder {result.model_dir}; report {result.report_path}; plot {result.plot_path}")
    print(f"next: repliq index build --encoder {result.model_dir}")
    return 0


def register_reward(sub: argparse._SubParsersAction) -> None:
    proxy = WORKSPACE_PROXY
    reward = sub.add_parser("reward", help="train a reward model: specificity proxy, relevance, or preference")
    reward.add_argument("--kind", choices=REWARD_KINDS, required=True)
    reward.add_argument("--data", type=Path, help="preferences JSONL (kind preference)")
    reward.add_argument("--russian", type=Path, help="Russian dialogues (kind relevance)")
    reward.add_argument("--members", type=int, default=proxy.members,
                        help="proxy ensemble size (kind specificity); their spread is the RL shift alarm")
    reward.add_argument("--head", choices=("mlp", "ridge"), default=proxy.head, help="proxy head (kind specificity)")
    reward.add_argument("--inputs", choices=("phrase", "lexical"), default=proxy.inputs,
                        help="proxy inputs: encoder embedding + length, or char trigrams (kind specificity)")
    reward.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/reward-<kind>)")
    add_executor_flags(reward)  # the teacher LM's pass over the bank (kind specificity)
    reward.set_defaults(func=run_reward)


def run_reward(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from dialog.jobs.train_reward import train_reward

    config = RewardJobConfig(kind=args.kind, data=args.data, russian=args.russian,
                             proxy=replace(WORKSPACE_PROXY, head=args.head, inputs=args.inputs, members=args.members),
                             executor=executor_config(args))
    metrics = train_reward(settings, config, args.out, say=print)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _adapter_flags(parser: argparse.ArgumentParser) -> None:
    """No literal defaults: an unset flag takes the workspace's ``[train.adapter]`` (Settings.train), whose own
    defaults are ``AdapterJobConfig``'s."""
    job, train = AdapterJobConfig(), AdapterTrainConfig()
    parser.add_argument("--pairs", type=int, metavar="N",
                        help=f"chitchat and Russian training pairs each (default {job.pairs_per_language})")
    parser.add_argument("--topicalchat-pairs", type=int, metavar="N",
                        help=f"Topical-Chat train-split pairs (default {job.topicalchat_pairs})")
    parser.add_argument("--rank", type=int, help=f"adapter rank (default {train.rank})")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {train.epochs})")


def _adapter_config(args: argparse.Namespace, settings: Settings) -> AdapterJobConfig:
    from dataclasses import replace

    base = settings.train.adapter

    def given(value: int | None, fallback: int) -> int:
        return fallback if value is None else value

    return replace(base, pairs_per_language=given(args.pairs, base.pairs_per_language),
                   topicalchat_pairs=given(args.topicalchat_pairs, base.topicalchat_pairs),
                   train=replace(base.train, rank=given(args.rank, base.train.rank),
                                 epochs=given(args.epochs, base.train.epochs)))


def register_adapter(sub: argparse._SubParsersAction) -> None:
    adapter = sub.add_parser("adapter", help="train the response-tuned query adapter on frozen encoder embeddings "
                                             "(resumable: embeddings are cached)")
    adapter.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz); train split used")
    adapter.add_argument("--topicalchat", type=Path, help="Topical-Chat folder; its train hash split is used")
    _adapter_flags(adapter)
    adapter.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/adapter)")
    adapter.set_defaults(func=run_adapter)


def run_adapter(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from dialog.jobs.train_adapter import run_train_adapter

    config = replace(_adapter_config(args, settings), russian=args.russian, topicalchat=args.topicalchat,
                     out=args.out)
    report = run_train_adapter(settings, config)
    print(f"adapter {report['adapter']}: held-out R@1/10 {report['adapter_r_at_1']} (base encoder "
          f"{report['base_r_at_1']}) on {report['train_pairs']} pairs")
    return 0


def register_default(sub: argparse._SubParsersAction) -> None:
    config = TrainDefaultConfig()
    default = sub.add_parser("default", help="rebuild the artifacts repliq ships (adapter, blender; rewards and RL "
                                             "on request) from public data, then optionally publish them")
    default.add_argument("--data", type=Path, required=True,
                         help="folder with ru/koziev_anekdot_dialogues.tar.xz and topicalchat_valid/")
    _adapter_flags(default)
    default.add_argument("--rewards", action="store_true", help="also train the reward heads (scores the bank "
                                                                "with the LM first: slow on a CPU)")
    default.add_argument("--rl", action="store_true", help="also tune the RL policy (needs --rewards)")
    default.add_argument("--publish", action="store_true",
                         help=f"copy the results into core/data/shipped (refused over {config.max_shipped_bytes} "
                              "bytes)")
    default.set_defaults(func=run_default)


def run_default(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.train_default import train_default

    if args.rl and not args.rewards:
        raise ValueError("--rl needs --rewards: the policy is tuned on the reward heads")
    # The chain is built from the workspace's trainer configs (Settings.train); flags override the adapter's.
    train = settings.train
    config = TrainDefaultConfig(data=args.data, adapter=_adapter_config(args, settings), corpora=train.corpora,
                                blender=train.blender, rewards=args.rewards, rl=args.rl, rl_run=train.rl,
                                publish=args.publish)
    report = train_default(settings, config)
    print(json.dumps(report.get("published", {}), indent=2))
    return 0

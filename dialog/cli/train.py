"""`repliq train blender|retriever|reward`: every trained artifact lands in the workspace with a manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Settings
from ranker.dataset import DEFAULT_POOLS, BuilderConfig

TOPICALCHAT_PAIRS = 2000  # Topical-Chat training pairs: about two turns of each train-split conversation
DEV_PAIRS = 100  # held-out pairs per language and corpus for the before/after R@1-of-10 in the manifest


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train the blender, the retriever or a reward model")
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)

    blender = sub.add_parser("blender", help="train the LightGBM blender on dialogue corpora against the live bank")
    blender.add_argument("--chitchat", type=int, default=1500,
                         help="English chitchat-dataset conversations to read (0 = none; default 1500)")
    blender.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz or .txt)")
    blender.add_argument("--russian-conversations", type=int, default=3000)
    blender.add_argument("--corpus", type=Path, action="append", default=[],
                         help="extra corpus in the repliq JSONL dialogue format (repeatable)")
    blender.add_argument("--topicalchat", type=Path, help="Topical-Chat folder (valid_freq/valid_rare.json); only "
                         "its train hash split is used, the part `repliq eval ranking` leaves out")
    blender.add_argument("--topicalchat-pairs", type=int, default=1500, metavar="N",
                         help="Topical-Chat contexts, beside --max-pairs of the other corpora (default 1500)")
    blender.add_argument("--max-pairs", type=int, default=2500, help="contexts per language (default 2500)")
    blender.add_argument("--rounds", type=int, default=500, help="maximum boosting rounds (early stopping on dev)")
    defaults = DEFAULT_POOLS
    blender.add_argument("--corpus-negatives", type=int, default=defaults.k_corpus, metavar="N",
                         help="negatives per context drawn from other dialogues' replies (same corpus, language "
                              f"and split); 0 = bank negatives only (default {defaults.k_corpus})")
    blender.add_argument("--retrieved-negatives", type=int, default=defaults.k_retrieved, metavar="N",
                         help=f"top retrieved bank phrases per context (default {defaults.k_retrieved})")
    blender.add_argument("--random-negatives", type=int, default=defaults.k_random, metavar="N",
                         help=f"random bank phrases per context (default {defaults.k_random})")
    blender.add_argument("--reuse-data", action="store_true",
                         help="refit on the ranking data the last run saved beside --out (its -data folder) "
                              "instead of rebuilding it; refused if the annotators or resources changed")
    blender.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/blender)")
    blender.set_defaults(func=run_blender)
    register_more(sub)


def run_blender(args: argparse.Namespace, settings: Settings) -> int:
    from dialog.jobs.train_blender import BlenderCorpora, retrain_from_saved_data, train_workspace_blender
    from ranker.train import BlenderTrainConfig
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
                            k_random=args.random_negatives)
    if args.reuse_data:
        metrics = retrain_from_saved_data(settings, BlenderTrainConfig(rounds=args.rounds),
                                          args.out or settings.artifacts_dir / BLENDER_DIR)
    else:
        metrics = train_workspace_blender(settings, corpora, BlenderTrainConfig(rounds=args.rounds), builder,
                                          out_dir=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def register_more(sub: argparse._SubParsersAction) -> None:
    retriever = sub.add_parser("retriever", help="fine-tune the bi-encoder on context→response pairs (resumable)")
    retriever.add_argument("--base", default="e5-small", help="base encoder (cache name)")
    retriever.add_argument("--name", default="e5-small-ft", help="name of the new encoder in the model cache")
    retriever.add_argument("--russian", type=Path, help="Russian dialogues (Koziev anekdot .tar.xz)")
    retriever.add_argument("--per-language", type=int, default=2000, help="training pairs per language")
    retriever.add_argument("--topicalchat", type=Path,
                           help="folder with Topical-Chat valid_freq/valid_rare.json; train hash split is added "
                                "(domain adaptation), dev split joins the dev metric")
    retriever.add_argument("--topicalchat-pairs", type=int, metavar="N",
                           help=f"Topical-Chat training pairs (with --topicalchat; default {TOPICALCHAT_PAIRS})")
    retriever.add_argument("--corpus", type=Path, action="append", default=[],
                           help="a JSONL dialogue file (repeatable); train hash split is added, dev split joins "
                                "the dev metric (do not also evaluate it with `eval ranking --corpus`, which "
                                "uses every dialogue)")
    retriever.add_argument("--corpus-pairs", type=int, default=2000, metavar="N",
                           help="training pairs per language of each --corpus file (default 2000)")
    retriever.add_argument("--hard-negatives", action="store_true", help="mine hard negatives with the base encoder")
    retriever.add_argument("--work", type=Path, help="checkpoint directory (default: <home>/artifacts/train-<name>)")
    retriever.set_defaults(func=run_retriever)

    reward = sub.add_parser("reward", help="train a reward model: specificity proxy, relevance, or preference")
    reward.add_argument("--kind", choices=("preference", "relevance", "specificity"), required=True)
    reward.add_argument("--data", type=Path, help="preferences JSONL (kind preference)")
    reward.add_argument("--russian", type=Path, help="Russian dialogues (kind relevance)")
    reward.add_argument("--members", type=int, default=5,
                        help="proxy ensemble size (kind specificity); their spread is the RL shift alarm")
    reward.add_argument("--head", choices=("mlp", "ridge"), default="mlp", help="proxy head (kind specificity)")
    reward.add_argument("--inputs", choices=("phrase", "lexical"), default="phrase",
                        help="proxy inputs: encoder embedding + length, or char trigrams (kind specificity)")
    reward.add_argument("--out", type=Path, help="output directory (default: <home>/artifacts/reward-<kind>)")
    reward.set_defaults(func=run_reward)


def run_retriever(args: argparse.Namespace, settings: Settings) -> int:
    from retriever.encoder import Encoder
    from retriever.pairs import PairSource, bilingual_pairs, jsonl_sources, mine_hard_negatives, topicalchat_source
    from retriever.train import RetrieverTrainConfig, train_retriever

    if args.topicalchat_pairs is not None and args.topicalchat is None:
        raise ValueError("--topicalchat-pairs needs --topicalchat DIR (the folder with valid_freq/valid_rare.json)")
    config = RetrieverTrainConfig(base=args.base, name=args.name)
    extra: list[PairSource] = []
    if args.topicalchat is not None:
        count = TOPICALCHAT_PAIRS if args.topicalchat_pairs is None else args.topicalchat_pairs
        extra.append(topicalchat_source(args.topicalchat, {"train": count, "dev": DEV_PAIRS}))
    for path in args.corpus:
        extra += jsonl_sources(path, {"train": args.corpus_pairs, "dev": DEV_PAIRS})
    splits = bilingual_pairs({"train": args.per_language, "dev": DEV_PAIRS}, args.russian, extra=extra,
                             seed=config.seed)
    pairs = splits["train"]
    if args.hard_negatives:
        from core.models.registry import resolve

        pairs = mine_hard_negatives(pairs, Encoder(resolve(args.base, settings.models_dir)), seed=config.seed)
    work = args.work or settings.artifacts_dir / f"train-{args.name}"
    result = train_retriever(config, pairs, settings.models_dir, work, dev_pairs=splits["dev"], say=print)
    print(f"encoder {result.model_dir}; report {result.report_path}; plot {result.plot_path}")
    print(f"next: repliq index build --encoder {result.model_dir}")
    return 0


def run_reward(args: argparse.Namespace, settings: Settings) -> int:
    out = args.out or settings.artifacts_dir / f"reward-{args.kind}"
    if args.kind == "preference":
        from rl.preference import read_preferences, train_preference_model

        if args.data is None:
            raise ValueError("--kind preference needs --data prefs.jsonl (from `repliq ssa preferences`)")
        _, metrics = train_preference_model(read_preferences(args.data), out_dir=out)
    elif args.kind == "relevance":
        from dialog.jobs.train_blender import BlenderCorpora, read_corpora, sample_pairs
        from rl.relevance import train_relevance_model

        dialogues = read_corpora(BlenderCorpora(russian_dialogues=args.russian))
        pairs = sample_pairs(dialogues, ("en", "ru"), 1500, settings.retrieval.context_turns, seed=0)
        _, metrics = train_relevance_model(settings, pairs, out)
    else:
        metrics = _train_specificity(args, settings, out)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _train_specificity(args: argparse.Namespace, settings: Settings, out: Path) -> dict:
    """Score the bank with the teacher LM (resumable; only new or changed phrases), then distil."""
    from core.lm.bank_scores import score_bank
    from core.lm.wrapper import DecoderLM, LMOptions
    from dialog.cli.bank import open_bank
    from retriever.encoder import Encoder
    from retriever.encoder_cache import index_backed_encoder
    from rl.proxy import ProxyConfig, train_specificity_proxy
    from rl.teacher import bank_targets

    config = ProxyConfig(head=args.head, inputs=args.inputs, teacher_lm=settings.lm.name, members=args.members)
    config.validate()
    lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, LMOptions(dtype=settings.lm.dtype))
    encoder = None
    with open_bank(settings) as bank:
        print(score_bank(bank, lm).summary())
        texts, languages, values = bank_targets(bank, lm.lm_id, config.teacher)
        if config.inputs != "lexical":
            encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
    extra = {"teacher": {"lm_id": lm.lm_id, "definition": config.teacher, "source": "bank lm_scores"}}
    _, metrics = train_specificity_proxy(settings, texts, values, out, languages=languages, config=config,
                                         encoder=encoder, extra_metrics=extra)
    return metrics


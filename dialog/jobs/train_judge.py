"""`repliq train judge`: dialogues and the bank's retrieved phrases -> a cross-encoder sensibleness judge.

Straight-line: read the corpora, take train-split contexts to learn from and dev-split contexts to judge
on (test splits are never read), build each context's group (gold, same-corpus reply, retrieved bank
phrase, random bank phrase), fine-tune the judge (checkpointed, resumable), then score the dev pools with
the judge *and* with the relevance gate (rl/relevance.py) so the report shows the gain side by side,
measure the judge's CPU latency, and save the artifact, ``report.json`` and ``report.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atomic import atomic_write_bytes, atomic_write_json, jsonable, sha256_json
from core.config import Settings
from core.corpora import (
    ContextPair,
    Dialogue,
    read_anekdot_dialogues,
    read_chitchat,
    read_convai2,
    read_topicalchat_folder,
)
from core.figures import png_bytes
from core.judge_config import JudgeJobConfig
from core.types import Context
from dialog.jobs.common import open_bank
from rl.judge import SensiblenessJudge
from rl.judge_data import JudgeGroup, build_groups, flatten, group_aucs, groups_fingerprint, split_pairs
from rl.judge_train import train_judge

log = logging.getLogger("repliq.train")
JUDGE_DIR = "judge"


def read_dialogues(config: JudgeJobConfig) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    if config.chitchat_conversations:
        dialogues += list(read_chitchat(limit=config.chitchat_conversations))
    if config.topicalchat is not None:
        dialogues += read_topicalchat_folder(config.topicalchat)
    if config.convai2 is not None:
        for path in sorted(Path(config.convai2).glob("data_*.json")):
            dialogues += list(read_convai2(path))
    if config.russian is not None:
        dialogues += list(read_anekdot_dialogues(config.russian, limit=config.russian_conversations))
    if not dialogues:
        raise ValueError("no dialogues: enable chitchat or pass --russian / --topicalchat / --convai2")
    return dialogues


def judge_pools(settings: Settings, config: JudgeJobConfig, train: Sequence[ContextPair],
                dev: Sequence[ContextPair]) -> tuple[list[JudgeGroup], list[JudgeGroup], Any]:
    """Train and dev groups, with retrieved negatives from the live bank index (read only)."""
    from retriever.bank_index import load_index
    from retriever.bank_retriever import BankRetriever
    from retriever.encoder import Encoder
    from retriever.encoder_cache import CachingEncoder

    with open_bank(settings) as bank:
        encoder = Encoder.from_config(settings)
        index = load_index(settings, encoder, bank)
        reusing = CachingEncoder.seeded_from_index(encoder, index)
        retriever = BankRetriever(reusing, index, bank, context_turns=settings.retrieval.context_turns)
        phrases: dict[str, list[str]] = {}
        for phrase in bank.phrases(status="approved"):
            phrases.setdefault(phrase.language, []).append(phrase.text)

    def retrieve(contexts: Sequence[Context], language: str, k: int) -> list[list[str]]:
        if language not in index.languages:
            return [[] for _ in contexts]
        return [[c.text for c in hits] for hits in retriever.retrieve_many(contexts, language, k)]

    options = {"corpus_negatives": config.corpus_negatives, "retrieved_negatives": config.retrieved_negatives,
               "random_negatives": config.random_negatives, "retrieved_pool": config.retrieved_pool,
               "retrieved_label": config.train.retrieved_label}
    train_groups = build_groups(train, phrases, retrieve, seed=config.train.seed, **options)
    dev_groups = build_groups(dev, phrases, retrieve, seed=config.train.seed + 1, **options)
    return train_groups, dev_groups, encoder


def judge_relevance(settings: Settings, config: JudgeJobConfig, train: Sequence[ContextPair],
                    encoder: Any) -> tuple[Any, str]:
    """The relevance gate to compare with: given, the workspace's, or fitted here on the same train contexts."""
    from rl.relevance import load_relevance_model, train_relevance_model

    path = config.relevance or settings.artifacts_dir / "reward-relevance"
    if (Path(path) / "manifest.json").is_file():
        return load_relevance_model(Path(path), encoder), str(path)
    if config.relevance is not None:
        raise FileNotFoundError(f"no relevance model in {path}; run `repliq train reward --kind relevance` or drop "
                                "--relevance to fit one on the judge's train contexts")
    model, _ = train_relevance_model(None, list(train), None, encoder=encoder)
    return model, "fitted on the judge's train contexts (rl.relevance defaults)"


def latency(judge: SensiblenessJudge, groups: Sequence[JudgeGroup], rows: int = 64) -> dict[str, float]:
    """CPU seconds per (context, reply) pair: batched (as in RL scoring) and one pair at a time (as serving)."""
    contexts, texts, _, _ = flatten(groups)
    contexts, texts = contexts[:rows], texts[:rows]
    started = time.perf_counter()
    judge.score(contexts, texts, batch_size=32)
    batched = (time.perf_counter() - started) / max(1, len(texts))
    started = time.perf_counter()
    for context, text in zip(contexts[:16], texts[:16], strict=True):
        judge.score([context], [text])
    single = (time.perf_counter() - started) / max(1, min(16, len(texts)))
    return {"batched_s_per_pair": batched, "single_s_per_pair": single, "threads": float(judge.config.threads)}


def _figure(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    history = report["training"]["history"]
    left.plot([h["step"] for h in history], [h["loss"] for h in history])
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.set_title("judge training")
    labels, judge, gate = [], [], []
    for language, row in sorted(report["dev"]["judge"].items()):
        for key in ("auc_gold_vs_corpus", "auc_gold_vs_retrieved", "auc_gold_vs_random"):
            if key in row:
                labels.append(f"{language} {key.rsplit('_', 1)[-1]}")
                judge.append(row[key])
                gate.append(report["dev"]["relevance"].get(language, {}).get(key, float("nan")))
    xs = range(len(labels))
    right.bar([x - 0.2 for x in xs], gate, width=0.4, label="relevance gate")
    right.bar([x + 0.2 for x in xs], judge, width=0.4, label="sensibleness judge")
    right.axhline(0.5, color="grey", linewidth=1, linestyle="--")
    right.set_xticks(list(xs), labels, rotation=30, fontsize=8)
    right.set_ylim(0.3, 1.0)
    right.set_ylabel("dev AUC, gold vs negative")
    right.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def run_train_judge(settings: Settings, config: JudgeJobConfig, *, resume: bool = True,
                    say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, judge on dev pools, save ``<out>`` and ``<out>-report/report.{json,png}``; return the report."""
    import torch

    config.validate()
    # Every encoder pass of the job (retrieval, the relevance gate, the judge) on this many threads: on a
    # shared CPU one thread ran ~4x faster than two (no spin-waiting for a busy core).
    torch.set_num_threads(config.train.threads)
    out = Path(config.out or settings.artifacts_dir / JUDGE_DIR)
    dialogues = read_dialogues(config)
    turns = config.train.context_turns
    train = split_pairs(dialogues, "train", config.train_contexts, turns, config.train.seed)
    dev = split_pairs(dialogues, "dev", config.dev_contexts, turns, config.train.seed)
    if not train or not dev:
        raise ValueError(f"got {len(train)} train and {len(dev)} dev contexts; give more dialogues")
    train_groups, dev_groups, encoder = judge_pools(settings, config, train, dev)
    say(f"judge: {len(train_groups)} train groups, {len(dev_groups)} dev groups")
    judge = SensiblenessJudge.from_base(config.train, settings.models_dir)
    with tqdm(total=0, desc="train judge", unit="step") as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        state = train_judge(judge, train_groups, out.with_name(out.name + "-work"), resume=resume, progress=progress,
                            say=say)
    contexts, texts, kinds, languages = flatten(dev_groups)
    started = time.perf_counter()
    judge_scores = judge.score(contexts, texts)
    dev_seconds = time.perf_counter() - started
    relevance, relevance_source = judge_relevance(settings, config, train, encoder)
    report = {
        "train_contexts": _count(train), "dev_contexts": _count(dev), "dev_rows": len(texts),
        "dev": {"judge": group_aucs(judge_scores, kinds, languages),
                "relevance": group_aucs(relevance.score(contexts, texts), kinds, languages),
                "relevance_source": relevance_source, "judge_scoring_seconds": dev_seconds},
        "latency": latency(judge, dev_groups),
        "training": {k: state[k] for k in ("step", "total", "history", "train_seconds", "resumed_from",
                                           "stopped_early")},
        "config": jsonable(asdict(config)),
    }
    manifest = judge.save(out, data_sha256=sha256_json(groups_fingerprint(train_groups)),
                          metrics={"dev": report["dev"], "latency": report["latency"]})
    report["judge"] = manifest["identity"][:12]
    report["artifact_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    atomic_write_json(out.with_name(out.name + "-report") / "report.json", report)
    atomic_write_bytes(out.with_name(out.name + "-report") / "report.png", _figure(report))
    return report


def _count(pairs: Sequence[ContextPair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        key = f"{pair.language}:{pair.conversation_id.split(':', 1)[0]}"
        counts[key] = counts.get(key, 0) + 1
    return counts

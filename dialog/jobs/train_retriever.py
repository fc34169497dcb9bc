"""`repliq train retriever`: dialogue pairs -> (hard negatives) -> a fine-tuned bi-encoder in the model cache.

Resumable: the work directory keeps checkpoints, and a rerun with the same config and pairs continues.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.config import Settings
from core.job_configs import RetrieverData, RetrieverTrainConfig
from core.models.registry import resolve
from retriever.encoder import Encoder
from retriever.pairs import PairSource, bilingual_pairs, jsonl_sources, mine_hard_negatives, topicalchat_source
from retriever.train import TrainResult, train_retriever


def train_workspace_retriever(settings: Settings, config: RetrieverTrainConfig, data: RetrieverData,
                              work: Path | None = None, say: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``config.name`` from ``config.base``; the checkpoints go to ``work`` (default artifacts/train-<name>)."""
    extra: list[PairSource] = []
    if data.topicalchat is not None:
        extra.append(topicalchat_source(data.topicalchat, {"train": data.topicalchat_pairs, "dev": data.dev_pairs}))
    for path in data.corpora:
        extra += jsonl_sources(path, {"train": data.corpus_pairs, "dev": data.dev_pairs})
    splits = bilingual_pairs({"train": data.per_language, "dev": data.dev_pairs}, data.russian, extra=extra,
                             seed=config.seed)
    pairs = splits["train"]
    if data.hard_negatives:
        pairs = mine_hard_negatives(pairs, Encoder(resolve(config.base, settings.models_dir)), seed=config.seed)
    work = work or settings.artifacts_dir / f"train-{config.name}"
    return train_retriever(config, pairs, settings.models_dir, work, dev_pairs=splits["dev"], say=say)

"""RL dev pools: many dev contexts per language, pooled and featurized exactly as the blender's own dev pools.

The blender's dataset holds ~100-250 dev pools per language (a tenth of the contexts it samples), too few
to judge an RL policy: one context is worth ~0.5-1 R@1 point. This module reads more conversations of
the same corpora, keeps only contexts of the **dev** hash split (``core.corpora.split_of`` with the
fractions the blender's data was split with, which is checked), samples N per language and builds their
pools with ``ranker.dataset``'s pool recipe (gold, random bank phrases, same-corpus dev replies), the
blender's annotators and its saved IDF table; the features are refused unless their description and
resources equal the blender's, so π_ref and every tuned policy score these pools as they score their own.

Built pools are cached under ``<artifacts>/rl-dev-pools/<key>`` where the key hashes the contexts, the
recipe, the annotators, the resources and the index; the build is saved chunk by chunk, so a killed
build resumes from its last chunk, and a finished one is read back instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.bank.store import PhraseBank
from core.config import Settings
from core.corpora import ContextPair, context_response_pairs, split_of
from core.job_configs import BuilderConfig
from core.rl_eval_config import RLEvalConfig
from core.training_corpora import read_corpora
from core.types import SOURCE_BANK, Candidate, Context
from ranker.annotators import build_annotators, describe
from ranker.blender import IDF_NAME
from ranker.dataset import (
    DatasetError,
    Item,
    PoolBuilder,
    PoolFeaturizer,
    RankingDataset,
    build_ranking_dataset,
    encoder_similarity,
)
from ranker.idf import IdfTable
from ranker.training_data import concat_datasets, load_training_data, save_training_data
from retriever.bank_index import load_index
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder
from rl.blender_setup import annotator_resources
from rl.vector_store import StoredEncoder, VectorStore, prefetch

log = logging.getLogger("repliq.rl")
POOLS_DIR = "rl-dev-pools"
VECTORS_DIR = "rl-vectors"
CHUNK = 256  # contexts per saved chunk (a multiple of the builder's batch size): what a killed build loses


@dataclass
class DevPools:
    dataset: RankingDataset
    contexts: dict[str, Context]
    languages: dict[str, str]
    info: dict[str, Any]


def check_split_recipe(dataset: RankingDataset, pools: BuilderConfig) -> None:
    """The blender's data must have been split with ``pools``' fractions, else its dev and ours could differ."""
    for conversation, split in zip(dataset.conversation_ids, dataset.splits, strict=True):
        if split_of(conversation, pools.dev_fraction, pools.test_fraction) != split:
            raise DatasetError(f"the blender's data puts {conversation!r} in {split!r}, but dev_fraction="
                               f"{pools.dev_fraction} and test_fraction={pools.test_fraction} put it elsewhere; "
                               "set [train.pools] to the fractions the blender was trained with")


def dev_pairs(config: RLEvalConfig, languages: list[str], context_turns: int, pools: BuilderConfig,
              seed: int) -> tuple[list[ContextPair], dict[str, int]]:
    """Up to ``config.dev_contexts`` dev-split contexts per language (seeded sample), and how many there were."""
    by_language: dict[str, list[ContextPair]] = {}
    for pair in context_response_pairs(read_corpora(config.corpora), context_turns=context_turns):
        if pair.language in languages and split_of(pair.conversation_id, pools.dev_fraction,
                                                   pools.test_fraction) == "dev":
            by_language.setdefault(pair.language, []).append(pair)
    chosen: list[ContextPair] = []
    available = {language: len(by_language.get(language, [])) for language in languages}
    for language in languages:
        pairs = by_language.get(language, [])
        random.Random(f"{seed}:rl-dev:{language}").shuffle(pairs)
        chosen += pairs[:config.dev_contexts]
        if len(pairs) < config.dev_contexts:
            log.warning("only %d dev contexts in %s (asked for %d): read more conversations", len(pairs), language,
                        config.dev_contexts)
    return chosen, available


@dataclass(frozen=True)
class _Scoped:
    """The featurizer with a cache reset per batch (as `train blender` does), so features never depend on
    which batches this process encoded before: a resumed build computes what an uninterrupted one would."""

    featurize: PoolFeaturizer
    cache: CachingEncoder

    def __call__(self, items: list[Item]) -> list:
        self.cache.forget()
        return self.featurize(items)


def _key(pairs: list[ContextPair], pools: BuilderConfig, blender: RankingDataset, index: str) -> str:
    digest = hashlib.sha256()
    for part in ([(p.context_id, p.response, [t.text for t in p.context.turns]) for p in pairs],
                 {k: v for k, v in asdict(pools).items() if k not in ("executor", "batch_size")},
                 blender.annotators, blender.resources, index):
        digest.update(repr(part).encode("utf-8"))
    return digest.hexdigest()[:20]


def build_dev_pools(settings: Settings, blender: RankingDataset, blender_languages: dict[str, str], data_dir: Path,
                    config: RLEvalConfig, pools: BuilderConfig, seed: int,
                    say: Callable[[str], None] = log.info) -> DevPools:
    """``config.dev_contexts`` dev contexts per language (the languages of the blender's data), pooled and
    featurized as the blender's dev pools; ``data_dir`` is the blender's saved data (its IDF table)."""
    check_split_recipe(blender, pools)
    languages = sorted(set(blender_languages.values()))
    pairs, available = dev_pairs(config, languages, settings.retrieval.context_turns, pools, seed)
    train = {c for c, s in zip(blender.conversation_ids, blender.splits, strict=True) if s != "dev"}
    if any(p.conversation_id in train for p in pairs):
        raise DatasetError("a dev context's conversation is in the blender's train or test split; this cannot "
                           "happen with one hash split: check that the corpora have unique conversation ids")
    idf_path = data_dir / IDF_NAME
    idf = IdfTable.load(idf_path) if idf_path.is_file() else None
    if idf is None or idf.hash != blender.resources.get("idf"):
        raise DatasetError(f"the blender's IDF table is not in {data_dir}; retrain it with `repliq train blender`")
    with PhraseBank(settings.bank_path) as bank:
        encoder = stored_encoder(settings, Encoder.from_config(settings))
        bank_index = load_index(settings, encoder, bank)
        reusing = CachingEncoder.seeded_from_index(encoder, bank_index)
        resources, descriptor = annotator_resources(settings, reusing, idf)
        # The blender's own annotator list: one trained with generation also reads the generation features.
        annotators = build_annotators(resources, [a["name"] for a in blender.annotators])
        described = {"idf": idf.hash, **descriptor}
        if describe(annotators) != blender.annotators or described != blender.resources:
            raise DatasetError("the blender was trained on other annotators or resources than this workspace "
                               "computes now; retrain it (`repliq train blender`) before judging RL on new pools")
        directory = settings.artifacts_dir / POOLS_DIR / _key(pairs, pools, blender, bank_index.manifest.checksum)
        if not (directory / "dataset.npz").is_file():
            bank_candidates = [Candidate(text=p.text, source=SOURCE_BANK, language=p.language, phrase_id=p.id)
                               for p in bank.phrases(status="approved")]
            _build(pairs, bank_candidates, annotators, reusing, described, pools, directory, settings, say)
            save_training_data(directory, concat_datasets(_chunks(directory, pairs)), pairs)
            shutil.rmtree(_partial(directory), ignore_errors=True)
    dataset, contexts, by_id = load_training_data(directory)
    _check_recipe(blender, dataset)
    counts = {language: sum(by_id[c] == language for c in dataset.context_ids) for language in languages}
    return DevPools(dataset, contexts, by_id, {"directory": str(directory), "contexts": counts,
                                               "available": available, "pool_size": _pool_sizes(blender, dataset)})


def stored_encoder(settings: Settings, encoder: Encoder) -> StoredEncoder:
    """``encoder`` behind the machine's vector store (beside the model cache, as the teacher's cache)."""
    return StoredEncoder(encoder, VectorStore.for_encoder(settings.models_dir.parent / VECTORS_DIR, encoder))


def _partial(directory: Path) -> Path:
    return directory.with_name(directory.name + ".partial")


def _chunks(directory: Path, pairs: list[ContextPair]) -> list[RankingDataset]:
    count = (len(pairs) + CHUNK - 1) // CHUNK
    return [RankingDataset.load(_partial(directory) / f"chunk-{i:04d}.npz") for i in range(count)]


def _build(pairs: list[ContextPair], bank: list[Candidate], annotators: list, reusing: Any,
           described: dict[str, str], pools: BuilderConfig, directory: Path, settings: Settings,
           say: Callable[[str], None]) -> None:
    """Featurize chunk by chunk; a chunk already saved by a killed run is kept, not rebuilt."""
    builder = PoolBuilder(bank, pools, None, pairs)  # corpus negatives come from every chosen dev context
    replies = list(dict.fromkeys(p.response for p in pairs))
    windows = sorted({1, 2, settings.retrieval.context_turns})  # the turn annotator's views and the query
    prefetch(reusing.encoder, [p.context.as_query_text(n) for p in pairs for n in windows], replies, say=say)
    reusing.seed_passages(replies, reusing.encode_passages(replies))
    reusing.forget()
    featurizer = _Scoped(PoolFeaturizer(builder, annotators, None,
                                        encoder_similarity(reusing, settings.retrieval.context_turns)), reusing)
    _partial(directory).mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, len(pairs), CHUNK)):
        path = _partial(directory) / f"chunk-{index:04d}.npz"
        if path.is_file():
            continue
        part = build_ranking_dataset(pairs[start:start + CHUNK], annotators, bank, config=pools, resources=described,
                                     worker=lambda _builder: lambda: featurizer)
        part.save(path)
        say(f"RL dev pools: {min(start + CHUNK, len(pairs))} of {len(pairs)} contexts")


def _check_recipe(blender: RankingDataset, dev: RankingDataset) -> None:
    """Our pools hold the kinds of candidates the blender's did (a retrieved or generated row it learned
    from but our pools lack would make them a different test)."""
    theirs, ours = set(blender.origins), set(dev.origins)
    if theirs != ours:
        raise DatasetError(f"the blender's pools hold {sorted(theirs)} candidates, these hold {sorted(ours)}: "
                           "set [train.pools] to the pool recipe the blender was trained with")


def _pool_sizes(blender: RankingDataset, dev: RankingDataset) -> dict[str, float]:
    """Mean pool sizes side by side (the blender's over all its splits: a tiny one may have no dev pool)."""
    return {"blender": float(np.mean(blender.group_sizes)), "rl_dev": float(np.mean(dev.group_sizes))}

"""`repliq train blender`: corpora -> candidate pools from the live bank -> features -> LightGBM.

Straight-line on purpose (read it top to bottom): every step is a call into a lower floor, and the
only decisions made here are which corpora to read and which resources the features get. Pools and
features are computed batch by batch on the pools' executor: this process (the default), or Ray actors
that each rebuild the encoder, index and annotators from the workspace (:class:`BlenderFeatureWorker`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from core.atomic import atomic_write_json
from core.bank.store import PhraseBank
from core.config import Settings
from core.corpora import ContextPair
from core.executor import BatchFn, WorkerFactory, make_executor
from core.job_configs import DEFAULT_POOLS
from core.training_corpora import BlenderCorpora, read_corpora, read_topicalchat_train, sample_pairs
from core.types import SOURCE_BANK, Candidate, Context
from ranker.annotators import DEFAULT_ANNOTATORS, build_annotators, describe
from ranker.blender import IDF_NAME
from ranker.dataset import (
    BuilderConfig,
    DatasetError,
    GenerateFn,
    Item,
    PoolBuilder,
    PoolFeaturizer,
    RankingDataset,
    RetrieveFn,
    build_ranking_dataset,
    encoder_similarity,
)
from ranker.features.generation import GENERATION_ANNOTATORS
from ranker.idf import IdfTable
from ranker.train import BlenderTrainConfig, train_blender
from ranker.training_data import data_dir_of, save_training_data
from retriever.bank_index import load_index
from retriever.bank_retriever import BankRetriever
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder, index_backed_encoder
from rl.blender_setup import BLENDER_DIR, annotator_resources

log = logging.getLogger("repliq.train")
LABELS_NAME = "labels.json"  # beside the saved ranking data: the grading record, for --reuse-data

__all__ = ["BlenderCorpora", "BlenderFeatureWorker", "read_corpora", "read_topicalchat_train",
           "retrain_from_saved_data", "sample_pairs", "train_workspace_blender"]


class LabelGrader(Protocol):
    """Relabels the built pools (``dialog.generation.grading.PMIGrader``); ``record()`` goes into the manifest."""

    def __call__(self, dataset: RankingDataset, contexts: Mapping[str, tuple[Context, str]],
                 retrieve: RetrieveFn | None) -> RankingDataset: ...

    def record(self) -> dict[str, Any]: ...


def annotator_names(dataset_annotators: list[dict] | None = None, generated: bool = False) -> list[str]:
    """The annotators to build: a saved dataset's own, else the defaults (+ the generation ones with generation).

    The generation annotator is opt-in, so blenders trained without generated candidates keep exactly the
    feature set they always had.
    """
    if dataset_annotators is not None:
        return [str(a["name"]) for a in dataset_annotators]
    return [*DEFAULT_ANNOTATORS, *(GENERATION_ANNOTATORS if generated else ())]


@dataclass(frozen=True)
class BlenderFeatureWorker:
    """Worker factory for ``core.executor``: each worker rebuilds the encoder, index, retriever and annotators once.

    It carries the settings, plain data (the pool builder, the IDF table) and the identities the driver saw,
    never a loaded model; a worker whose rebuilt resources differ (another model cache, a republished index,
    another specificity proxy) refuses, since its features would not be the ones the driver describes.
    """

    settings: Settings
    builder: PoolBuilder
    idf: IdfTable
    replies: tuple[list[str], np.ndarray]  # the corpus replies' vectors, encoded once by the driver
    index_checksum: str
    annotators: list[dict]  # ``describe`` of the driver's annotators
    resources: dict[str, str]  # the driver's resource descriptor, IDF hash included

    def __call__(self) -> BatchFn:
        # Unset threads become this worker's CPU share (Ray sets OMP_NUM_THREADS per actor).
        threads = self.settings.encoder.num_threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
        settings = replace(self.settings, encoder=replace(self.settings.encoder, num_threads=threads))
        encoder = Encoder.from_config(settings)
        bank = PhraseBank(settings.bank_path)  # open for the worker's life: the retriever checks its revision
        bank_index = load_index(settings, encoder, bank)
        reusing = CachingEncoder.seeded_from_index(encoder, bank_index)
        reusing.seed_passages(*self.replies)
        resources, descriptor = annotator_resources(settings, reusing, self.idf)
        annotators = build_annotators(resources, annotator_names(self.annotators))
        found = (bank_index.manifest.checksum, describe(annotators), {"idf": self.idf.hash, **descriptor})
        if found != (self.index_checksum, self.annotators, self.resources):
            bank.close()
            raise RuntimeError(f"this worker's index, annotators or resources ({found[0]}, {found[2]}) differ from "
                               f"the driver's ({self.index_checksum}, {self.resources}): give every Ray node the same "
                               "workspace and model cache, and do not republish the index during the build")
        turns = settings.retrieval.context_turns
        retriever = BankRetriever(reusing, bank_index, bank, context_turns=turns)
        return BatchScoped(PoolFeaturizer(self.builder, annotators, retriever.retrieve_many,
                                          encoder_similarity(reusing, turns)), reusing)


@dataclass(frozen=True)
class BatchScoped:
    """The featurizer with a cache that starts every batch from the seeded vectors (bank and corpus replies).

    An encoder's rows shift in their last bits with the batch they are encoded in, so vectors carried over from
    earlier batches would make a batch's features depend on which batches its worker saw before; this way
    every executor, with any number of workers, computes the same features bit for bit.
    """

    featurize: PoolFeaturizer
    cache: CachingEncoder

    def __call__(self, items: list[Item]) -> list:
        self.cache.forget()
        return self.featurize(items)


def seed_replies(cache: CachingEncoder, pairs: list[ContextPair]) -> tuple[list[str], np.ndarray]:
    """Encode every corpus reply once, in one call: they recur as gold and corpus negatives in many batches."""
    replies = list(dict.fromkeys(pair.response for pair in pairs))
    log.info("encoding %d corpus replies", len(replies))
    vectors = cache.encode_passages(replies)
    cache.seed_passages(replies, vectors)
    cache.forget()
    return replies, vectors


def retrain_from_saved_data(settings: Settings, config: BlenderTrainConfig, out_dir: Path) -> dict[str, float]:
    """Refit the booster on the ranking data a previous run saved: seconds instead of the encoding-bound build.

    Refused unless the saved features are exactly what the current annotators and resources would compute
    (annotator versions, encoder, proxy, IDF table), so a reused dataset can never smuggle stale columns in.
    """
    data_dir = data_dir_of(out_dir)
    rebuild = f"run `repliq train blender` without --reuse-data to rebuild {data_dir}"
    if not (data_dir / "dataset.npz").is_file():
        raise FileNotFoundError(f"no saved ranking data in {data_dir}; {rebuild}")
    dataset = RankingDataset.load(data_dir / "dataset.npz")
    idf_path = next((p for p in (data_dir / IDF_NAME, out_dir / IDF_NAME) if p.is_file()), None)
    idf = IdfTable.load(idf_path) if idf_path is not None else None
    if idf is None or idf.hash != dataset.resources.get("idf"):
        raise DatasetError(f"the IDF table the saved data was built with is not in {data_dir}; {rebuild}")
    with PhraseBank(settings.bank_path) as bank:
        encoder = index_backed_encoder(settings, Encoder.from_config(settings), bank)
    resources, descriptor = annotator_resources(settings, encoder, idf)
    annotators = build_annotators(resources, annotator_names(dataset.annotators))
    expected = {"idf": idf.hash, **descriptor}
    if dataset.annotators != describe(annotators) or dataset.resources != expected:
        raise DatasetError(f"the saved ranking data was built with other annotators or resources than the current "
                           f"ones; {rebuild}")
    log.info("reusing ranking data: %d groups, %d rows", len(dataset.group_sizes), len(dataset.y))
    labels_file = data_dir / LABELS_NAME  # how generated replies were labelled, when they were graded
    labels = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else None
    return train_blender(dataset, config, out_dir, idf=idf, annotators=annotators, labels=labels)


def train_workspace_blender(settings: Settings, corpora: BlenderCorpora, config: BlenderTrainConfig,
                            builder: BuilderConfig | None = None, out_dir: Path | None = None,
                            generate: GenerateFn | None = None, grade: LabelGrader | None = None
                            ) -> dict[str, float]:
    """Build the pools, annotate, train. ``generate`` (``dialog.generation.training.PoolGenerator``) adds
    generated candidates to the pools of the contexts it chooses, so the blender learns how they compare;
    ``grade`` (``dialog.generation.grading.PMIGrader``) labels the generated ones that deserve to win."""
    out_dir = out_dir or settings.artifacts_dir / BLENDER_DIR
    with PhraseBank(settings.bank_path) as bank:
        encoder = Encoder.from_config(settings)
        bank_index = load_index(settings, encoder, bank)
        reusing = CachingEncoder.seeded_from_index(encoder, bank_index)
        retriever = BankRetriever(reusing, bank_index, bank, context_turns=settings.retrieval.context_turns)
        approved = bank.phrases(status="approved")
        bank_candidates = [Candidate(text=p.text, source=SOURCE_BANK, language=p.language, phrase_id=p.id)
                           for p in approved]
        dialogues = read_corpora(corpora)
        pairs = sample_pairs(dialogues, bank_index.languages, corpora.max_pairs_per_language,
                             settings.retrieval.context_turns, corpora.seed)
        if corpora.topicalchat is not None:
            topical = read_topicalchat_train(corpora.topicalchat)
            pairs += sample_pairs(topical, bank_index.languages, corpora.topicalchat_pairs,
                                  settings.retrieval.context_turns, corpora.seed)
            dialogues += topical
        corpus_texts = (turn.text for dialogue in dialogues for turn in dialogue.turns)
        idf = IdfTable.build(itertools.chain((p.text for p in approved), corpus_texts))
        # The reusing encoder here too: the specificity-proxy feature embeds every candidate, and all but
        # the gold reply are bank phrases whose vectors the index already holds.
        resources, descriptor = annotator_resources(settings, reusing, idf)
        annotators = build_annotators(resources, annotator_names(generated=generate is not None))
        pools, described = builder or DEFAULT_POOLS, {"idf": idf.hash, **descriptor}
        replies = seed_replies(reusing, pairs)
        similarity = encoder_similarity(reusing, settings.retrieval.context_turns)

        def worker(pool_builder: PoolBuilder) -> WorkerFactory:
            if executor.name == "local":  # the driver's own resources
                return lambda: BatchScoped(PoolFeaturizer(pool_builder, annotators, retriever.retrieve_many,
                                                          similarity), reusing)
            return BlenderFeatureWorker(settings, pool_builder, idf, replies, bank_index.manifest.checksum,
                                        describe(annotators), described)

        with (make_executor(pools.executor) as executor,
              tqdm(total=len(pairs), desc=f"building ranking data ({executor.name})", unit="context") as bar):
            dataset = build_ranking_dataset(pairs, annotators, bank_candidates, generate=generate, config=pools,
                                            resources=described, progress=bar.update, executor=executor,
                                            worker=worker)
        log.info("ranking dataset: %d groups, %d rows, %d features", len(dataset.group_sizes), len(dataset.y),
                 len(dataset.feature_names))
        labels = None
        if grade is not None:
            dataset = grade(dataset, {p.context_id: (p.context, p.language) for p in pairs}, retriever.retrieve_many)
            labels = grade.record()
        save_training_data(data_dir_of(out_dir), dataset, pairs, idf)
        if labels is not None:
            atomic_write_json(data_dir_of(out_dir) / LABELS_NAME, labels)
        elif (data_dir_of(out_dir) / LABELS_NAME).is_file():
            (data_dir_of(out_dir) / LABELS_NAME).unlink()  # gold-only labels now: no stale record
        metrics = train_blender(dataset, config, out_dir, idf=idf, annotators=annotators, labels=labels)
        stats = getattr(generate, "stats", None)
        if stats is not None:
            metrics["generation"] = stats.to_json()  # type: ignore[assignment]
        if labels is not None:
            metrics["generated_labels"] = labels  # type: ignore[assignment]
        return metrics

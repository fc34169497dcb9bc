"""`repliq train blender`: corpora -> candidate pools from the live bank -> features -> LightGBM.

Straight-line on purpose (read it top to bottom): every step is a call into a lower floor, and the
only decisions made here are which corpora to read and which resources the features get.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from tqdm import tqdm

from core.bank.store import PhraseBank
from core.config import Settings
from core.job_configs import DEFAULT_POOLS
from core.training_corpora import BlenderCorpora, read_corpora, read_topicalchat_train, sample_pairs
from core.types import SOURCE_BANK, Candidate
from ranker.annotators import build_annotators, describe
from ranker.blender import IDF_NAME
from ranker.dataset import (
    BuilderConfig,
    DatasetError,
    RankingDataset,
    build_ranking_dataset,
    encoder_similarity,
)
from ranker.idf import IdfTable
from ranker.train import BlenderTrainConfig, train_blender
from ranker.training_data import data_dir_of, save_training_data
from retriever.bank_index import load_index
from retriever.bank_retriever import BankRetriever
from retriever.encoder import Encoder
from retriever.encoder_cache import CachingEncoder, index_backed_encoder
from rl.blender_setup import BLENDER_DIR, annotator_resources

log = logging.getLogger("repliq.train")

__all__ = ["BlenderCorpora", "read_corpora", "read_topicalchat_train", "retrain_from_saved_data", "sample_pairs",
           "train_workspace_blender"]


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
    annotators = build_annotators(resources)
    expected = {"idf": idf.hash, **descriptor}
    if dataset.annotators != describe(annotators) or dataset.resources != expected:
        raise DatasetError(f"the saved ranking data was built with other annotators or resources than the current "
                           f"ones; {rebuild}")
    log.info("reusing ranking data: %d groups, %d rows", len(dataset.group_sizes), len(dataset.y))
    return train_blender(dataset, config, out_dir, idf=idf, annotators=annotators)


def train_workspace_blender(settings: Settings, corpora: BlenderCorpora, config: BlenderTrainConfig,
                            builder: BuilderConfig | None = None, out_dir: Path | None = None) -> dict[str, float]:
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
        annotators = build_annotators(resources)
        with tqdm(total=len(pairs), desc="building ranking data", unit="context") as bar:
            dataset = build_ranking_dataset(
                pairs, annotators, bank_candidates, retrieve=retriever.retrieve_many,
                similarity=encoder_similarity(reusing, settings.retrieval.context_turns),
                config=builder or DEFAULT_POOLS, resources={"idf": idf.hash, **descriptor}, progress=bar.update,
            )
        log.info("ranking dataset: %d groups, %d rows, %d features", len(dataset.group_sizes), len(dataset.y),
                 len(dataset.feature_names))
        save_training_data(data_dir_of(out_dir), dataset, pairs, idf)
        return train_blender(dataset, config, out_dir, idf=idf, annotators=annotators)

"""`repliq train blender`: corpora -> candidate pools from the live bank -> features -> LightGBM.

Straight-line on purpose (read it top to bottom): every step is a call into a lower floor, and the
only decisions made here are which corpora to read and which resources the features get.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.bank.store import PhraseBank
from core.config import Settings
from core.corpora import (
    ContextPair,
    Dialogue,
    context_response_pairs,
    read_anekdot_dialogues,
    read_chitchat,
    read_jsonl_dialogues,
    read_topicalchat_folder,
    split_of,
)
from core.types import SOURCE_BANK, Candidate
from ranker.annotators import build_annotators, describe
from ranker.blender import IDF_NAME
from ranker.dataset import (
    DEFAULT_POOLS,
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


@dataclass
class BlenderCorpora:
    # English chit-chat from the chitchat-dataset package (conversations to read; 0 = none).
    chitchat_conversations: int = 1500
    # Russian dialogues in the Koziev anekdot format (.tar.xz or .txt); optional.
    russian_dialogues: Path | None = None
    russian_conversations: int = 3000
    # Any corpora in the documented JSONL dialogue format (core/corpora.py).
    jsonl: list[Path] = field(default_factory=list)
    # Topical-Chat folder (valid_freq/valid_rare.json): only its ``train`` hash split is read, the part
    # `repliq eval ranking` leaves out. Its contexts are sampled apart from chitchat's, up to this many.
    topicalchat: Path | None = None
    topicalchat_pairs: int = 1500
    # Contexts kept per language, sampled with a fixed seed.
    max_pairs_per_language: int = 2500
    seed: int = 0


def read_topicalchat_train(directory: Path) -> list[Dialogue]:
    """Topical-Chat's ``train`` hash split: the blender's own splits use the same hash, so none of these
    conversations reaches its dev split (early stopping) or the evaluation's held-out set."""
    return [d for d in read_topicalchat_folder(directory) if split_of(d.id) == "train"]


def read_corpora(corpora: BlenderCorpora) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    if corpora.chitchat_conversations > 0:
        dialogues += list(read_chitchat(limit=corpora.chitchat_conversations))
    if corpora.russian_dialogues is not None:
        dialogues += list(read_anekdot_dialogues(corpora.russian_dialogues, limit=corpora.russian_conversations))
    for path in corpora.jsonl:
        dialogues += list(read_jsonl_dialogues(path))
    if not dialogues and corpora.topicalchat is None:
        raise ValueError("no training dialogues: enable chitchat or pass --russian / --topicalchat / --corpus")
    return dialogues


def sample_pairs(dialogues: Iterable[Dialogue], languages: Sequence[str], per_language: int, context_turns: int,
                 seed: int) -> list[ContextPair]:
    by_language: dict[str, list[ContextPair]] = {}
    for pair in context_response_pairs(dialogues, context_turns=context_turns):
        if pair.language in languages:
            by_language.setdefault(pair.language, []).append(pair)
    chosen: list[ContextPair] = []
    for language, pairs in sorted(by_language.items()):
        random.Random(f"{seed}:{language}").shuffle(pairs)
        chosen += pairs[:per_language]
        log.info("training contexts for %s: %d of %d", language, min(per_language, len(pairs)), len(pairs))
    return chosen


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

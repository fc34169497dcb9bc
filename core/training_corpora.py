"""Which dialogue corpora a training job reads, and how its context/reply pairs are sampled per language.

Shared by the blender, the relevance reward and any later job that trains on dialogues, so each
samples the same way (fixed seed per language) and none has to import another job to do it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

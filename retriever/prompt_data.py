"""Which dialogues the prompt retriever's pool, training examples and evaluation contexts come from.

One reader for training and evaluation, so both see the same conversations and ids and the hash split
alone (:func:`core.corpora.split_of`) decides the side: the pool and the scored examples take ``train``
conversations, `repliq eval prompts` takes ``dev`` ones.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.corpora import (
    ContextPair,
    Dialogue,
    context_response_pairs,
    read_anekdot_dialogues,
    read_chitchat,
    read_topicalchat_folder,
    split_of,
)


@dataclass
class PromptCorpora:
    chitchat_conversations: int = 3000  # read from the chitchat-dataset package (0 = none)
    russian: Path | None = None  # Koziev anekdot dialogues (.tar.xz)
    russian_conversations: int = 6000
    topicalchat: Path | None = None  # folder with valid_freq/valid_rare.json (train split only)


def read_sources(corpora: PromptCorpora) -> dict[str, list[Dialogue]]:
    """Every configured corpus by source name; which dialogues are used is decided by the split later."""
    sources: dict[str, list[Dialogue]] = {}
    if corpora.chitchat_conversations > 0:
        sources["chitchat"] = list(read_chitchat(limit=corpora.chitchat_conversations))
    if corpora.topicalchat is not None:
        sources["topicalchat"] = read_topicalchat_folder(corpora.topicalchat)
    if corpora.russian is not None:
        if not Path(corpora.russian).is_file():
            raise FileNotFoundError(f"Russian dialogues file {corpora.russian} does not exist; give the path to "
                                    "koziev_anekdot_dialogues.tar.xz")
        sources["anekdot"] = list(read_anekdot_dialogues(corpora.russian, limit=corpora.russian_conversations))
    if not sources:
        raise ValueError("no corpus for the demonstration pool: enable chitchat or give --russian / --topicalchat")
    return sources


def training_examples(dialogues: Iterable[Dialogue], per_language: int, seed: int, context_turns: int = 3,
                      split: str = "train") -> list[ContextPair]:
    """One (context, reply) per conversation of ``split``, ``per_language`` per language, seeded.

    The same reader gives the evaluation its ``dev`` contexts, so both sample alike."""
    rng = random.Random(f"{seed}:examples:{split}")
    by_language: dict[str, list[ContextPair]] = {}
    for dialogue in dialogues:
        if split_of(dialogue.id) != split:
            continue
        options = [p for p in context_response_pairs([dialogue], context_turns=context_turns)
                   if 2 <= len(p.response) <= 200 and p.context.turns]
        if options:
            by_language.setdefault(dialogue.language, []).append(rng.choice(options))
    chosen: list[ContextPair] = []
    for language in sorted(by_language):
        pairs = by_language[language]
        rng.shuffle(pairs)
        chosen += pairs[:per_language]
    return chosen

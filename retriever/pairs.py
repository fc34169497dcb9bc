"""Context→response training pairs for the bi-encoder, and hard negatives mined with the base encoder.

Pairs come only from the ``train`` split of :func:`core.corpora.split_of`, so a dialogue used for
training can never show up in a dev evaluation built from the same corpus. One pair is taken per
dialogue (a random turn of it) before any dialogue gives a second one: many different dialogues teach
the encoder more than many turns of a few. Besides the default casual mix (chitchat, Russian jokes),
extra :class:`PairSource` corpora (Topical-Chat, any JSONL dialogue file) can join it for domain
adaptation, under the same split rule.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_json, sha256_json
from core.corpora import (
    Dialogue,
    context_response_pairs,
    known_splits,
    read_anekdot_dialogues,
    read_chitchat,
    read_jsonl_dialogues,
    read_topicalchat_folder,
    split_of,
)
from core.types import QueryPassageEncoder

MAX_RESPONSE_CHARS = 300
MIN_RESPONSE_CHARS = 2


@dataclass(frozen=True)
class TrainPair:
    """``query`` is the context as the retriever will see it (``Context.as_query_text``), unprefixed."""

    query: str
    response: str
    language: str
    conversation_id: str
    negative: str | None = None


@dataclass(frozen=True)
class PairSource:
    """A corpus added to the default mix with its own pair counts per split.

    Its own counts, not the per-language ones, because an in-domain corpus is usually wanted in a
    different amount than the casual one it adapts (and a small corpus cannot give as many).
    """

    name: str
    dialogues: Sequence[Dialogue]
    counts: Mapping[str, int]


def pairs_hash(pairs: Sequence[TrainPair]) -> str:
    """The ``data hash`` a fine-tuned model records: any change of text, order or negative changes it."""
    return sha256_json([asdict(pair) for pair in pairs])


def sample_pairs(dialogues: Iterable[Dialogue], limit: int, *, split: str = "train", context_turns: int = 3,
                 seed: int = 0) -> list[TrainPair]:
    """Up to ``limit`` pairs from dialogues of ``split``, spread over as many dialogues as possible.

    Responses that are empty-ish or long narrations (joke corpora leak those) are skipped.
    """
    if limit <= 0:
        return []
    per_dialogue: list[list[TrainPair]] = []
    for dialogue in dialogues:
        if split_of(dialogue.id) != split:
            continue
        options = [
            TrainPair(pair.context.as_query_text(context_turns), pair.response, pair.language, pair.conversation_id)
            for pair in context_response_pairs([dialogue], context_turns=context_turns)
            if MIN_RESPONSE_CHARS <= len(pair.response) <= MAX_RESPONSE_CHARS and pair.context.turns
        ]
        if options:
            per_dialogue.append(options)
    rng = random.Random(seed)
    rng.shuffle(per_dialogue)
    for options in per_dialogue:
        rng.shuffle(options)
    picked: list[TrainPair] = []
    depth = 0
    while len(picked) < limit and any(len(options) > depth for options in per_dialogue):
        for options in per_dialogue:
            if depth < len(options):
                picked.append(options[depth])
                if len(picked) == limit:
                    break
        depth += 1
    return picked


def _check_splits(counts: Mapping[str, int], what: str) -> None:
    if counts:
        known_splits(counts, what)
    negative = sorted(split for split, count in counts.items() if count < 0)
    if negative:
        raise ValueError(f"{what}: pair counts must be >= 0, got {', '.join(f'{s}={counts[s]}' for s in negative)}")


def topicalchat_source(directory: Path, counts: Mapping[str, int]) -> PairSource:
    """Topical-Chat (``valid_freq.json`` + ``valid_rare.json`` in ``directory``) as a pair source.

    Asking for ``train`` pairs takes them from the ``train`` hash split only, the part the English
    held-out evaluation (``ranker.evaluation.topicalchat_dataset``, ``dev`` + ``test``) leaves out.
    """
    return PairSource("topicalchat", read_topicalchat_folder(Path(directory)), dict(counts))


def jsonl_sources(path: Path, counts: Mapping[str, int]) -> list[PairSource]:
    """A ``core.corpora`` JSONL dialogue file as one source per language, so ``counts`` are per language
    as in the default mix and a large language cannot crowd out a small one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dialogue file {path} does not exist; give a JSONL file in the repliq dialogue "
                                "format")
    by_language: dict[str, list[Dialogue]] = {}
    for dialogue in read_jsonl_dialogues(path):
        by_language.setdefault(dialogue.language, []).append(dialogue)
    if not by_language:
        raise ValueError(f"{path} holds no dialogues")
    return [PairSource(f"{path.stem}:{language}", items, dict(counts))
            for language, items in sorted(by_language.items())]


def bilingual_pairs(counts: dict[str, int], russian_path: Path | None, *, english: bool = True,
                    extra: Sequence[PairSource] = (), context_turns: int = 3,
                    seed: int = 0) -> dict[str, list[TrainPair]]:
    """The default mix per split (e.g. ``{"train": 1500, "dev": 100}`` pairs per language and split).

    English comes from the chitchat-dataset package, Russian from Koziev's joke dialogues, a file the
    caller gives (``koziev_anekdot_dialogues.tar.xz``); without it the mix is English only. ``extra``
    sources follow, each with its own counts (a split a source does not name gets none from it). Each
    corpus is read once for all splits, and every split of every source obeys :func:`split_of`.
    """
    _check_splits(counts, "the default mix")
    for source in extra:
        _check_splits(source.counts, source.name)
    corpora: list[list[Dialogue]] = []
    if english:
        corpora.append(list(read_chitchat()))
    if russian_path is not None:
        path = Path(russian_path)
        if not path.is_file():
            raise FileNotFoundError(f"Russian dialogues file {path} does not exist; give the path to "
                                    "koziev_anekdot_dialogues.tar.xz (or its .txt)")
        corpora.append(list(read_anekdot_dialogues(path)))
    if not corpora and not extra:
        raise ValueError("no training corpus: enable English or give a Russian dialogues file")
    out: dict[str, list[TrainPair]] = {}
    for split in dict.fromkeys([*counts, *(split for source in extra for split in source.counts)]):
        out[split] = [pair for dialogues in corpora for pair in sample_pairs(
            dialogues, counts.get(split, 0), split=split, context_turns=context_turns, seed=seed)]
        for source in extra:
            out[split] += sample_pairs(source.dialogues, source.counts.get(split, 0), split=split,
                                       context_turns=context_turns, seed=seed)
    return out


def cached_pairs(path: Path, key: str, build: Callable[[], list[TrainPair]]) -> list[TrainPair]:
    """Pairs stored at ``path`` under ``key``, or built and stored: mining negatives is not worth redoing
    on every resume, and a stored copy guarantees the resumed run sees the very same data."""
    path = Path(path)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return [TrainPair(**row) for row in stored["pairs"]]
    pairs = build()
    atomic_write_json(path, {"key": key, "pairs": [asdict(pair) for pair in pairs]})
    return pairs


def mine_hard_negatives(pairs: Sequence[TrainPair], encoder: QueryPassageEncoder, *, skip_top: int = 2,
                        depth: int = 30, extra_pool: dict[str, Sequence[str]] | None = None,
                        seed: int = 0) -> list[TrainPair]:
    """Each pair gets one negative: a response the base encoder ranks high for the context, but not the gold.

    The pool is the other training responses of the same language (plus ``extra_pool[language]``, e.g.
    bank phrases). Responses of the same dialogue and exact copies of the gold are never negatives, and
    the ``skip_top`` best non-gold responses are passed over because the very top of a chit-chat pool
    is often a perfectly good reply (a false negative). Pairs whose pool runs dry get a random one.
    """
    if skip_top < 0 or depth <= skip_top:
        raise ValueError(f"need 0 <= skip_top < depth, got skip_top={skip_top}, depth={depth}")
    rng = random.Random(seed)
    out = list(pairs)
    for language in sorted({pair.language for pair in pairs}):
        rows = [i for i, pair in enumerate(pairs) if pair.language == language]
        pool = [(pairs[i].response, pairs[i].conversation_id) for i in rows]
        pool += [(text, "") for text in (extra_pool or {}).get(language, ())]
        pool = list(dict.fromkeys(pool))
        if len(pool) < 2:
            continue
        queries = encoder.encode_queries([pairs[i].query for i in rows])
        passages = encoder.encode_passages([text for text, _ in pool])
        top = np.argsort(-(queries @ passages.T), axis=1, kind="stable")[:, :depth + 1]
        for row, i in enumerate(rows):
            gold = pairs[i]
            usable = [pool[j][0] for j in top[row]
                      if pool[j][1] != gold.conversation_id and _key(pool[j][0]) != _key(gold.response)]
            if len(usable) > skip_top:
                negative = usable[skip_top]
            else:
                others = [text for text, conv in pool if conv != gold.conversation_id
                          and _key(text) != _key(gold.response)]
                negative = rng.choice(others) if others else None
            out[i] = TrainPair(gold.query, gold.response, gold.language, gold.conversation_id, negative)
    return out


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def duplicate_free_batches(pairs: Sequence[TrainPair], batch_size: int, seed: int) -> list[list[int]]:
    """Index batches of one language each, in a seeded order, with no response repeated inside a batch.

    In-batch negatives are the other responses of the batch: a second "Yes." would be a false negative,
    and a response in another language an easy one that teaches nothing.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 for in-batch negatives, got {batch_size}")
    rng = random.Random(seed)
    batches: list[list[int]] = []
    for language in sorted({pair.language for pair in pairs}):
        pending = [i for i, pair in enumerate(pairs) if pair.language == language]
        rng.shuffle(pending)
        while pending:
            batch: list[int] = []
            seen: set[str] = set()
            rest: list[int] = []
            for i in pending:
                key = _key(pairs[i].response)
                if len(batch) < batch_size and key not in seen:
                    batch.append(i)
                    seen.add(key)
                else:
                    rest.append(i)
            if len(batch) >= 2:
                batches.append(batch)
            pending = rest if len(batch) >= 2 else []
    rng.shuffle(batches)
    return batches

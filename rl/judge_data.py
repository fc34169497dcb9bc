"""The sensibleness judge's examples: each context with its gold reply and the negatives the policy chooses among.

A group is one context, its gold reply (label 1) and negatives of three kinds, as in the blender's pools:

* ``corpus``: a reply from another dialogue of the same corpus and language (label 0). These are the hard
  ones: same style and register as the gold, often on a nearby topic, but not an answer to *this* turn;
* ``retrieved``: one of the bank's top retrieved phrases for the context. Often an acceptable reply, so it
  gets a soft label (``retrieved_label``, e.g. 0.3), never a hard 0;
* ``random``: a random approved bank phrase of the language (label 0): the easy case.

Contexts come from one hash split only (``core.corpora.split_of``): train for learning, dev for the AUCs.
English mixes its corpora evenly (chitchat, Topical-Chat, ConvAI2's human replies), so no corpus' style
becomes the definition of "sensible".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.corpora import ContextPair, Dialogue, context_response_pairs, split_of
from core.text import normalize_text
from core.types import Context
from rl.teacher import pairwise_accuracy

KINDS = ("gold", "corpus", "retrieved", "random")
MIN_REPLY_CHARS, MAX_REPLY_CHARS = 2, 300
# (contexts of one language, language, k) -> the top-k bank phrase texts per context
Retrieve = Callable[[Sequence[Context], str, int], list[list[str]]]


@dataclass(frozen=True)
class JudgeGroup:
    context: Context
    language: str
    corpus: str
    texts: tuple[str, ...]
    labels: tuple[float, ...]
    kinds: tuple[str, ...]


def corpus_of(pair: ContextPair) -> str:
    return pair.conversation_id.split(":", 1)[0]


def _usable(pair: ContextPair) -> bool:
    if not pair.context.turns or not MIN_REPLY_CHARS <= len(pair.response) <= MAX_REPLY_CHARS:
        return False
    # ConvAI2 pairs humans with bots: only a human's reply may be a gold.
    return pair.response_meta.get("sender_class", "Human") == "Human"


def split_pairs(dialogues: Iterable[Dialogue], split: str, per_language: int, context_turns: int,
                seed: int) -> list[ContextPair]:
    """Up to ``per_language`` pairs per language from ``split``, one per dialogue first, corpora interleaved."""
    by_corpus: dict[tuple[str, str], list[list[ContextPair]]] = {}
    for dialogue in dialogues:
        if split_of(dialogue.id) != split:
            continue
        options = [p for p in context_response_pairs([dialogue], context_turns=context_turns) if _usable(p)]
        if options:
            by_corpus.setdefault((dialogue.language, dialogue.id.split(":", 1)[0]), []).append(options)
    rng = random.Random(f"judge:{seed}:{split}")
    queues: dict[str, list[list[ContextPair]]] = {}
    for (language, _corpus), per_dialogue in sorted(by_corpus.items()):
        rng.shuffle(per_dialogue)
        for options in per_dialogue:
            rng.shuffle(options)
        depth = max(len(o) for o in per_dialogue)
        # One pair per dialogue before any dialogue gives a second.
        queues.setdefault(language, []).append([o[d] for d in range(depth) for o in per_dialogue if d < len(o)])
    chosen: list[ContextPair] = []
    for _language, corpora in sorted(queues.items()):
        picked: list[ContextPair] = []
        position = 0
        while len(picked) < per_language and any(position < len(q) for q in corpora):
            picked += [q[position] for q in corpora if position < len(q)]
            position += 1
        chosen += picked[:per_language]
    return chosen


def _key(text: str) -> str:
    return normalize_text(text).lower()


def _draw(rng: np.random.Generator, candidates: Sequence[str], count: int, banned: set[str]) -> list[str]:
    """Up to ``count`` distinct candidates whose key is not banned (random order, bounded tries)."""
    out: list[str] = []
    for _ in range(max(count * 20, 20)):
        if len(out) == count or not candidates:
            break
        text = candidates[int(rng.integers(len(candidates)))]
        if _key(text) not in banned:
            out.append(text)
            banned.add(_key(text))
    return out


def build_groups(pairs: Sequence[ContextPair], bank: Mapping[str, Sequence[str]], retrieve: Retrieve | None, *,
                 corpus_negatives: int, retrieved_negatives: int, random_negatives: int, retrieved_pool: int,
                 retrieved_label: float, seed: int) -> list[JudgeGroup]:
    """One group per pair; ``bank`` maps a language to its approved phrase texts (random negatives)."""
    rng = np.random.default_rng(seed)
    retrieved: dict[int, list[str]] = {}
    if retrieve is not None and retrieved_negatives:
        for language in sorted({p.language for p in pairs}):
            rows = [i for i, p in enumerate(pairs) if p.language == language]
            hits = retrieve([pairs[i].context for i in rows], language, retrieved_pool)
            retrieved.update(zip(rows, hits, strict=True))
    replies: dict[tuple[str, str], list[ContextPair]] = {}
    for pair in pairs:
        replies.setdefault((pair.language, corpus_of(pair)), []).append(pair)
    groups = []
    for i, pair in enumerate(pairs):
        banned = {_key(pair.response)}
        same = [p.response for p in replies[(pair.language, corpus_of(pair))]
                if p.conversation_id != pair.conversation_id]
        rows = [(pair.response, 1.0, "gold")]
        rows += [(t, 0.0, "corpus") for t in _draw(rng, same, corpus_negatives, banned)]
        top = [t for t in retrieved.get(i, []) if _key(t) not in banned]
        order = rng.permutation(len(top))[:retrieved_negatives]
        rows += [(top[j], retrieved_label, "retrieved") for j in order]
        banned |= {_key(top[j]) for j in order}
        rows += [(t, 0.0, "random") for t in _draw(rng, list(bank.get(pair.language, ())), random_negatives, banned)]
        if len(rows) > 1:
            texts, labels, kinds = zip(*rows, strict=True)
            groups.append(JudgeGroup(pair.context, pair.language, corpus_of(pair), texts, labels, kinds))
    return groups


def flatten(groups: Sequence[JudgeGroup]) -> tuple[list[Context], list[str], np.ndarray, np.ndarray]:
    """Rows of every group: contexts, texts, kinds and languages (for scoring with any judge)."""
    contexts = [g.context for g in groups for _ in g.texts]
    texts = [t for g in groups for t in g.texts]
    kinds = np.array([k for g in groups for k in g.kinds])
    languages = np.array([g.language for g in groups for _ in g.texts])
    return contexts, texts, kinds, languages


def group_aucs(scores: np.ndarray, kinds: np.ndarray, languages: np.ndarray) -> dict[str, dict[str, float]]:
    """Per language: AUC of gold vs each negative kind (pairs across the whole pool; ties count half)."""
    out: dict[str, dict[str, float]] = {}
    scores = np.asarray(scores, dtype=np.float64)
    for language in sorted(set(languages.tolist())):
        row: dict[str, float] = {"contexts": float(((languages == language) & (kinds == "gold")).sum())}
        for kind in KINDS[1:]:
            mask = (languages == language) & ((kinds == "gold") | (kinds == kind))
            if (mask & (kinds == kind)).any() and (mask & (kinds == "gold")).any():
                row[f"auc_gold_vs_{kind}"] = pairwise_accuracy(scores[mask], (kinds[mask] == "gold").astype(float))
        out[language] = row
    return out


def groups_fingerprint(groups: Sequence[JudgeGroup]) -> list[list[object]]:
    """The training data as JSON-able rows, for the manifest's data hash and the checkpoint's run identity."""
    return [[[t.text for t in g.context.turns], g.language, list(g.texts), list(g.labels)] for g in groups]

"""The demonstration pool of UPRISE-style prompt retrieval: (context, reply) excerpts of training dialogues.

A demonstration shown to the LM before a user's dialogue must never come from a conversation that an
evaluation later asks about, or the "retrieved prompt" would simply be the answer. So the pool takes
dialogues of the ``train`` hash split only (:func:`core.corpora.split_of`), records each entry's source,
conversation and split, and :func:`load_pool` refuses a pool holding anything else. One excerpt is taken
per conversation (many different dialogues make a more useful pool than many turns of a few).

On disk: ``pool.jsonl`` (one demonstration a line) and ``manifest.json`` (kind ``prompt-pool``); the
identity is the hash of the entries, so a scoring cache or a retriever built on another pool is refused.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactError, ArtifactManifest, load_manifest, package_versions, save_manifest
from core.atomic import atomic_directory, sha256_json
from core.blocklist import Blocklist, packaged_blocklists
from core.corpora import Dialogue, context_response_pairs, split_of
from core.text import word_tokens
from core.types import Context, Turn

KIND = "prompt-pool"
POOL_DIR = "prompt-pool"  # under <home>/artifacts
POOL_FILE = "pool.jsonl"
MIN_REPLY_CHARS = 2
MAX_REPLY_CHARS = 160
MAX_TURN_CHARS = 200  # longer turns (joke narrations, pasted articles) make demonstrations that crowd the prompt


class PoolError(ArtifactError):
    """A pool that cannot be used (leaked split, corrupt file); the message names the file and the fix."""


@dataclass(frozen=True)
class Demonstration:
    """One pool entry; ``context`` holds the turn texts oldest first, the last one the interlocutor's."""

    id: int
    language: str
    context: tuple[str, ...]
    reply: str
    source: str
    conversation_id: str
    split: str

    def as_context(self) -> Context:
        speakers = "AB" if len(self.context) % 2 == 0 else "BA"
        return Context(tuple(Turn(speakers[i % 2], text) for i, text in enumerate(self.context)))

    @property
    def passage_text(self) -> str:
        """What the retriever encodes: the whole excerpt, reply included (UPRISE encodes input and output)."""
        return "\n".join([*self.context, self.reply])


@dataclass(frozen=True)
class PromptPool:
    demonstrations: tuple[Demonstration, ...]

    @property
    def identity(self) -> str:
        return sha256_json([asdict(d) for d in self.demonstrations])

    @property
    def ref(self) -> str:
        return f"{KIND}@{self.identity[:12]}"

    def __len__(self) -> int:
        return len(self.demonstrations)

    def by_id(self, demo_id: int) -> Demonstration:
        return self.demonstrations[demo_id]

    def ids_of(self, language: str) -> list[int]:
        return [d.id for d in self.demonstrations if d.language == language]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(f"{d.source}:{d.language}" for d in self.demonstrations).items()))


def _usable(context: Context, reply: str, blocklist: Blocklist) -> bool:
    """Short enough to fit a prompt, and free of abuse: a demonstration primes the LM, and the reply filter
    only catches abuse in what the LM writes, not in what it was shown."""
    return (bool(context.turns) and MIN_REPLY_CHARS <= len(reply) <= MAX_REPLY_CHARS
            and all(len(t.text) <= MAX_TURN_CHARS for t in context.turns)
            and not any(blocklist.hits(word_tokens(text)) for text in (*(t.text for t in context.turns), reply)))


def pool_entries(source: str, dialogues: Iterable[Dialogue], limit: int, context_turns: int = 1,
                 seed: int = 0) -> list[Demonstration]:
    """Up to ``limit`` excerpts of ``train``-split dialogues, one per conversation (ids assigned later).

    One context turn by default: three short exchanges cost the LM less than three long ones, and on a CPU
    every prompt token is paid for at each scoring and at each generated reply."""
    per_dialogue: list[Demonstration] = []
    rng = random.Random(f"{seed}:{source}")
    blocklist = Blocklist.merge(packaged_blocklists().values())  # every language: a Russian joke can swear in English
    for dialogue in dialogues:
        if split_of(dialogue.id) != "train":
            continue
        options = [p for p in context_response_pairs([dialogue], context_turns=context_turns)
                   if _usable(p.context, p.response, blocklist)]
        if options:
            pair = rng.choice(options)
            per_dialogue.append(Demonstration(-1, pair.language, tuple(t.text for t in pair.context.turns),
                                              pair.response, source, dialogue.id, "train"))
    rng.shuffle(per_dialogue)
    return per_dialogue[:max(limit, 0)]


def build_pool(entries: Iterable[Demonstration]) -> PromptPool:
    """Number the entries (row order), dropping exact repeats of a (language, context, reply)."""
    seen: set[tuple[str, tuple[str, ...], str]] = set()
    kept: list[Demonstration] = []
    for entry in entries:
        key = (entry.language, entry.context, entry.reply)
        if key in seen:
            continue
        seen.add(key)
        kept.append(Demonstration(len(kept), entry.language, entry.context, entry.reply, entry.source,
                                  entry.conversation_id, entry.split))
    pool = PromptPool(tuple(kept))
    check_train_only(pool, "the new pool")
    return pool


def check_train_only(pool: PromptPool, where: str | Path) -> None:
    """Refuse a pool with any entry outside the train hash split (recomputed, not trusted from the file)."""
    leaked = [d for d in pool.demonstrations if d.split != "train" or split_of(d.conversation_id) != "train"]
    if leaked:
        first = leaked[0]
        raise PoolError(f"{where}: {len(leaked)} demonstration(s) come from dev/test conversations (first: id "
                        f"{first.id}, {first.conversation_id}, split {split_of(first.conversation_id)}); rebuild "
                        "the pool with `repliq train prompts`")


def save_pool(directory: Path, pool: PromptPool, config: dict[str, Any]) -> ArtifactManifest:
    """Entries and manifest written together, atomically."""
    manifest = ArtifactManifest(kind=KIND, identity=pool.identity, config=config, data_sha256=pool.identity,
                                versions=package_versions(), metrics={"demonstrations": len(pool)},
                                details={"counts": pool.counts(), "splits": ["train"]})
    with atomic_directory(Path(directory)) as scratch:
        lines = [json.dumps(asdict(d), ensure_ascii=False) for d in pool.demonstrations]
        (scratch / POOL_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        save_manifest(scratch / "manifest.json", manifest)
    return manifest


def _row(raw: str, where: str) -> Demonstration:
    try:
        obj = json.loads(raw)
        return Demonstration(int(obj["id"]), str(obj["language"]), tuple(str(t) for t in obj["context"]),
                             str(obj["reply"]), str(obj["source"]), str(obj["conversation_id"]), str(obj["split"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PoolError(f"{where}: not a demonstration row ({exc}); rebuild with `repliq train prompts`") from exc


def load_pool(directory: Path) -> tuple[PromptPool, ArtifactManifest]:
    """The pool in ``directory``, checked against its manifest hash and for train-only entries."""
    directory = Path(directory)
    manifest = load_manifest(directory, KIND)
    path = directory / POOL_FILE
    if not path.is_file():
        raise PoolError(f"{path} is missing; rebuild the pool with `repliq train prompts`")
    rows = [_row(line, f"{path}:{n}") for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()]
    pool = PromptPool(tuple(rows))
    if [d.id for d in rows] != list(range(len(rows))):
        raise PoolError(f"{path}: ids are not 0..{len(rows) - 1} in order; rebuild with `repliq train prompts`")
    if pool.identity != manifest.identity:
        raise PoolError(f"{path} does not match the hash in its manifest (edited or corrupt); rebuild it with "
                        "`repliq train prompts`")
    check_train_only(pool, path)
    return pool, manifest


def demonstrations_of(pool: PromptPool, ids: Sequence[int]) -> list[Demonstration]:
    return [pool.by_id(int(i)) for i in ids]

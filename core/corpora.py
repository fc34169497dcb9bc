"""Dialogue corpora in one shape, so training and evaluation code never cares where a dialogue came from.

The interchange format is JSONL, one dialogue per line::

    {"id": "chitchat:a07edb12-...", "language": "en",
     "turns": [{"speaker": "A", "text": "Hello", "meta": {}}, ...],
     "meta": {"ratings": {"witty": 10, "upbeat": 10, "interesting": 10}}}

``id`` is unique within a corpus and prefixed with the corpus name; splits are derived from it
(:func:`split_of`), never from turn positions, so no conversation leaks across train/dev/test.
``turns[i].meta`` is optional and holds per-turn annotations (ConvAI2 thumbs, Topical-Chat ratings).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.text import normalize_text
from core.types import Context, Turn
from core.user_files import UserFileError, decode_user_bytes, read_user_json

SPLITS = ("train", "dev", "test")


class CorpusFormatError(ValueError):
    """A corpus file that cannot be read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class DialogueTurn:
    speaker: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dialogue:
    id: str
    language: str
    turns: tuple[DialogueTurn, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def context(self, end: int, context_turns: int) -> Context:
        """The ``context_turns`` turns before turn ``end`` as a :class:`core.types.Context`."""
        start = max(0, end - context_turns) if context_turns > 0 else 0
        return Context(tuple(Turn(t.speaker, t.text) for t in self.turns[start:end]))


@dataclass(frozen=True)
class ContextPair:
    """One training/evaluation example: a context and the reply a human actually gave."""

    context_id: str
    conversation_id: str
    language: str
    context: Context
    response: str
    response_meta: dict[str, Any]


def known_splits(names: Iterable[str], what: str = "splits") -> tuple[str, ...]:
    """``names`` in :data:`SPLITS` order; an unknown or missing name is refused, because a typo would
    otherwise give an empty selection (or, in an exclusion, a leaking one)."""
    wanted = set(names)
    unknown = wanted - set(SPLITS)
    if unknown or not wanted:
        raise ValueError(f"{what}: unknown split(s) {sorted(unknown) or '(none given)'}; use {', '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in wanted)


def split_of(conv_id: str, dev_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Stable split of a conversation: the same id lands in the same split on every machine and run."""
    if not (dev_fraction >= 0 and test_fraction >= 0 and dev_fraction + test_fraction < 1):
        raise ValueError(
            f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must be >= 0 and sum to < 1"
        )
    digest = hashlib.sha1(conv_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def context_response_pairs(
    dialogues: Iterable[Dialogue], context_turns: int = 3, skip_same_speaker: bool = True
) -> Iterator[ContextPair]:
    """Every (previous ``context_turns`` turns, next turn) pair; ``context_id`` is ``"<conv id>#<turn>"``.

    ``skip_same_speaker`` drops pairs where a speaker continues their own message, since that is not a
    reply the system would ever have to choose.
    """
    for dialogue in dialogues:
        for i in range(1, len(dialogue.turns)):
            turn = dialogue.turns[i]
            if skip_same_speaker and turn.speaker == dialogue.turns[i - 1].speaker:
                continue
            yield ContextPair(
                context_id=f"{dialogue.id}#{i}",
                conversation_id=dialogue.id,
                language=dialogue.language,
                context=dialogue.context(i, context_turns),
                response=turn.text,
                response_meta=dict(turn.meta),
            )


def _turn(speaker: Any, text: Any, meta: dict[str, Any] | None = None) -> DialogueTurn | None:
    clean = normalize_text(str(text or ""))
    return DialogueTurn(str(speaker), clean, meta or {}) if clean else None


def _shaped(value: Any, kind: type, where: str, expected: str) -> Any:
    """``value`` when it is a ``kind``; else a ``CorpusFormatError`` naming the place and the expected shape."""
    if not isinstance(value, kind):
        raise CorpusFormatError(f"{where}: expected {expected}, found {type(value).__name__}; is this the right "
                                "file for this reader, and complete?")
    return value


def _messages(conv: Any, key: str, where: str) -> list[dict[str, Any]]:
    """The message objects of one conversation, each checked to be an object with string text fields."""
    conv = _shaped(conv, dict, where, "a conversation object")
    messages = _shaped(conv.get(key, []), list, f"{where}: '{key}'", "a list of messages")
    for j, message in enumerate(messages):
        message = _shaped(message, dict, f"{where}: {key}[{j}]", "a message object")
        for name in ("text", "message", "sender", "agent"):
            _shaped(message.get(name, ""), str, f"{where}: {key}[{j}].{name}", "a string")
    return messages


def _dialogue(conv_id: str, language: str, turns: Iterable[DialogueTurn | None], meta: dict) -> Dialogue | None:
    kept = tuple(t for t in turns if t is not None)
    return Dialogue(conv_id, language, kept, meta) if kept else None


# ---- JSONL interchange format -------------------------------------------------------------------


def _dialogue_from_json(obj: Any, where: str) -> Dialogue:
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("turns"), list):
        raise CorpusFormatError(f"{where}: expected an object with a string 'id' and a list 'turns'")
    turns = []
    for j, raw in enumerate(obj["turns"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
            raise CorpusFormatError(f"{where}: turn {j} needs a string 'text' (and a 'speaker')")
        meta = _shaped(raw.get("meta") or {}, dict, f"{where}: turn {j} 'meta'", "an object")
        turns.append(DialogueTurn(str(raw.get("speaker", "")), raw["text"], dict(meta)))
    language = obj.get("language")
    if not isinstance(language, str) or not language:
        raise CorpusFormatError(f"{where}: missing 'language' (e.g. \"ru\" or \"en\")")
    return Dialogue(obj["id"], language, tuple(turns), dict(_shaped(obj.get("meta") or {}, dict, f"{where}: 'meta'",
                                                                     "an object")))


def read_jsonl_dialogues(path: Path) -> Iterator[Dialogue]:
    """Stream the interchange format; a bad line raises ``CorpusFormatError`` naming the file and line."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                line = decode_user_bytes(raw, path, "utf-8-sig" if line_no == 1 else "utf-8", first_line=line_no)
            except UserFileError as exc:
                raise CorpusFormatError(str(exc)) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusFormatError(f"{path}:{line_no}: not valid JSON ({exc.msg}); fix or drop that line"
                                        ) from exc
            yield _dialogue_from_json(obj, f"{path}:{line_no}")


def write_jsonl_dialogues(path: Path, dialogues: Iterable[Dialogue]) -> int:
    """Write atomically; returns how many dialogues were written."""
    lines = []
    for d in dialogues:
        turns = [{"speaker": t.speaker, "text": t.text, **({"meta": t.meta} if t.meta else {})} for t in d.turns]
        lines.append(json.dumps({"id": d.id, "language": d.language, "turns": turns, "meta": d.meta},
                                ensure_ascii=False))
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)


# ---- public corpora -----------------------------------------------------------------------------


def chitchat_dataset_path() -> Path:
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the chitchat-dataset package is not installed; run `pip install chitchat-dataset`")
    return Path(spec.origin).parent / "dataset.json"


def _load_json(path: Path) -> Any:
    try:
        return read_user_json(path)
    except UserFileError as exc:
        raise CorpusFormatError(str(exc)) from exc


def read_chitchat(path: Path | None = None, limit: int | None = None) -> Iterator[Dialogue]:
    """Chit Chat Challenge (English). A turn is one sender's run of messages, joined by spaces.

    Meta keeps ``prompt``, ``start`` and the per-conversation ``ratings`` (witty/interesting/upbeat, 1-10)
    when present (about 5,988 of 7,168 conversations have them).
    """
    path = path or chitchat_dataset_path()
    data = _shaped(_load_json(path), dict, str(path), "an object of conversations keyed by id")
    count = 0
    for conv_id, conv in data.items():
        if limit is not None and count >= limit:
            return
        where = f"{path}: conversation {conv_id!r}"
        groups = _shaped(_shaped(conv, dict, where, "a conversation object").get("messages", []), list, where,
                         "a 'messages' list")
        turns = []
        for j, group in enumerate(groups):
            group = _messages({"group": group}, "group", f"{where}: messages[{j}]")
            if group:
                turns.append(_turn(group[0].get("sender", ""), " ".join(m.get("text", "") for m in group)))
        meta = {key: conv[key] for key in ("prompt", "start", "ratings") if key in conv}
        dialogue = _dialogue(f"chitchat:{conv_id}", "en", turns, meta)
        if dialogue is not None:
            count += 1
            yield dialogue


def _decoded(data: bytes, source: str | Path) -> str:
    try:
        return decode_user_bytes(data, source)
    except UserFileError as exc:
        raise CorpusFormatError(str(exc)) from exc


def read_anekdot_dialogues(path: Path, limit: int | None = None) -> Iterator[Dialogue]:
    """Koziev's Russian joke dialogues: one text file inside a .tar.xz (or the bare .txt).

    Dialogues are separated by blank lines and turns start with ``- ``. Speakers are not given, so they
    alternate ``A``/``B``. The id is a hash of the dialogue text, so it survives reordering of the file.
    """
    path = Path(path)
    if path.suffix == ".txt":
        text = _decoded(path.read_bytes(), path)
    else:
        try:
            with tarfile.open(path) as archive:
                members = [m for m in archive.getmembers() if m.isfile()]
                if len(members) != 1:
                    raise CorpusFormatError(f"{path}: expected exactly one text file inside, found {len(members)}")
                handle = archive.extractfile(members[0])
                assert handle is not None
                data, name = handle.read(), members[0].name
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise CorpusFormatError(f"{path}: not a readable archive ({exc}); it may be cut off: fetch it again"
                                    ) from exc
        text = _decoded(data, f"{path}:{name}")
    count = 0
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if limit is not None and count >= limit:
            return
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        texts = [line[1:].strip() if line.startswith("-") else line for line in lines]
        turns = [_turn("AB"[i % 2], t) for i, t in enumerate(texts)]
        conv_id = "anekdot:" + hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()[:16]
        dialogue = _dialogue(conv_id, "ru", turns, {})
        if dialogue is not None:
            count += 1
            yield dialogue


def read_topicalchat(path: Path, limit: int | None = None) -> Iterator[Dialogue]:
    """Topical-Chat conversations file (e.g. ``valid_freq.json``); per-turn sentiment and rating kept."""
    path = Path(path)
    data = _shaped(_load_json(path), dict, str(path), "an object of conversations keyed by id")
    subset = path.stem
    for count, (conv_id, conv) in enumerate(data.items()):
        if limit is not None and count >= limit:
            return
        turns = [
            _turn(m.get("agent", ""), m.get("message", ""),
                  {k: m[k] for k in ("sentiment", "turn_rating") if k in m})
            for m in _messages(conv, "content", f"{path}: conversation {conv_id!r}")
        ]
        meta = {"subset": subset, **{k: conv[k] for k in ("config", "article_url") if k in conv}}
        dialogue = _dialogue(f"topicalchat:{conv_id}", "en", turns, meta)
        if dialogue is not None:
            yield dialogue


TOPICALCHAT_FILES = ("valid_freq.json", "valid_rare.json")


def read_topicalchat_folder(directory: Path) -> list[Dialogue]:
    """Every conversation of the Topical-Chat files in ``directory`` (:data:`TOPICALCHAT_FILES`).

    One reader for evaluation and training, so both see the very same conversations and ids, and the
    hash split alone decides which side a conversation is on: of the 1,078 validation conversations,
    the ``train`` split (~890) may adapt the retriever to the domain while ``dev``/``test`` (~190) stay
    held out for evaluation.
    """
    paths = [Path(directory) / name for name in TOPICALCHAT_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Topical-Chat files not found: {', '.join(missing)}; give the folder holding "
                                f"{' and '.join(TOPICALCHAT_FILES)}")
    return [dialogue for path in paths for dialogue in read_topicalchat(path)]


def read_convai2(path: Path, limit: int | None = None) -> Iterator[Dialogue]:
    """ConvAI2 human-bot dialogues. Turn meta keeps ``sender_class`` and ``evaluation_score`` (thumbs).

    The files carry no conversation id, so the id is ``convai2:<file stem>:<position in file>``.
    """
    path = Path(path)
    data = _shaped(_load_json(path), list, str(path), "a JSON list of ConvAI2 dialogues")
    count = 0
    for index, conv in enumerate(data):
        if limit is not None and count >= limit:
            return
        turns = [
            _turn(m.get("sender", ""), m.get("text", ""),
                  {"sender_class": m.get("sender_class"), "evaluation_score": m.get("evaluation_score")})
            for m in _messages(conv, "dialog", f"{path}: dialogue {index}")
        ]
        meta = {k: conv[k] for k in ("eval_score", "profile_match", "bot_profile", "user_profile",
                                     "start_time", "participant1_id", "participant2_id") if k in conv}
        dialogue = _dialogue(f"convai2:{path.stem}:{index}", "en", turns, meta)
        if dialogue is not None:
            count += 1
            yield dialogue

"""The bank a fresh install starts with, built only from data shipped in installed packages.

Four sources, in order of trust: the hand-written starter set, chatterbot-corpus replies, the curated
Russian replies from Koziev's CC0 joke dialogues (``core/data/bank_ru.jsonl.xz``, made by
``dialog.jobs.curate_ru``; provenance beside it), and a filtered sample of chitchat-dataset replies.
Earlier sources win on duplicates, so an editor's wording is never replaced by a crowd-sourced one.
Each source is one all-or-nothing import.
"""

from __future__ import annotations

import json
import lzma
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path

from core.bank.formats import PhraseRow, RowError, read_phrases
from core.bank.schema import MAX_TEXT_CHARS, BankError
from core.bank.store import PhraseBank
from core.text import normalize_text
from core.user_files import json_lines

STARTER_FILES = ("starter_ru.jsonl", "starter_en.jsonl")
CHATTERBOT_FOLDERS = {"ru": "russian", "en": "english", "uk": "ukrainian"}
CHATTERBOT = {"source": "chatterbot-corpus", "license": "BSD-3-Clause"}
CHITCHAT = {"source": "chitchat-dataset", "license": "MIT"}
CURATED_RU_FILE = "bank_ru.jsonl.xz"
CURATED_RU = {"source": "koziev-anekdot-dialogues", "license": "CC0-1.0", "language": "ru"}
DEFAULT_SEED = 20240607
WHO = "default-build"

_SYMBOLS = re.compile(
    r"https?://|www\.|\.(?:com|net|org|io|ly|co)\b|@\w"  # links, handles
    r"|[:;=][-']?[()\[\]DPpOo/\\|*]|<3|\^_?\^"  # emoticons
    r"|[!?]{3,}|\.{4,}|[,;:]{2,}|[!?][.,]"  # punctuation runs
    r"|(.)\1{3,}",  # "soooo", "!!!!"
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z']+")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Word lists are matched by set lookup on the tokens: on 230k chat lines that is several times faster
# than the equivalent case-insensitive regex alternations.
_SLANG = _words(
    "im dont cant wont didnt doesnt isnt thats youre ive gonna wanna ya yea lol lool lmao lmfao rofl omg jk "
    "hah xd wtf stfu"
)
_TEXTSPEAK = _words("u ur r i pls plz thx idk tbh btw bc cuz imo")  # lower case only: "I", "U.S."
_LAUGH_PREFIXES = ("haha", "hehe", "lool", "lmao")
_PROFANE = _words(
    "cunt cunts dick dicks pussy pussies ass asses bastard bastards whore whores slut sluts cock cocks fag "
    "fags"
)
_PROFANE_PREFIXES = ("fuck", "motherf", "shit", "bullshit", "bitch", "cocksuck", "nigg", "faggot", "retard",
                     "asshole", "dickhead")
_FILLER = _words(
    "hi hello hey hiya howdy yo sup what whats what's up ok okay yes yeah yep no nope bye goodbye thanks "
    "thank you too there good morning afternoon evening night how are is it going doing nice cool great "
    "to meet see talk again well and"
)
_TYPOGRAPHIC = frozenset("’‘“”–—…")
_ENDINGS = frozenset(".!?\"')”’")


def _data_file(package: str, *parts: str) -> Path:
    return Path(str(resources.files(package).joinpath(*parts)))


def is_clean_reply(text: str) -> bool:
    """A chat line that reads well out of context: a tidy, inoffensive sentence of useful length.

    Crowd chat logs are mostly fragments, slang and in-jokes; a bank reply is shown to users verbatim,
    so the filter would rather drop a good line than keep a bad one.
    """
    words = text.split()
    if not (4 <= len(words) <= 30 and 15 <= len(text) <= 200):
        return False
    if not (text[0].isupper() and text.rstrip("\"')”’").endswith((".", "!", "?"))):
        return False
    if not text.isascii() and any(not (ch.isascii() or ch in _TYPOGRAPHIC) for ch in text):
        return False  # emoji, symbols, other scripts
    letters = sum(map(str.isalpha, text))
    if letters < 0.6 * (len(text) - text.count(" ")) or sum(map(str.isupper, text)) > 0.5 * letters:
        return False  # digits and symbols, or shouting
    if _SYMBOLS.search(text):
        return False
    tokens = _WORD.findall(text)
    lower = [token.lower().strip("'") for token in tokens]
    if any(token in _TEXTSPEAK for token in tokens) or any(
        word in _SLANG or word in _PROFANE or word.startswith(_PROFANE_PREFIXES + _LAUGH_PREFIXES)
        for word in lower
    ):
        return False
    if any(lower[i] == lower[i + 1] == lower[i + 2] for i in range(len(lower) - 2)):
        return False  # "no no no"
    return not set(lower) <= _FILLER  # nothing but greetings and fillers


def _dedupe_key(text: str) -> str:
    return re.sub(r"\W+", " ", text.casefold()).strip()


def select_replies(texts: Iterable[str], limit: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Clean, distinct replies; a seeded sample of ``limit`` of them, kept in their original order."""
    candidates: list[str] = []
    seen: set[str] = set()
    for raw in texts:
        stripped = raw.strip()
        if len(stripped) < 15 or not stripped[0].isupper() or stripped[-1] not in _ENDINGS:
            continue  # cheap early exit before normalization: most chat lines stop here
        text = normalize_text(raw)
        if not is_clean_reply(text):
            continue
        key = _dedupe_key(text)
        if key not in seen:
            seen.add(key)
            candidates.append(text)
    if len(candidates) <= limit:
        return candidates
    picked = sorted(random.Random(seed).sample(range(len(candidates)), limit))
    return [candidates[i] for i in picked]


def chitchat_replies(path: Path) -> Iterator[str]:
    """Every utterance that answers someone: the conversation's first message (the opener) is left out."""
    with open(path, encoding="utf-8") as handle:
        conversations = json.load(handle)
    for conversation in conversations.values():
        for message in conversation.get("messages", [])[1:]:
            for utterance in message:
                if isinstance(utterance.get("text"), str):
                    yield utterance["text"]


def _with_origin_tags(row: PhraseRow) -> PhraseRow:
    origin_tags = tuple(tag for tag in (row.source.lower(), row.license.lower()) if tag)
    return replace(row, tags=(*origin_tags, *(t for t in row.tags if t.lower() not in origin_tags)))


def _raise_on(errors: Sequence[RowError], what: str) -> None:
    if errors:
        listing = "\n".join(f"  {error}" for error in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise BankError(f"{what} has {len(errors)} bad row(s); fix them or reinstall repliq:\n{listing}{more}")


def starter_rows(paths: Sequence[Path] | None = None) -> list[PhraseRow]:
    paths = [_data_file("core.data", name) for name in STARTER_FILES] if paths is None else list(paths)
    rows: list[PhraseRow] = []
    for path in paths:
        if not path.is_file():
            raise BankError(f"starter phrase file {path} is missing; reinstall repliq (it ships in core/data)")
        suffix = path.stem.rsplit("_", 1)[-1]
        defaults = {"source": "starter", "language": suffix if len(suffix) == 2 else ""}
        found, errors = read_phrases(path, "jsonl", defaults)
        _raise_on(errors, f"starter file {path}")
        rows.extend(found)
    return rows


def chatterbot_rows(data_dir: Path | None = None, languages: Iterable[str] = tuple(CHATTERBOT_FOLDERS)
                    ) -> tuple[list[PhraseRow], list[RowError]]:
    """Replies from the corpus, and the corpus's own malformed entries (a few exist in 1.3.3).

    Third-party data is taken as it is: bad entries are skipped and reported, not fatal.
    """
    data_dir = _data_file("chatterbot_corpus", "data") if data_dir is None else Path(data_dir)
    rows: list[PhraseRow] = []
    errors: list[RowError] = []
    for language in languages:
        for path in sorted((data_dir / CHATTERBOT_FOLDERS[language]).glob("*.yml")):
            found, bad = read_phrases(path, "yaml", {"language": language, **CHATTERBOT})
            errors.extend(bad)
            for row in found:
                if 0 < len(normalize_text(row.text)) <= MAX_TEXT_CHARS:
                    rows.append(row)
                else:
                    errors.append(RowError(row.origin.file, row.origin.line, "empty or too long; skipped"))
    return rows, errors


def curated_ru_rows(path: Path | None = None) -> list[PhraseRow]:
    """The curated Russian phrases; a shipped file that is missing or broken stops the build, like the
    starter set, because it is ours: its rows are never silently dropped."""
    path = _data_file("core.data", CURATED_RU_FILE) if path is None else Path(path)
    fix = "reinstall repliq, or rebuild it with `python -m dialog.jobs.curate_ru <koziev_anekdot_dialogues.tar.xz>`"
    if not path.is_file():
        raise BankError(f"curated Russian phrase file {path} is missing; {fix}")
    try:
        text = lzma.decompress(path.read_bytes()).decode("utf-8")
    except (lzma.LZMAError, UnicodeDecodeError) as exc:
        raise BankError(f"curated Russian phrase file {path} is not xz-compressed UTF-8 ({exc}); {fix}") from exc
    rows: list[PhraseRow] = []
    errors: list[RowError] = []
    for number, obj, broken in json_lines(text):
        if broken:
            errors.append(RowError(str(path), number, f"broken JSON: {broken}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            errors.append(RowError(str(path), number, "expected an object with a non-empty string 'text'"))
            continue
        unknown = sorted(set(obj) - {"text", *CURATED_RU, "author"})
        if unknown or any(obj.get(k, v) != v for k, v in CURATED_RU.items()):
            errors.append(RowError(str(path), number, f"unexpected field(s) or value(s): {unknown or obj}"))
            continue
        rows.append(PhraseRow(text=obj["text"], author=str(obj.get("author", "")), **CURATED_RU))
    _raise_on(errors, f"curated Russian phrase file {path}")
    return rows


def chitchat_rows(path: Path | None = None, limit: int = 8000, seed: int = DEFAULT_SEED) -> list[PhraseRow]:
    path = _data_file("chitchat_dataset", "dataset.json") if path is None else Path(path)
    return [PhraseRow(text=text, language="en", **CHITCHAT) for text in
            select_replies(chitchat_replies(path), limit, seed)]


def build_default_bank(
    bank: PhraseBank,
    *,
    chitchat_limit: int = 8000,
    progress: Callable[[str], None] | None = None,
    starter_files: Sequence[Path] | None = None,
    chatterbot_dir: Path | None = None,
    chitchat_path: Path | None = None,
    curated_ru_path: Path | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, int]:
    """Fill ``bank`` from the shipped sources; returns how many phrases each source added.

    Safe to rerun: phrases already in the bank (from any source) are skipped, so a second run adds nothing.
    The path arguments exist for tests and for building from a different copy of the data.
    """
    stages: list[tuple[str, Callable[[], tuple[list[PhraseRow], list[RowError]]]]] = [
        ("starter", lambda: (starter_rows(starter_files), [])),
        ("chatterbot-corpus", lambda: chatterbot_rows(chatterbot_dir)),
        ("koziev-anekdot-dialogues", lambda: (curated_ru_rows(curated_ru_path), [])),
    ]
    if chitchat_limit > 0:
        stages.append(("chitchat-dataset", lambda: (chitchat_rows(chitchat_path, chitchat_limit, seed), [])))
    counts: dict[str, int] = {}
    for name, load in stages:
        loaded, unusable = load()
        rows = [_with_origin_tags(row) for row in loaded]
        report = bank.import_phrases(rows, who=WHO, why=f"default bank: {name}", on_duplicate="skip")
        _raise_on(report.errors, f"the {name} source")
        counts[name] = report.accepted
        if progress is not None:
            progress(f"{name}: added {report.accepted} of {len(rows)}, skipped {len(report.skipped)} "
                     f"duplicate(s) and {len(unusable)} malformed entr{'y' if len(unusable) == 1 else 'ies'}")
    return counts

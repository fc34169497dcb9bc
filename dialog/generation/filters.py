"""Checks a generated reply must pass before it may compete with bank phrases.

A small base LM happily produces empty lines, echoes of the user, run-on text, the wrong language
and, now and then, abuse. Bank phrases were vetted by an editor; generated ones only get these
automatic checks, so each drop is recorded with its reason for ``explain`` output and debugging.

The blocklist is the packaged lists (``core/data/blocklist_<lang>.txt``, every language at once: a
Russian reply can carry English abuse) plus an optional editor-kept file in the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.blocklist import Blocklist, packaged_blocklists
from core.text import detect_language, normalize_text, word_tokens
from core.types import Context

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
REPEATS_CONTEXT = "repeats_context"
DEGENERATE = "degenerate"
WRONG_LANGUAGE = "wrong_language"
BLOCKLISTED = "blocklisted"


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 2
    max_chars: int = 200
    # A reply whose word set overlaps a context turn this much (Jaccard) is an echo, not an answer.
    max_context_overlap: float = 0.8
    # A reply of 4+ words in which one word makes up more than this share is a loop ("да да да да").
    max_word_share: float = 0.5
    check_language: bool = True
    extra_blocklist: Path | None = None

    def validate(self) -> None:
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < min_chars <= max_chars, got {self.min_chars} and {self.max_chars}")
        for name in ("max_context_overlap", "max_word_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.extra_blocklist is not None and not Path(self.extra_blocklist).is_file():
            raise FileNotFoundError(
                f"extra blocklist {self.extra_blocklist} does not exist; create it (one word per line, "
                "a trailing * for stems) or remove the setting"
            )


@dataclass
class FilterResult:
    kept: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)


def load_blocklists(extra: Path | None = None) -> list[Blocklist]:
    lists = list(packaged_blocklists().values())
    if extra is not None:
        lists.append(Blocklist.load(Path(extra)))
    return lists


def _key(text: str) -> str:
    """Comparison form: case, punctuation and spacing do not make a reply new."""
    return " ".join(word_tokens(normalize_text(text)))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class ReplyFilter:
    def __init__(self, config: FilterConfig | None = None, blocklists: Sequence[Blocklist] | None = None) -> None:
        self.config = config or FilterConfig()
        self.config.validate()
        self.blocklists = list(blocklists) if blocklists is not None else load_blocklists(
            self.config.extra_blocklist)

    def reason(self, reply: str, context: Context, language: str) -> str | None:
        """Why ``reply`` must be dropped, or None if it passes (duplicates are checked in ``apply``)."""
        text = normalize_text(reply)
        words = word_tokens(text)
        if not text or not words:
            return EMPTY
        if len(text) < self.config.min_chars:
            return TOO_SHORT
        if len(text) > self.config.max_chars:
            return TOO_LONG
        key, word_set = " ".join(words), set(words)
        for turn in context.turns:
            turn_words = word_tokens(normalize_text(turn.text))
            if key == " ".join(turn_words) or _jaccard(word_set, set(turn_words)) >= self.config.max_context_overlap:
                return REPEATS_CONTEXT
        if len(words) >= 4 and max(words.count(w) for w in word_set) / len(words) > self.config.max_word_share:
            return DEGENERATE
        if self.config.check_language and detect_language(text, default=language) != language:
            return WRONG_LANGUAGE
        if any(blocklist.hits(words) for blocklist in self.blocklists):
            return BLOCKLISTED
        return None

    def apply(self, replies: Sequence[str], context: Context, language: str) -> FilterResult:
        """Indices of replies to keep (first of each duplicate group) and the reason for each drop."""
        result = FilterResult()
        seen: set[str] = set()
        for index, reply in enumerate(replies):
            why = self.reason(reply, context, language)
            if why is None and _key(reply) in seen:
                why = DUPLICATE
            if why is None:
                seen.add(_key(reply))
                result.kept.append(index)
            else:
                result.dropped[index] = why
        return result

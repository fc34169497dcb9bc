"""Response hygiene: a reply must not echo the user's last turn, nor repeat the bot's own last turn.

A retriever trained (or not trained) for semantic similarity ranks the user's own words highest: the
bank's "Как дела?" is the closest phrase to "Привет! Как дела?". That is a property of the whole
retrieval approach, not of one phrase, so it is filtered here, on every candidate of every source,
before the pipeline cuts to top K.

A candidate is removed when, against the turn it is compared with, any of these holds (thresholds in
:class:`HygieneConfig`):

* ``same_text``: the texts are equal after :func:`similarity_key` (case, punctuation, spacing, ё/е);
* ``char_jaccard``: the character-trigram sets overlap by Jaccard >= ``char_jaccard`` (near duplicates
  with a changed word or typo);
* ``token_jaccard``: the word sets overlap by Jaccard >= ``token_jaccard`` (reordered words);
* ``contained``: at least ``containment`` of the candidate's character trigrams occur in the turn, so
  the candidate repeats a part of it ("Как дела?" inside "Привет! Как дела?"). Trigrams span word
  boundaries, so the same words scattered through a long turn do not count;
* ``cosine`` (off by default): the retrieval cosine between candidate and turn is >= ``cosine``. Only
  used where that cosine really is candidate-vs-turn: for the user's turn when it is the whole dialogue
  (the retrieval query is then exactly that turn). On e5-small (query vs passage side) an exact echo
  scores 0.92-0.97 while genuine answers reach 0.92 ("Hello! How are you doing today?" -> "Hey there!
  Pretty good today, honestly..." 0.918), so no threshold separates them better than the lexical checks
  do; set it for an encoder whose cosines do separate.

Everything here is plain text arithmetic (microseconds per candidate), so it runs on the request path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.types import Candidate, Context, Turn

_NON_WORD = re.compile(r"[\W_]+")


# Bank phrases come back request after request; their keys and shingles are pure functions of the text,
# so they are computed once (bounded: a bank of millions does not pin them all).
_TEXT_CACHE = 65_536


@functools.lru_cache(maxsize=_TEXT_CACHE)
def similarity_key(text: str) -> str:
    """Lower case, ``ё`` as ``е``, punctuation and spacing collapsed: the text as a reader compares it."""
    return _NON_WORD.sub(" ", text.casefold().replace("ё", "е")).strip()


@functools.lru_cache(maxsize=_TEXT_CACHE)
def char_shingles(text: str, n: int = 3) -> frozenset[str]:
    """Character n-grams of the padded :func:`similarity_key`; a text shorter than ``n`` is one shingle."""
    key = f" {similarity_key(text)} "
    if len(key) <= n:
        return frozenset({key}) if key.strip() else frozenset()
    return frozenset(key[i: i + n] for i in range(len(key) - n + 1))


@functools.lru_cache(maxsize=_TEXT_CACHE)
def token_set(text: str) -> frozenset[str]:
    return frozenset(similarity_key(text).split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b|; two empty sets are not similar (0.0), so empty text never matches."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def containment(part: frozenset[str], whole: frozenset[str]) -> float:
    """Share of ``part`` found in ``whole``."""
    return len(part & whole) / len(part) if part else 0.0


@dataclass(frozen=True)
class HygieneConfig:
    """Thresholds; each check fires at ``>=`` its value. A value above 1 (or ``cosine=None``) switches a check off."""

    char_jaccard: float = 0.6
    token_jaccard: float = 0.6
    containment: float = 0.9
    cosine: float | None = None
    check_bot_turn: bool = True

    def validate(self) -> None:
        for name in ("char_jaccard", "token_jaccard", "containment", "cosine"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:  # NaN too
                raise ValueError(f"hygiene threshold {name}={value} must be > 0 (use a value > 1 to disable it)")


@dataclass(frozen=True)
class Removal:
    """A candidate the filter took out, which turn it collided with, by which check and how strongly."""

    candidate: Candidate
    turn: str  # "user" or "bot"
    check: str
    value: float


@dataclass(frozen=True)
class _Turn:
    role: str
    key: str
    shingles: frozenset[str]
    tokens: frozenset[str]
    cosine_usable: bool


def turns_to_check(context: Context, check_bot_turn: bool = True) -> list[tuple[str, Turn]]:
    """The user's last turn, and the bot's last turn before it.

    The bot's turn is the latest earlier turn by another speaker; with unlabelled speakers (all equal)
    it is simply the turn before the last one, as in any two-party dialogue.
    """
    if not context.turns:
        return []
    last = context.turns[-1]
    found: list[tuple[str, Turn]] = [("user", last)]
    if check_bot_turn and len(context.turns) > 1:
        earlier = context.turns[:-1]
        other = next((t for t in reversed(earlier) if t.speaker != last.speaker), earlier[-1])
        found.append(("bot", other))
    return found


class HygieneFilter:
    """Removes echoes and near duplicates of the dialogue's last turns from a candidate pool."""

    def __init__(self, config: HygieneConfig | None = None) -> None:
        self.config = config or HygieneConfig()
        self.config.validate()

    def _prepared(self, context: Context) -> list[_Turn]:
        turns = turns_to_check(context, self.config.check_bot_turn)
        single = len(context.turns) == 1
        return [_Turn(role, similarity_key(t.text), char_shingles(t.text), token_set(t.text),
                      cosine_usable=single and role == "user")
                for role, t in turns if similarity_key(t.text)]

    def _collision(self, candidate: Candidate, turn: _Turn) -> tuple[str, float] | None:
        cfg = self.config
        key = similarity_key(candidate.text)
        if not key:
            return None
        if key == turn.key:
            return "same_text", 1.0
        shingles = char_shingles(candidate.text)
        for check, value, threshold in (
            ("char_jaccard", jaccard(shingles, turn.shingles), cfg.char_jaccard),
            ("token_jaccard", jaccard(token_set(candidate.text), turn.tokens), cfg.token_jaccard),
            ("contained", containment(shingles, turn.shingles), cfg.containment),
        ):
            if value >= threshold:
                return check, value
        cosine = candidate.stage_scores.get("retrieval")
        if cfg.cosine is not None and turn.cosine_usable and cosine is not None and cosine >= cfg.cosine:
            return "cosine", float(cosine)
        return None

    def split(self, context: Context, candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[Removal]]:
        """(kept candidates in their order, removals); the candidates themselves are not modified."""
        turns = self._prepared(context)
        kept: list[Candidate] = []
        removed: list[Removal] = []
        for candidate in candidates:
            hit = next(((turn.role, *found) for turn in turns
                        if (found := self._collision(candidate, turn)) is not None), None)
            if hit is None:
                kept.append(candidate)
            else:
                removed.append(Removal(candidate, hit[0], hit[1], hit[2]))
        return kept, removed

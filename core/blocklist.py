"""Blocklisted words (abuse, slurs, explicit terms): one shared text resource for every floor.

The ranker's ``blocklist`` annotator counts hits as a feature; generation drops replies that have any.
Both read the same lists, so they live on the ground floor next to the files (``core/data/blocklist_<lang>.txt``).

The list format: one lowercase word per line, ``#`` starts a comment, a trailing ``*`` marks a stem that
matches any word starting with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

PACKAGED_LANGUAGES = ("ru", "en")


@dataclass(frozen=True)
class Blocklist:
    words: frozenset[str]
    stems: tuple[str, ...]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Blocklist:
        words, stems = set(), set()
        for raw in lines:
            entry = raw.split("#", 1)[0].strip().lower()
            if entry.endswith("*") and len(entry) > 1:
                stems.add(entry[:-1])
            elif entry:
                words.add(entry)
        return cls(frozenset(words), tuple(sorted(stems)))

    @classmethod
    def load(cls, path: Path) -> Blocklist:
        return cls.from_lines(Path(path).read_text(encoding="utf-8").splitlines())

    def __post_init__(self) -> None:
        # Per-word verdicts are cached: the same words recur across candidates and requests.
        object.__setattr__(self, "_blocked", lru_cache(maxsize=65536)(self._match))

    def _match(self, word: str) -> bool:
        return word in self.words or word.startswith(self.stems)

    @classmethod
    def merge(cls, lists: Iterable[Blocklist]) -> Blocklist:
        lists = list(lists)
        return cls(frozenset().union(*(b.words for b in lists)), tuple(sorted({s for b in lists for s in b.stems})))

    def hits(self, words: Sequence[str]) -> int:
        return sum(1 for w in words if self._blocked(w))  # type: ignore[attr-defined]


def packaged_blocklists() -> dict[str, Blocklist]:
    """The lists shipped in ``core/data``; a language whose file is absent is simply left out."""
    found = {}
    for lang in PACKAGED_LANGUAGES:
        entry = resources.files("core.data") / f"blocklist_{lang}.txt"
        if entry.is_file():
            found[lang] = Blocklist.from_lines(entry.read_text(encoding="utf-8").splitlines())
    return found

"""Plain data types shared by every floor, so no floor needs another's classes to talk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

SOURCE_BANK = "bank"
SOURCE_GENERATED = "generated"


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str


@dataclass(frozen=True)
class Context:
    """The dialogue so far; the last turn is the one being answered."""

    turns: tuple[Turn, ...]

    @property
    def last_text(self) -> str:
        return self.turns[-1].text if self.turns else ""

    def window(self, n_turns: int) -> Context:
        return Context(self.turns[-n_turns:] if n_turns > 0 else self.turns)

    def as_query_text(self, n_turns: int, separator: str = "\n") -> str:
        """The retrieval query: the last ``n_turns`` texts, oldest first."""
        return separator.join(t.text for t in self.window(n_turns).turns)


@dataclass
class Candidate:
    """One possible reply. ``score`` orders candidates; ``stage_scores`` explains it."""

    text: str
    source: str
    language: str
    phrase_id: int | None = None
    score: float = 0.0
    stage_scores: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)


class CandidateSource(Protocol):
    """Anything that proposes replies: the bank retriever, the generative LM, ...

    ``deadline`` is an absolute ``time.monotonic()`` value; a source returns what it has by then.
    """

    name: str

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]: ...


class Reranker(Protocol):
    """Orders a pooled candidate list; sets ``score`` (and, with ``explain``, ``contributions``)."""

    name: str
    version: str

    def rerank(
        self, context: Context, candidates: list[Candidate], explain: bool = False
    ) -> list[Candidate]: ...


class QueryPassageEncoder(Protocol):
    """An asymmetric bi-encoder: contexts are encoded as queries, replies as passages (unit vectors)."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray: ...

"""The annotator base class and its resources: what every feature family builds on.

Annotators turn a (context, candidate pool) into meta-features for the blender.

Each annotator is a small class with a ``name``, a ``version`` (bump it whenever its output for the
same input changes) and fixed ``feature_names``. A trained blender records the names and versions it
was fit on and refuses annotators that differ, so a silent feature drift cannot reach production.

A feature that cannot be computed (no LM, no IDF table, a generated candidate has no retrieval score)
is NaN, never a stand-in number: LightGBM learns what "missing" means on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from core.blocklist import Blocklist
from core.text import word_tokens
from core.types import Candidate, Context, QueryPassageEncoder

if TYPE_CHECKING:
    from ranker.idf import IdfTable


class ResponseLMScorer(Protocol):
    """Scores replies under a decoder LM given the context.

    Returns one mapping per response with any of ``cond_logprob`` (mean per-token log-prob of the
    response given the context), ``pmi`` (conditional minus unconditional mean log-prob) and
    ``uncond_logprob``; absent keys become NaN features.
    """

    def score(self, context: Context, responses: Sequence[str]) -> Sequence[Mapping[str, float]]: ...


SpecificityFn = Callable[[Context, Sequence[str]], Sequence[float]]


@dataclass
class AnnotatorResources:
    """Everything annotators may need; any of it may be absent, which makes the matching features NaN."""

    idf: IdfTable | None = None
    lm_scorer: ResponseLMScorer | None = None
    # phrase_id -> unconditional mean log-prob, e.g. from the bank's ``lm_scores`` table.
    lm_unconditional: Mapping[int, float] | None = None
    specificity: SpecificityFn | None = None
    # language -> blocklist; None loads the lists shipped in ``core/data``.
    blocklists: Mapping[str, Blocklist] | None = None
    # The retrieval encoder, for features that compare other texts than the retriever did.
    encoder: QueryPassageEncoder | None = None
    context_turns: int = 3


class Annotator(ABC):
    name: ClassVar[str]
    version: ClassVar[str]
    feature_names: ClassVar[tuple[str, ...]]
    # (derived column, source column, ``ranker.features.pool`` statistic): what a smaller pool must recompute.
    pool_relative: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    def __init__(self, resources: AnnotatorResources) -> None:
        self.resources = resources

    def annotate(self, contexts: Sequence[Context], candidates: Sequence[Sequence[Candidate]]) -> list[np.ndarray]:
        """One float32 array of shape (len(pool), len(feature_names)) per context."""
        if len(contexts) != len(candidates):
            raise ValueError(f"{len(contexts)} contexts but {len(candidates)} candidate pools")
        return [self.annotate_pool(ctx, pool) for ctx, pool in zip(contexts, candidates, strict=True)]

    @abstractmethod
    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray: ...

    def empty(self, n: int) -> np.ndarray:
        return np.full((n, len(self.feature_names)), np.nan, dtype=np.float32)


_REGISTRY: dict[str, type[Annotator]] = {}

def register(cls: type[Annotator]) -> type[Annotator]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two annotators are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls



@lru_cache(maxsize=65536)
def tokens(text: str) -> tuple[str, ...]:
    """Word tokens, cached: several annotators tokenize the same candidates on every request."""
    return tuple(word_tokens(text))

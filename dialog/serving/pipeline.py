"""The request path: pool candidates from every source, rerank, cut to top K.

Sources and the reranker are protocols (``core.types``), so a new candidate source or a learned
reranker plugs in here without the server or the wire API changing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from core.hygiene import HygieneFilter, Removal
from core.text import detect_language
from core.types import SOURCE_BANK, Candidate, CandidateSource, Context, Reranker
from dialog.serving import metrics
from dialog.serving.encoding import RequestEncoder
from dialog.serving.exploration import Decision, Explorer
from retriever.microbatch import DeadlineExpired


@dataclass
class PipelineRequest:
    context: Context
    top_k: int
    # Absolute time.monotonic() by which the answer must be ready.
    deadline: float
    language_hint: str = ""
    explain: bool = False
    # None means "as configured"; True/False switches the generative source for this request.
    generate: bool | None = None


@dataclass
class PipelineResult:
    candidates: list[Candidate]
    language: str
    versions: dict[str, str] = field(default_factory=dict)
    # Candidates the hygiene filter took out (echoes of the last turns); filled only with ``explain``.
    removed: list[Removal] = field(default_factory=list)
    # The exploration draw (pool, propensities, served index) when an explorer is set (decision logging).
    decision: Decision | None = None


def _check_deadline(deadline: float, stage: str) -> None:
    """Work for a request whose deadline has passed is dropped, not done late: nobody waits for it."""
    if time.monotonic() >= deadline:
        metrics.EXPIRED.labels(stage).inc()
        raise DeadlineExpired(f"the deadline passed before {stage} started")


def reply_language(context: Context, hint: str = "") -> str:
    """The hint wins; otherwise the language of the last user-authored text."""
    if hint:
        return hint
    return detect_language(context.last_text)


def bank_first(candidates: list[Candidate], top_k: int) -> list[Candidate]:
    """Fallback without a learned reranker: bank phrases by score, then the other sources by score.

    Scores of different sources are not comparable, so nothing is interleaved; but when other sources
    answered, they keep up to half of the ``top_k`` slots (at least one), so asking for generation
    never returns only bank phrases.
    """
    bank = sorted((c for c in candidates if c.source == SOURCE_BANK), key=lambda c: -c.score)
    others = sorted((c for c in candidates if c.source != SOURCE_BANK), key=lambda c: -c.score)
    kept_others = others[: min(len(others), max(1, top_k // 2))] if top_k > 0 else []
    return bank[: max(0, top_k - len(kept_others))] + kept_others


class Pipeline:
    def __init__(
        self,
        sources: Sequence[CandidateSource],
        *,
        pool_k: int,
        reranker: Reranker | None = None,
        optional_sources: Sequence[CandidateSource] = (),
        optional_enabled: bool = False,
        versions: dict[str, str] | None = None,
        hygiene: HygieneFilter | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one candidate source")
        self.sources = list(sources)
        self.optional_sources = list(optional_sources)
        self.optional_enabled = optional_enabled
        self.reranker = reranker
        self.pool_k = pool_k
        self.versions = dict(versions or {})
        # Set by serving when decisions are logged: draws the served answer and records its propensities.
        self.explorer: Explorer | None = None
        # Always on: no configuration makes echoing the user a good answer (core.hygiene).
        self.hygiene = hygiene or HygieneFilter()
        # Set by serving: encodes a request's query windows in one call; None encodes as each stage asks.
        self.query_encoder: RequestEncoder | None = None

    def respond(self, request: PipelineRequest) -> PipelineResult:
        language = reply_language(request.context, request.language_hint)
        use_optional = self.optional_enabled if request.generate is None else request.generate
        active = self.sources + (self.optional_sources if use_optional else [])
        pool: list[Candidate] = []
        scope = self.query_encoder.scope(request.context, request.deadline) if self.query_encoder else nullcontext()
        with scope:  # every query window of the request encoded in one call (dialog/serving/encoding.py)
            for source in active:
                _check_deadline(request.deadline, source.name)
                with metrics.stage("search" if source.name == SOURCE_BANK else "generation"):
                    pool.extend(source.candidates(request.context, language, self.pool_k, request.deadline))
            pool, removed = self.hygiene.split(request.context, pool)
            if self.reranker is not None and pool:
                _check_deadline(request.deadline, "rerank")
                ranked = self.reranker.rerank(request.context, pool, explain=request.explain)
            else:
                ranked = bank_first(pool, request.top_k)
        decision = self.explorer.choose(ranked) if self.explorer is not None else None
        if not request.explain:
            for candidate in ranked:
                candidate.stage_scores = {}
                candidate.contributions = {}
        return PipelineResult(ranked[: request.top_k], language, dict(self.versions),
                              removed if request.explain else [], decision=decision)

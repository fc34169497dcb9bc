"""The served ranking of a pool with extra, already-made candidates: would serving pick one of them?

Offline evaluations (`repliq eval prompts --generate N`) generate replies once, then ask what the
served pipeline (bank retrieval, hygiene, the workspace's blender) does when those replies join the
bank candidates. Replaying them through a candidate source keeps the serving path exactly as is: the
pool, the hygiene filter and the reranker are the ones a request meets with generation on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from core.config import Settings
from core.types import SOURCE_GENERATED, Candidate, Context
from dialog.serving.assembly import Assembled, build_pipeline
from dialog.serving.pipeline import PipelineRequest

# Generous: retrieval and reranking of one pool take milliseconds; the replayed replies cost nothing.
REPLAY_DEADLINE_S = 30.0


class ReplaySource:
    """An optional candidate source that hands the pipeline the candidates it was loaded with."""

    name = SOURCE_GENERATED

    def __init__(self) -> None:
        self.pending: list[Candidate] = []

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        return [replace(c, stage_scores=dict(c.stage_scores)) for c in self.pending[:k]]


class PoolRanker:
    """The workspace's serving pipeline (generation off) ranking its own bank pool plus given candidates."""

    def __init__(self, assembled: Assembled) -> None:
        self.assembled = assembled
        self.source = ReplaySource()
        assembled.pipeline.optional_sources = [self.source]
        self.version = assembled.pipeline.versions.get("ranker", "")

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolRanker:
        return cls(build_pipeline(replace(settings, generation=replace(settings.generation, mode="off"))))

    def rank(self, context: Context, language: str, extra: Sequence[Candidate]) -> list[Candidate]:
        """The whole served order (after hygiene) of the bank pool with ``extra`` added."""
        self.source.pending = list(extra)
        try:
            request = PipelineRequest(context, top_k=10_000, deadline=time.monotonic() + REPLAY_DEADLINE_S,
                                      language_hint=language, generate=bool(extra))
            return list(self.assembled.pipeline.respond(request).candidates)
        finally:
            self.source.pending = []

    def close(self) -> None:
        self.assembled.close()

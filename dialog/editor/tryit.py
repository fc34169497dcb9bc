""""Try it": what the bot would answer now (live: approved phrases) beside what it would answer once the
drafts and phrases in review were approved, both through the serving pipeline's ``explain`` path.

Both pipelines share one encoder, index and blender (the one the server would load); the draft side adds
a candidate source over the not-yet-approved phrases, encoded on the fly and cached per phrase version.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from core.bank.store import PhraseBank
from core.types import SOURCE_BANK, Candidate, Context, Turn

if TYPE_CHECKING:
    from core.config import Settings
    from dialog.editor.semantic import MeaningSearch
    from dialog.serving.pipeline import Pipeline, PipelineResult

DRAFT_STATUSES = ("draft", "in_review")
MAX_TURNS = 10
TIMEOUT_S = 30.0


class DraftSource:
    """``CandidateSource`` over the bank's drafts and phrases in review (what approving them would add)."""

    name = SOURCE_BANK

    def __init__(self, bank: PhraseBank, encoder: Any, context_turns: int) -> None:
        self.bank, self.encoder, self.context_turns = bank, encoder, context_turns
        self._vectors: dict[tuple[int, int], np.ndarray] = {}

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        drafts = [p for status in DRAFT_STATUSES for p in self.bank.phrases(status=status, language=language)]
        query = context.as_query_text(self.context_turns)
        if not drafts or not query.strip() or k <= 0:
            return []
        missing = [p for p in drafts if (p.id, p.version) not in self._vectors]
        if missing:
            for phrase, vector in zip(missing, self.encoder.encode_passages([p.text for p in missing]), strict=True):
                self._vectors[(phrase.id, phrase.version)] = vector
        matrix = np.stack([self._vectors[(p.id, p.version)] for p in drafts])
        scores = matrix @ self.encoder.encode_queries([query])[0]
        order = np.argsort(-scores)[:k]
        return [Candidate(text=drafts[i].text, source=SOURCE_BANK, language=language, phrase_id=drafts[i].id,
                          score=float(scores[i]), stage_scores={"retrieval": float(scores[i]), "draft": 1.0})
                for i in order]


class TryIt:
    def __init__(self, settings: Settings, bank: PhraseBank, meaning: MeaningSearch) -> None:
        self.settings, self.bank, self.meaning = settings, bank, meaning
        self._built: tuple[int, Pipeline, Pipeline] | None = None
        self._lock = threading.Lock()

    def _pipelines(self) -> tuple[Pipeline, Pipeline]:
        from dialog.serving.pipeline import Pipeline
        from retriever.bank_retriever import BankRetriever
        from rl.blender_setup import load_blender

        index = self.meaning.index()
        with self._lock:
            if self._built is None or self._built[0] != index.manifest.bank_revision:
                encoder = self.meaning.encoder
                turns = self.settings.retrieval.context_turns
                live = BankRetriever(encoder, index, self.bank, context_turns=turns)
                blender = load_blender(self.settings, encoder, index)
                versions = {"bank": str(index.manifest.bank_revision), "index": index.manifest.checksum[:12],
                            "ranker": blender.version if blender is not None else "bank-first"}
                pool_k = self.settings.retrieval.pool_k
                self._built = (index.manifest.bank_revision,
                               Pipeline([live], pool_k=pool_k, reranker=blender, versions=versions),
                               Pipeline([live, DraftSource(self.bank, encoder, turns)], pool_k=pool_k,
                                        reranker=blender, versions={**versions, "drafts": "included"}))
            return self._built[1], self._built[2]

    def compare(self, turns: list[str], language: str = "", top_k: int = 5) -> tuple[PipelineResult, PipelineResult]:
        """(live, with drafts) answers to the dialogue ``turns`` (oldest first, the last is the user's)."""
        from dialog.serving.pipeline import PipelineRequest

        if not turns:
            raise ValueError("dialogue: type at least one turn (one per line)")
        turns = turns[-MAX_TURNS:]
        speakers = ["user" if (len(turns) - i) % 2 else "bot" for i in range(len(turns))]
        context = Context(tuple(Turn(s, t) for s, t in zip(speakers, turns, strict=True)))
        live, draft = self._pipelines()
        results = []
        for pipeline in (live, draft):
            request = PipelineRequest(context, top_k, time.monotonic() + TIMEOUT_S, language_hint=language,
                                      explain=True, generate=False)
            results.append(pipeline.respond(request))
        return results[0], results[1]

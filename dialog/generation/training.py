"""Generated candidates for the blender's training pools: the served generator, run offline on a subset of contexts.

The blender only learns when a generated reply should win if its training pools hold generated replies.
Generation costs ~1-4 s per reply on a CPU, so only a chosen subset of contexts gets them: the
selection is by a hash of the dialogue (the same contexts whatever the batch order or the run), capped
at ``max_contexts``, and each context has its own time budget. The candidates are exactly what serving
would add (same generator, same UPRISE demonstrations when a prompt retriever is trained, same filters),
so they carry ``source = "generated"`` and the generator's stage scores into the blender's features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from core.config import Settings
from core.types import Candidate, Context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingGeneration:
    per_context: int = 2  # generated candidates kept per chosen context (the filters may leave fewer)
    max_contexts: int = 200  # contexts that get generation, at most
    share: float = 1.0  # of the contexts seen, the share eligible (hash-selected), before the cap
    budget_s: float = 4.0  # wall-clock budget per context
    seed: int = 0

    def validate(self) -> None:
        if self.per_context < 1 or self.max_contexts < 0 or not 0.0 < self.share <= 1.0 or self.budget_s <= 0:
            raise ValueError(f"generation for training pools needs per_context >= 1, max_contexts >= 0, "
                             f"0 < share <= 1 and budget_s > 0; got {self}")


@dataclass
class GenerationStats:
    contexts: int = 0  # contexts that got a generation attempt
    candidates: int = 0  # generated candidates that passed the filters and entered a pool
    empty: int = 0  # attempts that produced nothing in time (or nothing that passed the filters)
    zero_shot: int = 0  # attempts whose prompt had no demonstrations
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"contexts": self.contexts, "candidates": self.candidates, "empty": self.empty,
                "zero_shot": self.zero_shot, "seconds": round(self.seconds, 1),
                "seconds_per_context": round(self.seconds / max(self.contexts, 1), 2), "examples": self.examples[:20]}


def _chosen(context: Context, config: TrainingGeneration) -> bool:
    payload = json.dumps([config.seed, [[t.speaker, t.text] for t in context.turns]], ensure_ascii=False)
    return int(hashlib.sha1(payload.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF < config.share


class PoolGenerator:
    """A ``ranker.dataset.GenerateFn``: generated candidates for the chosen contexts, [] for the others."""

    def __init__(self, source: object, config: TrainingGeneration) -> None:
        config.validate()
        self.source, self.config = source, config  # anything with .candidates(context, language, k, deadline)
        self.stats = GenerationStats()
        self._lock = threading.Lock()

    def __call__(self, contexts: list[Context], language: str) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        for context in contexts:
            with self._lock:
                take = self.stats.contexts < self.config.max_contexts and _chosen(context, self.config)
                if take:
                    self.stats.contexts += 1
            out.append(self._generate(context, language) if take else [])
        return out

    def _generate(self, context: Context, language: str) -> list[Candidate]:
        started = time.monotonic()
        found = self.source.candidates(context, language, self.config.per_context,  # type: ignore[attr-defined]
                                       started + self.config.budget_s)
        found = list(found)[:self.config.per_context]
        with self._lock:
            self.stats.seconds += time.monotonic() - started
            self.stats.candidates += len(found)
            self.stats.empty += not found
            self.stats.zero_shot += any(c.stage_scores.get("zero_shot_fallback", 0.0) > 0 for c in found)
            if found and len(self.stats.examples) < 20:
                self.stats.examples.append({"language": language, "last_turn": context.last_text,
                                            "generated": found[0].text})
        return found


def training_generator(settings: Settings, config: TrainingGeneration) -> PoolGenerator:
    """The workspace's generator (its LM, prompt retriever and filters) as a pool generator for training."""
    from dataclasses import replace

    from dialog.generation.source import build_generator

    generation = replace(settings.generation, mode="always" if settings.generation.mode == "off"
                         else settings.generation.mode, n_candidates=max(settings.generation.n_candidates,
                                                                         config.per_context),
                         pmi=True)  # a blender trained with generated replies reads gen_pmi
    source = build_generator(replace(settings, generation=generation))
    if source is None:
        raise ValueError("generation for the blender's pools needs a decoder LM: set [lm] name (e.g. gemma-3-270m) "
                         "and run `repliq models prepare`")
    log.info("generating for training pools with %s", source.version)
    return PoolGenerator(source, config)

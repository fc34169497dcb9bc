"""The generator as served: one model shared by all requests, a per-request time budget.

Two requests sampling on the same 2 CPU cores at once would each run at half speed and both miss
their deadlines, so requests take turns; a request that cannot get its turn in time gets no
generated candidates rather than a late answer.
"""

from __future__ import annotations

import threading
import time

from core.config import GenerationSettings, Settings
from core.lm.wrapper import DecoderLM, LMOptions
from core.types import SOURCE_GENERATED, Candidate, Context
from dialog.generation.generator import GenerationConfig, LMGenerator

GENERATION_MODES = ("off", "on-request", "always")


class SharedGenerator:
    name = SOURCE_GENERATED

    def __init__(self, generator: LMGenerator, budget_s: float) -> None:
        self.generator = generator
        self.budget_s = budget_s
        self._turn = threading.Lock()

    @property
    def version(self) -> str:
        return self.generator.version

    def candidates(self, context: Context, language: str, k: int, deadline: float) -> list[Candidate]:
        deadline = min(deadline, time.monotonic() + self.budget_s)
        if not self._turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return []
        try:
            return self.generator.candidates(context, language, k, deadline)
        finally:
            self._turn.release()


def generation_config(section: GenerationSettings) -> GenerationConfig:
    return GenerationConfig(n_candidates=section.n_candidates, samples_per_call=min(2, section.n_candidates),
                            temperature=section.temperature, top_p=section.top_p,
                            max_new_tokens=section.max_new_tokens)


def build_generator(settings: Settings) -> SharedGenerator | None:
    """The served generator, or None when generation is off or no LM is configured."""
    mode = settings.generation.mode
    if mode not in GENERATION_MODES:
        raise ValueError(f"[generation] mode {mode!r} is not one of {', '.join(GENERATION_MODES)}")
    if mode == "off" or settings.lm.name == "none":
        return None
    options = LMOptions(dtype=settings.lm.dtype, threads=settings.lm.threads or None)
    lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, options)
    return SharedGenerator(LMGenerator(lm, generation_config(settings.generation)), settings.generation.budget_s)

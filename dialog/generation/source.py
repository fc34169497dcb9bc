"""The generator as served: one model shared by all requests, a per-request time budget.

Two requests sampling on the same 2 CPU cores at once would each run at half speed and both miss
their deadlines, so requests take turns; a request that cannot get its turn in time gets no
generated candidates rather than a late answer.
"""

from __future__ import annotations

import threading
import time

from core.artifacts import load_manifest
from core.config import Settings
from core.lm.wrapper import DecoderLM, LMOptions
from core.types import SOURCE_GENERATED, Candidate, Context
from dialog.generation.generator import LMGenerator
from retriever.prompt_pool import POOL_DIR
from retriever.prompt_retriever import RETRIEVER_DIR, PromptRetriever, load_prompt_retriever


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


def build_generator(settings: Settings) -> SharedGenerator | None:
    """The served generator, or None when generation is off or no LM is configured."""
    settings.generation.validate()
    if settings.generation.mode == "off" or settings.lm.name == "none":
        return None
    options = LMOptions(dtype=settings.lm.dtype, threads=settings.lm.threads or None)
    lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir, options)
    prompts, ref = load_prompts(settings)
    return SharedGenerator(LMGenerator(lm, settings.generation, prompts=prompts, prompts_ref=ref),
                           settings.generation.budget_s)


def load_prompts(settings: Settings) -> tuple[PromptRetriever | None, str]:
    """The configured prompt retriever and its reference, or (None, "") for zero-shot prompts.

    "auto" without a trained retriever is zero-shot (said in ``explain``); a configured path that
    cannot be loaded, or one built on another pool or encoder, is an error naming the rebuild command.
    """
    section = settings.generation
    directory = settings.artifact_path(section.prompt_retriever, RETRIEVER_DIR)
    if section.demonstrations == 0 or directory is None:
        return None, ""
    from dataclasses import replace

    from retriever.encoder import Encoder
    from retriever.prompt_pool import load_pool

    load_manifest(directory, "prompt-retriever")  # kind and format first: a clearer error than the pool's
    # The pool sits beside the retriever (the workspace's artifacts, or the configured directory's parent).
    pool_dir = directory.parent / POOL_DIR
    pool, _ = load_pool(pool_dir)
    # The base encoder: the prompt adapter maps its query vectors, never the response adapter's.
    encoder = Encoder.from_config(replace(settings, encoder=replace(settings.encoder, adapter="none")))
    retriever, manifest = load_prompt_retriever(directory, pool, encoder)
    return retriever, manifest.ref

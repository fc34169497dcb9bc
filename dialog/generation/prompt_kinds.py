"""Generation with demonstrations chosen outside the generator: one prompt kind (UPRISE, BM25, random, none) at a time.

`repliq eval prompts --generate N` asks how the *replies* differ by prompt kind, not only the gold
reply's log-probability. The served generator (its LM, sampling settings and filters) is reused as is;
only its demonstration source is swapped for the kind's precomputed choice, and a counting filter
records how many samples were drawn and how many passed, so the pass share comes from the very
filter serving applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.config import Settings
from core.lm.wrapper import DecoderLM, LMOptions
from core.types import Candidate, Context
from dialog.generation.filters import FilterResult, ReplyFilter
from dialog.generation.generator import LMGenerator
from retriever.prompt_pool import Demonstration


class FixedDemos:
    """A demonstration source that returns the given demonstrations (best first) for any dialogue."""

    def __init__(self, demos: Sequence[Demonstration]) -> None:
        self.demos = list(demos)

    def retrieve(self, context: Context, language: str, k: int) -> list[Demonstration]:
        return self.demos[:k]


class CountingFilter(ReplyFilter):
    """The serving filter, also counting what it was shown and what it kept (for the pass share)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.kept = 0
        self.reasons: dict[str, int] = {}

    def apply(self, replies: Sequence[str], context: Context, language: str) -> FilterResult:
        result = super().apply(replies, context, language)
        self.seen += len(replies)
        self.kept += len(result.kept)
        for why in result.dropped.values():
            self.reasons[why] = self.reasons.get(why, 0) + 1
        return result


@dataclass(frozen=True)
class Attempt:
    sampled: int  # finished samples the filter saw
    kept: list[Candidate]  # what passed, as serving would add them to the pool (best first)
    dropped: dict[str, int]  # filter reason -> count


class KindGenerator:
    """``(context, language, demonstrations, deadline) -> Attempt`` with the workspace's generator settings."""

    def __init__(self, lm: DecoderLM, settings: Settings, k: int) -> None:
        self.lm = lm
        # gen_pmi too: the replies are cached and may be re-ranked later by a blender that reads it.
        self.config = replace(settings.generation, demonstrations=k, pmi=True)
        self.version = lm.lm_id

    @classmethod
    def from_settings(cls, settings: Settings, k: int, threads: int = 1) -> KindGenerator:
        if settings.lm.name == "none":
            raise ValueError("generation by prompt kind needs a decoder LM: set [lm] name (e.g. gemma-3-270m)")
        lm = DecoderLM.from_cache(settings.lm.name, settings.models_dir,
                                  LMOptions(dtype=settings.lm.dtype, threads=threads))
        return cls(lm, settings, k)

    def __call__(self, context: Context, language: str, demos: Sequence[Demonstration], deadline: float) -> Attempt:
        counting = CountingFilter()
        # With no demonstrations the prompt is plain zero-shot ("none"), not a fallback.
        config = self.config if demos else replace(self.config, demonstrations=0)
        generator = LMGenerator(self.lm, config, reply_filter=counting, prompts=FixedDemos(demos) if demos else None)
        kept = generator.candidates(context, language, self.config.n_candidates, deadline)
        return Attempt(counting.seen, kept, dict(counting.reasons))

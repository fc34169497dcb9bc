"""Cheap surface facts: length, question form and where the candidate came from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import SOURCE_GENERATED, Candidate, Context
from ranker.annotator_base import Annotator, register, tokens

# A question either ends with "?" or opens with one of these (the mark is often dropped in chat).
_OPENERS = (
    "what why how who whom whose where when which do does did are is was were can could would will "
    "should shall have has may "
    "что чего чем почему зачем как кто кого кому где куда откуда когда какой какая какое какие каков "
    "сколько разве неужели чей чья чьё"
)
QUESTION_OPENERS = frozenset(_OPENERS.split())


def is_question(text: str) -> bool:
    stripped = text.rstrip()
    if stripped.endswith("?"):
        return True
    words = tokens(text)
    return bool(words) and (words[0] in QUESTION_OPENERS or "ли" in words[1:3])


@register
class SurfaceAnnotator(Annotator):
    name = "surface"
    version = "1"
    feature_names = ("len_chars", "len_words", "is_question", "context_is_question", "source_generated")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        out[:, 3] = float(is_question(context.last_text)) if context.turns else np.nan
        for i, cand in enumerate(candidates):
            out[i, 0] = len(cand.text)
            out[i, 1] = len(tokens(cand.text))
            out[i, 2] = float(is_question(cand.text))
            out[i, 4] = float(cand.source == SOURCE_GENERATED)
        return out

"""Is the candidate in the language it claims (the one requested) and in the user's language?

A bank candidate's ``language`` is the language the retriever was asked for, so comparing it with the
script of the text catches mislabelled phrases; the context comparison catches a user who switched
language mid-conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from core.text import detect_language
from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register


@lru_cache(maxsize=65536)
def _detect(text: str) -> str:
    """Cached: bank phrases recur across requests, and detection walks every character."""
    return detect_language(text, default="")


@register
class LanguageAnnotator(Annotator):
    name = "language"
    version = "1"
    feature_names = ("lang_match_requested", "lang_match_context")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        context_lang = _detect(context.last_text) if context.turns else ""
        for i, cand in enumerate(candidates):
            detected = _detect(cand.text)
            if not detected:  # digits, emoji, punctuation: no script evidence either way
                continue
            if cand.language:
                out[i, 0] = float(detected == cand.language)
            if context_lang:
                out[i, 1] = float(detected == context_lang)
        return out

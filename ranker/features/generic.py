"""Generic replies: relevant to almost anything and therefore specific to nothing ("ага", "i agree").

Two signals. ``generic_phrase``: the reply is one of the patterns below, optionally followed by at most
two more words ("i agree with you"). ``generic_highfreq``: a short reply made only of very common
words (all NIDF below a threshold), which catches generic phrasings the list does not name; it needs
the IDF table and is NaN without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register, tokens

GENERIC_PATTERNS: dict[str, tuple[str, ...]] = {
    "en": (
        "i agree", "i totally agree", "agreed", "i don't know", "i dont know", "dunno", "no idea",
        "ok", "okay", "k", "sure", "yes", "yeah", "yep", "no", "nope", "maybe", "right", "true",
        "cool", "nice", "great", "good", "lol", "haha", "hmm", "i see", "me too", "same", "interesting",
        "that's nice", "that's cool", "that's great", "that's interesting", "i guess", "not sure",
        "thanks", "thank you", "oh", "wow", "really",
    ),
    "ru": (
        "я согласен", "я согласна", "согласен", "согласна", "полностью согласен", "не знаю", "я не знаю",
        "без понятия", "ага", "угу", "ок", "окей", "ладно", "хорошо", "да", "нет", "может быть",
        "возможно", "наверное", "понятно", "ясно", "круто", "класс", "интересно", "хм", "ну да",
        "конечно", "спасибо", "ого", "правда", "точно", "я тоже", "и я", "смешно", "ха ха", "ахах",
    ),
}
EXTRA_WORDS = 2
HIGHFREQ_MAX_WORDS = 5
HIGHFREQ_MAX_NIDF = 0.3


def _index(patterns: Iterable[str]) -> dict[str, list[tuple[str, ...]]]:
    """Patterns by first word, so a candidate is compared only with patterns that could match."""
    index: dict[str, list[tuple[str, ...]]] = {}
    for pattern in patterns:
        words = tokens(pattern)
        index.setdefault(words[0], []).append(words)
    return index


_BY_LANGUAGE = {lang: _index(patterns) for lang, patterns in GENERIC_PATTERNS.items()}
_ANY_LANGUAGE = _index(p for patterns in GENERIC_PATTERNS.values() for p in patterns)


def is_generic(text: str, language: str | None = None) -> bool:
    """Starts with a generic pattern of ``language`` (any language if unknown) and adds at most two words."""
    words = tokens(text)
    if not words:
        return False
    index = _BY_LANGUAGE.get(language or "", _ANY_LANGUAGE)
    return any(
        words[: len(p)] == p and len(words) <= len(p) + EXTRA_WORDS for p in index.get(words[0], ())
    )


@register
class GenericAnnotator(Annotator):
    name = "generic"
    version = "1"
    feature_names = ("generic_phrase", "generic_highfreq")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        idf = self.resources.idf
        for i, cand in enumerate(candidates):
            out[i, 0] = float(is_generic(cand.text, cand.language))
            words = tokens(cand.text)
            if idf is not None and words:
                out[i, 1] = float(
                    len(words) <= HIGHFREQ_MAX_WORDS and idf.nidf_stats(words)[1] < HIGHFREQ_MAX_NIDF
                )
        return out

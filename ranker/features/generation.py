"""The generator's own LM evidence for generated candidates; bank phrases get NaN (opt-in, not a default annotator).

``gen_logprob`` is the mean log-probability of the reply given the generation prompt (retrieved
demonstrations + dialogue) and ``gen_pmi`` that minus its mean log-probability on its own
(``dialog.generation.generator``). Both come from the candidate's ``stage_scores``, computed while
generating, so serving pays nothing extra here. Bank phrases were never generated: NaN, which the
blender learns to read as "not generated", beside ``source_generated``.

Opt-in so that adding it changes no existing blender: a blender's annotators are the ones its manifest
names, and only a blender trained with generated candidates in its pools lists this one
(``GENERATION_ANNOTATORS``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import SOURCE_GENERATED, Candidate, Context
from ranker.annotator_base import Annotator, register

# What a blender trained with generated candidates adds to the default annotators.
GENERATION_ANNOTATORS: tuple[str, ...] = ("generation",)


@register
class GenerationAnnotator(Annotator):
    name = "generation"
    version = "1"
    feature_names = ("gen_logprob", "gen_pmi")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        for i, cand in enumerate(candidates):
            if cand.source == SOURCE_GENERATED:
                for j, key in enumerate(self.feature_names):
                    value = cand.stage_scores.get(key, np.nan)
                    out[i, j] = value if np.isfinite(value) else np.nan
        return out

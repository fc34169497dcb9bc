"""Decoder-LM evidence: how natural a reply is after the context (conditional log-prob), how much the
context explains it beyond its own frequency (PMI), and how fluent it is on its own (unconditional).

All three are optional: without a scorer or a cached score table the columns are NaN, and the
blender still works on the remaining features. The cached table is ``phrase_id -> mean log-prob``,
e.g. ``{pid: s.mean_logprob for pid, s in core.lm.bank_scores.load_bank_scores(bank, lm_id).items()}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.types import Candidate, Context
from ranker.annotator_base import Annotator, register


@register
class LMAnnotator(Annotator):
    name = "lm"
    version = "1"
    feature_names = ("lm_cond_logprob", "lm_pmi", "lm_uncond_logprob")

    def annotate_pool(self, context: Context, candidates: Sequence[Candidate]) -> np.ndarray:
        out = self.empty(len(candidates))
        table = self.resources.lm_unconditional
        if table is not None:
            for i, cand in enumerate(candidates):
                if cand.phrase_id is not None and cand.phrase_id in table:
                    out[i, 2] = table[cand.phrase_id]
        scorer = self.resources.lm_scorer
        if scorer is None or not candidates:
            return out
        window = context.window(self.resources.context_turns)
        scores = scorer.score(window, [c.text for c in candidates])
        if len(scores) != len(candidates):
            raise RuntimeError(f"LM scorer returned {len(scores)} scores for {len(candidates)} candidates")
        for i, row in enumerate(scores):
            out[i, 0] = row.get("cond_logprob", np.nan)
            if np.isnan(out[i, 2]):
                out[i, 2] = row.get("uncond_logprob", np.nan)
            out[i, 1] = row.get("pmi", out[i, 0] - out[i, 2])
        return out


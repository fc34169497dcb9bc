"""Teacher definitions beyond the raw LM-score candidates: length-residualized surprisal and 1 − perplexity.

``rl.teacher.CANDIDATES`` maps one reply's LM scores to a number. Two definitions the teacher study
(``repliq eval teachers``) adds need more than that:

* ``uncond_surprisal_resid`` — −log p(r) minus what the reply's length predicts, by a per-language
  :class:`LengthModel` fitted on training replies (for the proxy: on the bank's own stored scores). The
  fitted coefficients travel with the proxy (``metrics.teacher.length_model`` of its manifest), so the RL
  judge applies the very same definition.
* ``one_minus_ppl`` — 1 − perplexity of the reply alone: the seed's "interestingness" idea.

:func:`teacher_values_for` computes any definition, :func:`judge_scorer` builds the RL judge's teacher
for a loaded proxy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.lm.scoring import ReplyScore
from core.types import Context
from rl.teacher import CANDIDATES, CONDITIONAL, TeacherCache, bank_reply_scores, score_with_cache, teacher_values

POOLED = "*"
RESIDUALIZED = "uncond_surprisal_resid"
EXTENDED = (RESIDUALIZED, "one_minus_ppl")
DEFINITIONS = (*CANDIDATES, *EXTENDED)


def _design(n_tokens: np.ndarray) -> np.ndarray:
    n = np.asarray(n_tokens, dtype=np.float64)
    return np.column_stack([np.ones_like(n), n, np.log1p(n)])


@dataclass(frozen=True)
class LengthModel:
    """Per-language least squares of −log p(r) on (1, tokens, log(1 + tokens)); ``"*"`` pools all languages
    and serves any language the fit did not see."""

    coefficients: dict[str, tuple[float, float, float]]

    @classmethod
    def fit(cls, surprisal: np.ndarray, n_tokens: np.ndarray, languages: Sequence[str],
            min_rows: int = 30) -> LengthModel:
        surprisal, n_tokens = np.asarray(surprisal, np.float64), np.asarray(n_tokens, np.float64)
        ok = np.isfinite(surprisal) & (n_tokens > 0)
        if ok.sum() < min_rows:
            raise ValueError(f"the length model needs at least {min_rows} scored train replies, got {int(ok.sum())}")
        langs = np.asarray(languages)
        out: dict[str, tuple[float, float, float]] = {}
        for language in [POOLED, *sorted(set(langs.tolist()))]:
            rows = ok if language == POOLED else ok & (langs == language)
            if rows.sum() >= min_rows:
                coef, *_ = np.linalg.lstsq(_design(n_tokens[rows]), surprisal[rows], rcond=None)
                out[language] = (float(coef[0]), float(coef[1]), float(coef[2]))
        return cls(out)

    def predict(self, n_tokens: np.ndarray, languages: Sequence[str]) -> np.ndarray:
        x = _design(n_tokens)
        coef = np.array([self.coefficients.get(lang, self.coefficients[POOLED]) for lang in languages])
        return np.einsum("ij,ij->i", x, coef) if len(coef) else np.zeros(0)

    def residual(self, scores: Sequence[ReplyScore], languages: Sequence[str]) -> np.ndarray:
        surprisal = np.array([-s.unconditional.sum_logprob for s in scores], dtype=np.float64)
        n = np.array([s.unconditional.n_tokens for s in scores], dtype=np.float64)
        return surprisal - self.predict(n, languages)

    def to_json(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.coefficients.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[float]]) -> LengthModel:
        if POOLED not in data:
            raise ValueError("a saved length model needs its pooled '*' row; refit it with `repliq eval teachers`")
        return cls({k: (float(v[0]), float(v[1]), float(v[2])) for k, v in data.items()})


def one_minus_ppl(scores: Sequence[ReplyScore]) -> np.ndarray:
    return np.array([1.0 - math.exp(-s.unconditional.mean_logprob) for s in scores], dtype=np.float64)


def teacher_values_for(scores: Sequence[ReplyScore], definition: str, languages: Sequence[str],
                       length_model: LengthModel | None = None) -> np.ndarray:
    """Any teacher definition of :data:`DEFINITIONS`; the residualized one needs its fitted ``length_model``."""
    if definition == RESIDUALIZED:
        if length_model is None:
            raise ValueError(f"teacher {RESIDUALIZED!r} needs its length model: fit one on training replies "
                             "(`repliq train reward --kind specificity` does, on the bank)")
        return length_model.residual(scores, languages)
    if definition == "one_minus_ppl":
        return one_minus_ppl(scores)
    if definition not in CANDIDATES:
        raise ValueError(f"unknown teacher definition {definition!r}; use one of {', '.join(DEFINITIONS)}")
    return teacher_values(scores, definition)


def length_model_of(proxy_manifest: Mapping[str, Any]) -> LengthModel | None:
    """The length model a proxy's teacher was residualized with (None for other definitions)."""
    saved = ((proxy_manifest.get("metrics") or {}).get("teacher") or {}).get("length_model")
    return LengthModel.from_json(saved) if saved else None


def judge_scorer(lm: Any, definition: str, cache: TeacherCache | None, length_model: LengthModel | None = None,
                 context_turns: int = 3) -> Callable[[Sequence[Context], Sequence[str]], np.ndarray]:
    """The teacher as ``(contexts, texts) -> values`` for judging RL runs, for every definition."""
    from core.text import detect_language

    if definition not in DEFINITIONS:
        raise ValueError(f"unknown teacher definition {definition!r}; use one of {', '.join(DEFINITIONS)}")

    def score(contexts: Sequence[Context], texts: Sequence[str]) -> np.ndarray:
        languages = [detect_language(t) for t in texts]
        paired = [c if definition in CONDITIONAL else None for c in contexts]
        scores = score_with_cache(lm, paired, list(texts), languages, cache, context_turns=context_turns)
        return teacher_values_for(scores, definition, languages, length_model)

    return score


def bank_teacher_targets(bank: Any, lm_id: str, definition: str
                         ) -> tuple[list[str], list[str], np.ndarray, LengthModel | None]:
    """``(texts, languages, values, length model)`` of approved bank phrases from their stored LM scores.

    The bank holds training phrases, so the residualized definition fits its length model right here.
    """
    phrases, scores = bank_reply_scores(bank, lm_id, definition)
    languages = [p.language for p in phrases]
    length_model = None
    if definition == RESIDUALIZED:
        surprisal = np.array([-s.unconditional.sum_logprob for s in scores])
        tokens = np.array([s.unconditional.n_tokens for s in scores], dtype=np.float64)
        length_model = LengthModel.fit(surprisal, tokens, languages)
    values = teacher_values_for(scores, definition, languages, length_model)
    return [p.text for p in phrases], languages, values, length_model

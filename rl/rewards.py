"""The total reward for RL: SSA-like, relevance gates specificity.

Forms (``RewardConfig.form``):

* ``gated`` (default)   relevance × (1 + λ·σ(z_spec)). Relevance is a probability in (0, 1); z_spec is the
                        specificity standardized over the reference set and squashed by the logistic σ into
                        (0, 1), so the bracket never turns negative: the reward rises with both parts, and an
                        irrelevant reply earns ~0 however rare its words are (Meena: not sensible ⇒ not specific).
* ``additive``          z(relevance logit) + λ·z_spec: a trade-off; a rare-word reply can buy back missing relevance.
* ``specificity_only``  z_spec: the ungated ablation, to show what the gate prevents.

The raw total is then standardized over the same reference set (WebGPT), so "0" means "as good as the
reference average" and one β means the same trade-off whichever reward model is plugged in.

Specificity is standardized per language by default (``standardize="per_language"``, when the caller
says each row's language): LM surprisal has a different scale in each language, so with one pooled
scale every Russian candidate could sit far above the mean, σ(z) saturate near 1 for all of them, and
the specificity term stop telling Russian candidates apart.
Statistics are fitted once (:meth:`RewardModel.fit_reference`) and frozen, then saved with the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from core.job_configs import RewardConfig
from core.types import Context
from rl.standardize import RewardStandardizer

# (contexts, texts) -> (raw specificity, disagreement in raw units; zeros for a single model or the teacher)
SpecificityFn = Callable[[Sequence[Context], Sequence[str]], tuple[np.ndarray, np.ndarray]]


class RelevanceScorer(Protocol):
    def score(self, contexts: Sequence[Context], texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class RewardParts:
    total: np.ndarray  # standardized total reward
    relevance: np.ndarray  # probability the reply fits
    specificity: np.ndarray  # standardized specificity (z)
    disagreement: np.ndarray  # ensemble sd, in the same z units as ``specificity``


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def proxy_specificity(proxy: Any) -> SpecificityFn:
    """Adapter for ``rl.proxy.ProxyEnsemble`` (phrase or pair inputs)."""

    def specificity(contexts: Sequence[Context], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        pair = proxy.config.inputs == "pair"
        return proxy.score_with_disagreement(list(texts), list(contexts) if pair else None)

    return specificity


def teacher_specificity(scorer: Callable[[Sequence[Context], Sequence[str]], np.ndarray]) -> SpecificityFn:
    """Adapter for ``rl.teacher.TeacherScorer``: the teacher has no disagreement."""

    def specificity(contexts: Sequence[Context], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(scorer(contexts, texts), dtype=np.float64)
        return values, np.zeros_like(values)

    return specificity


class RewardModel:
    def __init__(self, relevance: RelevanceScorer, specificity: SpecificityFn, config: RewardConfig | None = None,
                 standardizers: Mapping[str, RewardStandardizer] | None = None) -> None:
        self.config = config or RewardConfig()
        self.config.validate()
        self.relevance, self.specificity = relevance, specificity
        self.standardizers: dict[str, RewardStandardizer] = dict(standardizers or {})

    def _raw(self, contexts: Sequence[Context], texts: Sequence[str]) -> tuple[np.ndarray, ...]:
        if len(contexts) != len(texts):
            raise ValueError(f"got {len(contexts)} contexts for {len(texts)} candidate texts")
        relevance = np.asarray(self.relevance.score(contexts, texts), dtype=np.float64)
        spec, spread = (np.asarray(a, dtype=np.float64) for a in self.specificity(contexts, texts))
        for name, values in (("relevance", relevance), ("specificity", spec), ("disagreement", spread)):
            if values.shape != (len(texts),):
                raise ValueError(f"{name} scorer returned shape {values.shape} for {len(texts)} candidates")
            if not np.isfinite(values).all():
                raise ValueError(f"{name} scorer returned NaN or infinity for {int((~np.isfinite(values)).sum())} "
                                 "candidates; check that its model loaded and every text is non-empty")
        return relevance, spec, spread

    def _combine(self, relevance: np.ndarray, spec_z: np.ndarray) -> np.ndarray:
        form, lam = self.config.form, self.config.lam
        if form == "gated":
            return relevance * (1.0 + lam / (1.0 + np.exp(-spec_z)))
        if form == "additive":
            return self.standardizers["relevance_logit"].transform(_logit(relevance)) + lam * spec_z
        return spec_z

    def _spec_z(self, spec: np.ndarray, languages: Sequence[str] | None) -> np.ndarray:
        """Each row on its language's scale when one was fitted for it, else on the pooled one."""
        z = self.standardizers["specificity"].transform(spec)
        if languages is None:
            return z
        languages = np.asarray(languages)
        for language in set(languages.tolist()):
            own = self.standardizers.get(f"specificity@{language}")
            if own is not None:
                mask = languages == language
                z[mask] = own.transform(spec[mask])
        return z

    def _check_languages(self, languages: Sequence[str] | None, n: int) -> None:
        if languages is not None and len(languages) != n:
            raise ValueError(f"got {len(languages)} languages for {n} candidate texts")

    def fit_reference(self, contexts: Sequence[Context], texts: Sequence[str],
                      languages: Sequence[str] | None = None) -> RewardModel:
        """Freeze the standardization on a reference pool (e.g. π_ref's candidates on train contexts).

        ``languages`` (one per row) turns on per-language specificity scales when the config asks for them.
        """
        self._check_languages(languages, len(texts))
        relevance, spec, _ = self._raw(contexts, texts)
        self.standardizers = {"specificity": RewardStandardizer.fit(spec, "specificity"),
                              "relevance_logit": RewardStandardizer.fit(_logit(relevance), "relevance_logit")}
        if languages is not None and self.config.standardize == "per_language":
            by_language = np.asarray(languages)
            for language in sorted(set(by_language.tolist())):
                mask = by_language == language
                if mask.sum() >= 2 and np.std(spec[mask]) > 0:
                    name = f"specificity@{language}"
                    self.standardizers[name] = RewardStandardizer.fit(spec[mask], name)
        raw_total = self._combine(relevance, self._spec_z(spec, languages))
        self.standardizers["total"] = RewardStandardizer.fit(raw_total, f"total_{self.config.form}")
        return self

    def rewards(self, contexts: Sequence[Context], texts: Sequence[str],
                languages: Sequence[str] | None = None) -> RewardParts:
        missing = {"specificity", "relevance_logit", "total"} - set(self.standardizers)
        if missing:
            raise ValueError("the reward is not standardized yet: call fit_reference() on a reference pool first "
                             "(or load the standardizers saved with the run)")
        self._check_languages(languages, len(texts))
        relevance, spec, spread = self._raw(contexts, texts)
        spec_z = self._spec_z(spec, languages)
        total = self.standardizers["total"].transform(self._combine(relevance, spec_z))
        # The spread on the same scale as each row's z: divide by that row's sd.
        scale = self._spec_z(spec + 1.0, languages) - spec_z
        return RewardParts(total, relevance, spec_z, spread * scale)

    def pool_rewards(self, contexts: Sequence[Context], texts: Sequence[str], group_sizes: np.ndarray,
                     languages: Sequence[str] | None = None) -> RewardParts:
        """Rewards for candidate pools: ``contexts`` (and ``languages``) one per group, ``texts`` one per candidate."""
        sizes = np.asarray(group_sizes, dtype=np.int64)
        if len(sizes) != len(contexts) or (sizes < 0).any() or int(sizes.sum()) != len(texts):
            raise ValueError(f"group sizes (sum {int(sizes.sum())}, {len(sizes)} groups) do not match "
                             f"{len(contexts)} contexts and {len(texts)} candidate texts")
        rows = [ctx for ctx, n in zip(contexts, sizes, strict=True) for _ in range(int(n))]
        row_languages = None if languages is None else [lang for lang, n in zip(languages, sizes, strict=True)
                                                        for _ in range(int(n))]
        return self.rewards(rows, texts, row_languages)

    def dataset_rewards(self, dataset: Any, contexts_by_id: Mapping[str, Context],
                        languages_by_id: Mapping[str, str] | None = None) -> RewardParts:
        """Rewards for a ``ranker.dataset.RankingDataset`` (which stores context ids, not contexts)."""
        missing = [cid for cid in dataset.context_ids if cid not in contexts_by_id]
        if missing:
            raise ValueError(f"{len(missing)} dataset contexts have no Context (e.g. {missing[0]!r}); "
                             "build contexts_by_id from the same corpus pairs the dataset was built from")
        contexts = [contexts_by_id[cid] for cid in dataset.context_ids]
        languages = None if languages_by_id is None else [languages_by_id[cid] for cid in dataset.context_ids]
        return self.pool_rewards(contexts, list(dataset.texts), dataset.group_sizes, languages)

    def state(self) -> dict[str, Any]:
        """Config plus frozen statistics, for a run report; rebuild with :meth:`from_state`."""
        return {"config": asdict(self.config), "standardizers": {k: asdict(v) for k, v in self.standardizers.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], relevance: RelevanceScorer,
                   specificity: SpecificityFn) -> RewardModel:
        try:
            config = RewardConfig(**state["config"])
            standardizers = {k: RewardStandardizer(**v) for k, v in state["standardizers"].items()}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved reward state ({exc}); refit with fit_reference()") from exc
        return cls(relevance, specificity, config, standardizers)

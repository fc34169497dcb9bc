"""The total reward: form arithmetic, the relevance gate, frozen standardization, pools, NaN refusal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from core.types import Context, Turn
from rl.rewards import RewardConfig, RewardModel, teacher_specificity


class TableRelevance:
    """Relevance looked up by reply text (the context is ignored in these tests)."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    def score(self, contexts: Sequence[Context], texts: Sequence[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts])


def table_specificity(table: dict[str, float]):  # type: ignore[no-untyped-def]
    return teacher_specificity(lambda contexts, texts: np.array([table[t] for t in texts]))


CTX = Context((Turn("u", "The weather is great today!"),))
RELEVANCE = {"ok": 0.9, "walk to the fountain?": 0.85, "mitochondria synthesize ATP": 0.02, "sure": 0.7,
             "let's take the bikes": 0.8}
SPECIFICITY = {"ok": 2.0, "walk to the fountain?": 20.0, "mitochondria synthesize ATP": 40.0, "sure": 3.0,
               "let's take the bikes": 18.0}
TEXTS = list(RELEVANCE)


def model(form: str, lam: float = 1.0) -> RewardModel:
    reward = RewardModel(TableRelevance(RELEVANCE), table_specificity(SPECIFICITY), RewardConfig(form=form, lam=lam))
    return reward.fit_reference([CTX] * len(TEXTS), TEXTS)


def test_gate_keeps_rare_words_from_winning() -> None:
    gated = model("gated").rewards([CTX] * len(TEXTS), TEXTS)
    ungated = model("specificity_only").rewards([CTX] * len(TEXTS), TEXTS)
    assert TEXTS[int(np.argmax(ungated.total))] == "mitochondria synthesize ATP"
    assert TEXTS[int(np.argmax(gated.total))] == "walk to the fountain?"
    assert gated.total[TEXTS.index("mitochondria synthesize ATP")] == gated.total.min()
    # Among relevant replies the specific one beats the generic one.
    assert gated.total[TEXTS.index("walk to the fountain?")] > gated.total[TEXTS.index("ok")]


def test_gated_formula_and_standardization() -> None:
    reward = model("gated", lam=0.5)
    parts = reward.rewards([CTX] * len(TEXTS), TEXTS)
    spec = np.array([SPECIFICITY[t] for t in TEXTS])
    z = (spec - spec.mean()) / spec.std()
    raw = np.array([RELEVANCE[t] for t in TEXTS]) * (1 + 0.5 / (1 + np.exp(-z)))
    np.testing.assert_allclose(parts.specificity, z)
    np.testing.assert_allclose(parts.total, (raw - raw.mean()) / raw.std())
    assert parts.total.mean() == pytest.approx(0.0, abs=1e-12) and parts.total.std() == pytest.approx(1.0)
    np.testing.assert_array_equal(parts.disagreement, 0.0)


def test_additive_form_trades_relevance_for_specificity() -> None:
    parts = model("additive", lam=5.0).rewards([CTX] * len(TEXTS), TEXTS)
    assert TEXTS[int(np.argmax(parts.total))] == "mitochondria synthesize ATP"  # large λ lets rare words buy in
    small = model("additive", lam=0.1).rewards([CTX] * len(TEXTS), TEXTS)
    assert TEXTS[int(np.argmax(small.total))] == "ok"


def test_statistics_are_frozen_after_the_reference_fit() -> None:
    reward = model("gated")
    before = reward.rewards([CTX] * 2, ["ok", "sure"]).total
    again = reward.rewards([CTX] * len(TEXTS), TEXTS).total
    np.testing.assert_allclose(before, again[[TEXTS.index("ok"), TEXTS.index("sure")]])
    restored = RewardModel.from_state(reward.state(), TableRelevance(RELEVANCE), table_specificity(SPECIFICITY))
    np.testing.assert_allclose(restored.rewards([CTX] * len(TEXTS), TEXTS).total, again)


def test_pool_and_dataset_rewards() -> None:
    reward = model("gated")
    other = Context((Turn("u", "hi"),))
    sizes = np.array([2, 3])
    parts = reward.pool_rewards([CTX, other], TEXTS, sizes)
    assert parts.total.shape == (5,) and np.isfinite(parts.total).all()

    @dataclass
    class FakeDataset:
        texts: list[str]
        group_sizes: np.ndarray
        context_ids: list[str]

    data = FakeDataset(TEXTS, sizes, ["a#1", "b#1"])
    np.testing.assert_allclose(reward.dataset_rewards(data, {"a#1": CTX, "b#1": other}).total, parts.total)
    with pytest.raises(ValueError, match="have no Context"):
        reward.dataset_rewards(data, {"a#1": CTX})
    with pytest.raises(ValueError, match="do not match"):
        reward.pool_rewards([CTX], TEXTS, sizes)


def test_nan_and_unfitted_rewards_are_refused() -> None:
    broken = RewardModel(TableRelevance({**RELEVANCE, "ok": float("nan")}), table_specificity(SPECIFICITY))
    with pytest.raises(ValueError, match="relevance scorer returned NaN"):
        broken.fit_reference([CTX] * len(TEXTS), TEXTS)
    unfitted = RewardModel(TableRelevance(RELEVANCE), table_specificity(SPECIFICITY))
    with pytest.raises(ValueError, match="fit_reference"):
        unfitted.rewards([CTX], ["ok"])


@pytest.mark.parametrize("config", [RewardConfig(form="product"), RewardConfig(lam=-1.0),
                                    RewardConfig(specificity="oracle")])
def test_bad_config_is_refused(config: RewardConfig) -> None:
    with pytest.raises(ValueError, match="reward"):
        RewardModel(TableRelevance(RELEVANCE), table_specificity(SPECIFICITY), config)


def test_specificity_is_standardized_per_language() -> None:
    """Russian surprisal on a higher scale than English must not make every Russian reply 'specific'."""
    en = {"ok": 2.0, "sure": 3.0, "walk to the fountain?": 7.0}
    ru = {"ага": 30.0, "да": 31.0, "пойдём к фонтану?": 35.0}
    table = {**en, **ru}
    texts, languages = list(table), ["en"] * len(en) + ["ru"] * len(ru)
    relevance = TableRelevance({t: 0.8 + 0.05 * (i % 3) for i, t in enumerate(table)})  # same pattern per language
    per_language = RewardModel(relevance, table_specificity(table), RewardConfig())
    per_language.fit_reference([CTX] * len(texts), texts, languages)
    parts = per_language.rewards([CTX] * len(texts), texts, languages)
    for lang in ("en", "ru"):
        z = parts.specificity[np.array(languages) == lang]
        assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0)
    # The same pattern within each language earns the same reward: the scale difference is gone.
    assert parts.total[:3] == pytest.approx(parts.total[3:])
    pooled = RewardModel(relevance, table_specificity(table), RewardConfig(standardize="pooled"))
    pooled.fit_reference([CTX] * len(texts), texts, languages)
    flat = pooled.rewards([CTX] * len(texts), texts, languages)
    assert flat.specificity[3:].min() > flat.specificity[:3].max()  # every Russian reply above every English one
    # Rows without a language, or of a language never seen, fall back to the pooled scale.
    fallback = per_language.rewards([CTX], ["ага"], ["uk"])
    assert fallback.specificity[0] == pytest.approx(flat.specificity[3])
    with pytest.raises(ValueError, match="languages"):
        per_language.rewards([CTX] * 2, ["ok", "да"], ["en"])
    with pytest.raises(ValueError, match="standardize"):
        RewardConfig(standardize="by-moon").validate()

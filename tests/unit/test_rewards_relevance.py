"""Relevance model machinery on a tiny random encoder: negatives come from other conversations, held-out
metrics are per language, a planted signal is learned, artifacts refuse a foreign encoder."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from core.corpora import ContextPair
from core.types import Context, Turn
from retriever.encoder import Encoder
from rl.artifacts import RewardModelError
from rl.relevance import (
    RelevanceConfig,
    build_relevance_data,
    load_relevance_model,
    relevance_metrics,
    train_relevance_model,
)

from tiny_models import build_tiny_encoder

TOPICS = {"en": ["cats purr", "jazz trumpet", "pizza oven", "marathon knees", "thesis defense", "bread yeast"],
          "ru": ["кот мурчит", "джаз труба", "пицца печь", "марафон колени", "диплом защита", "хлеб дрожжи"]}


def planted_pairs(n: int, seed: int) -> list[ContextPair]:
    """The gold reply repeats its context's topic words; other conversations are about other topics."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        language = "en" if i % 2 == 0 else "ru"
        topic = rng.choice(TOPICS[language])
        context = Context((Turn("u", f"{topic} {topic}"),))
        out.append(ContextPair(f"c{i}#1", f"conv{seed}-{i}", language, context, f"{topic} indeed", {}))
    return out


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoder]:
    root = tmp_path_factory.mktemp("enc")
    return {"main": Encoder(build_tiny_encoder(root / "main", seed=0), device="cpu"),
            "other": Encoder(build_tiny_encoder(root / "other", model_id="other-encoder", seed=3), device="cpu")}


def test_negatives_come_from_other_conversations_of_the_same_language(encoders: dict[str, Encoder]) -> None:
    pairs = planted_pairs(40, 0)
    pairs[1] = ContextPair("c1#1", pairs[0].conversation_id, "ru", pairs[1].context, pairs[1].response, {})
    data = build_relevance_data(pairs, encoders["main"], RelevanceConfig(random_negatives=2, hard_negatives=1))
    assert data.kinds.count("gold") == 40 and data.kinds.count("random") == 80 and data.kinds.count("hard") == 40
    for row, kind in enumerate(data.kinds):
        anchor, source = int(data.anchors[row]), int(data.sources[row])
        assert data.labels[row] == (1.0 if kind == "gold" else 0.0)
        if kind == "gold":
            assert anchor == source
        else:
            assert pairs[source].conversation_id != pairs[anchor].conversation_id
            assert pairs[source].language == pairs[anchor].language
        if kind == "hard":  # among the 10 nearest allowed replies by the encoder's cosine
            allowed = [j for j, p in enumerate(pairs) if p.language == pairs[anchor].language
                       and p.conversation_id != pairs[anchor].conversation_id
                       and p.response != pairs[anchor].response]  # the same text is never a negative
            sims = data.passages[allowed] @ data.queries[anchor]
            assert data.passages[source] @ data.queries[anchor] >= np.sort(sims)[-10] - 1e-6


def test_planted_relevance_is_learned_and_reported_per_language(encoders: dict[str, Encoder]) -> None:
    model, metrics = train_relevance_model(None, planted_pairs(160, 1), None, seed=0, encoder=encoders["main"],
                                           config=RelevanceConfig(head="logistic"))
    held = metrics["held_out"]
    assert set(held) == {"en", "ru"}
    assert all(row["auc_gold_vs_random"] > 0.75 for row in held.values()), held
    fresh = planted_pairs(40, 2)
    gold = model.score([p.context for p in fresh], [p.response for p in fresh])
    shuffled = model.score([p.context for p in fresh], [p.response for p in fresh[1:] + fresh[:1]])
    assert ((gold > 0) & (gold < 1)).all()
    assert gold.mean() > shuffled.mean()


def test_metrics_need_matching_rows(encoders: dict[str, Encoder]) -> None:
    data = build_relevance_data(planted_pairs(30, 3), encoders["main"], RelevanceConfig(hard_negatives=0))
    metrics = relevance_metrics(data.labels, data)  # a perfect scorer
    assert set(metrics) == {"en", "ru"} and metrics["ru"]["gold_rows"] == 15
    assert metrics["en"]["auc_gold_vs_random"] == 1.0 and "auc_gold_vs_hard" not in metrics["en"]


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_artifact_round_trip_and_encoder_refusal(encoders: dict[str, Encoder], tmp_path: Path, head: str) -> None:
    out = tmp_path / "relevance"
    model, _ = train_relevance_model(None, planted_pairs(60, 4), out, encoder=encoders["main"],
                                     config=RelevanceConfig(head=head, epochs=3))
    loaded = load_relevance_model(out, encoders["main"])
    probe = planted_pairs(6, 5)
    contexts, texts = [p.context for p in probe], [p.response for p in probe]
    np.testing.assert_allclose(loaded.score(contexts, texts), model.score(contexts, texts), rtol=1e-5)
    with pytest.raises(RewardModelError, match="other-encoder"):
        load_relevance_model(out, encoders["other"])
    with pytest.raises(RewardModelError, match="holds a 'relevance' artifact, not 'specificity-proxy'"):
        from rl.proxy import load_specificity_proxy

        load_specificity_proxy(out, encoders["main"])


def test_bad_config_and_data_are_refused(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(ValueError, match="at least 20"):
        train_relevance_model(None, planted_pairs(5, 6), None, encoder=encoders["main"])
    with pytest.raises(ValueError, match="hard_weight"):
        train_relevance_model(None, planted_pairs(30, 6), None, encoder=encoders["main"],
                              config=RelevanceConfig(hard_weight=0.0))
    with pytest.raises(ValueError, match="at least one random or hard negative"):
        train_relevance_model(None, planted_pairs(30, 6), None, encoder=encoders["main"],
                              config=RelevanceConfig(random_negatives=0, hard_negatives=0))

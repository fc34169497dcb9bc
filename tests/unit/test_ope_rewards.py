"""The workspace reward model as the `--reward model` source of off-policy evaluation (tiny encoder)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_rewards_relevance import TOPICS, planted_pairs

from tiny_models import build_tiny_encoder


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread: None) -> None:
    """Tiny models run several times faster on one torch thread on a shared machine."""


def test_workspace_reward_model_scores_logged_candidates(tmp_path: Path) -> None:
    from core.config import Settings
    from retriever.encoder import Encoder
    from rl.ope_rewards import COLUMNS, candidate_scores, model_rewards, workspace_reward_scorer
    from rl.proxy import ProxyConfig, train_specificity_proxy
    from rl.relevance import RelevanceConfig, train_relevance_model

    settings = Settings(home=tmp_path / "home")
    with pytest.raises(FileNotFoundError, match="repliq train reward"):
        workspace_reward_scorer(settings)
    encoder_dir = build_tiny_encoder(tmp_path / "encoder")
    settings = replace(settings, encoder=replace(settings.encoder, name=str(encoder_dir), adapter="none"))
    encoder = Encoder(encoder_dir, device="cpu")
    train_relevance_model(None, planted_pairs(60, 0), settings.artifacts_dir / "reward-relevance",
                          config=RelevanceConfig(head="logistic", hard_negatives=0), encoder=encoder)
    texts = [w for words in TOPICS.values() for w in words] * 4
    train_specificity_proxy(None, texts, [float(len(t)) for t in texts], settings.artifacts_dir / "reward-specificity",
                            config=ProxyConfig(head="ridge", inputs="lexical"), encoder=encoder)
    scorer = workspace_reward_scorer(settings)
    assert scorer.identity.startswith("relevance@") and scorer.columns == COLUMNS
    records = []
    for i, (language, topics) in enumerate(sorted(TOPICS.items()) * 3):
        topic, other = topics[i % len(topics)], topics[(i + 3) % len(topics)]
        records.append({"request_id": f"r{i}", "language": language, "chosen": i % 2,
                        "context": [{"speaker": "u", "text": f"{topic} {topic}"}],
                        "candidates": [{"text": f"{topic} indeed"}, {"text": f"{other} indeed"}]})
    scores = candidate_scores(records, scorer)
    assert all(s.shape == (2, 3) and np.isfinite(s).all() for s in scores)
    relevance = np.array([s[:, 0] for s in scores])
    assert (relevance > 0).all() and (relevance < 1).all()
    assert (relevance[:, 0] > relevance[:, 1]).mean() >= 0.8, "the on-topic reply is the more relevant one"
    rewards = model_rewards(records, scores)
    assert rewards == {r["request_id"]: pytest.approx(s[r["chosen"], 2]) for r, s in zip(records, scores,
                                                                                           strict=True)}
    totals = np.concatenate([s[:, 2] for s in scores])
    assert abs(totals.mean()) < 1e-6, "standardized on the logged candidates: 0 is their average"

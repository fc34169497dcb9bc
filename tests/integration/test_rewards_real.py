"""Reward models on the real default models: the proxy's fidelity to gemma on starter phrases in both
languages, relevance on real dialogue pairs, and refusal of a proxy trained on another encoder.

Floors were set below the values measured on this machine (see docs/rewards.md), not hoped for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from core.bank.default import starter_rows
from core.corpora import context_response_pairs, read_anekdot_dialogues, read_chitchat, split_of
from retriever.encoder import Encoder
from rl.artifacts import RewardModelError
from rl.proxy import ProxyConfig, load_specificity_proxy, train_specificity_proxy
from rl.relevance import RelevanceConfig, train_relevance_model
from rl.teacher import DEFAULT_DEFINITION, score_with_cache, teacher_values

pytestmark = pytest.mark.real

PER_LANGUAGE = 100
FOLDS = 5
# 5-fold held-out values on these slices (docs/rewards.md has the full-size numbers):
FIDELITY_FLOOR = 0.65  # measured 0.76 (en) and 0.80 (ru)
# Measured 0.90 (en, chitchat) and 0.74 (ru, joke dialogues, whose replies are often deliberate
# non-sequiturs; 0.77-0.79 with 1,500 pairs); chance is 0.5.
RELEVANCE_AUC_FLOOR = {"en": 0.8, "ru": 0.7}


@pytest.fixture(scope="module")
def e5(models_dir: Path) -> Encoder:
    from core.models.cache import prepare
    from core.models.registry import resolve

    prepare(["e5-small"], models_dir)
    return Encoder(resolve("e5-small", models_dir), device="cpu")


def bank_like_slice(shared_data: Path) -> tuple[list[str], list[str]]:
    """Per language half hand-written starter phrases, half corpus replies: the mix the default bank has
    (starter + chitchat in English). A starter-only slice is narrower; docs/rewards.md reports both."""
    from core.bank.default import chitchat_rows

    rows = starter_rows()
    russian = [t.text for d in read_anekdot_dialogues(shared_data / "ru" / "koziev_anekdot_dialogues.tar.xz",
                                                      limit=400) for t in d.turns[1:] if 10 <= len(t.text) <= 300]
    corpus = {"en": [r.text for r in chitchat_rows(limit=PER_LANGUAGE // 2)], "ru": russian[::3][:PER_LANGUAGE // 2]}
    texts, languages = [], []
    for language in ("en", "ru"):
        picked = [r.text for r in rows if r.language == language][::7][:PER_LANGUAGE // 2] + corpus[language]
        texts += picked
        languages += [language] * len(picked)
    return texts, languages


@pytest.fixture(scope="module")
def teacher_slice(models_dir: Path, shared_data: Path) -> tuple[list[str], list[str], np.ndarray]:
    from core.lm.wrapper import DecoderLM, LMOptions
    from core.models.cache import prepare

    prepare(["gemma-3-270m"], models_dir)
    lm = DecoderLM.from_cache("gemma-3-270m", models_dir, LMOptions(threads=1))
    texts, languages = bank_like_slice(shared_data)
    scores = score_with_cache(lm, [None] * len(texts), texts, languages, cache=None, batch_size=32)
    return texts, languages, teacher_values(scores, DEFAULT_DEFINITION)


def test_proxy_fidelity_per_language(teacher_slice: tuple[list[str], list[str], np.ndarray], e5: Encoder) -> None:
    texts, languages, y = teacher_slice
    passages = e5.encode_passages(texts)
    langs = np.array(languages)
    folds = np.random.default_rng(0).permutation(len(texts)) % FOLDS
    pred = np.empty(len(texts))
    for fold in range(FOLDS):
        train, test = folds != fold, folds == fold
        proxy, _ = train_specificity_proxy(None, [t for t, k in zip(texts, train, strict=True) if k], y[train], None,
                                           config=ProxyConfig(head="ridge", held_out=0.0), encoder=e5,
                                           passages=passages[train])
        pred[test] = proxy.score([t for t, k in zip(texts, test, strict=True) if k], passages=passages[test])
    for language in ("en", "ru"):
        mask = langs == language
        rho = spearmanr(pred[mask], y[mask]).statistic
        print(f"proxy fidelity {language}: Spearman {rho:.3f} over {mask.sum()} phrases ({FOLDS}-fold)")
        assert rho >= FIDELITY_FLOOR, (language, rho)


def real_pairs(shared_data: Path, per_language: int) -> list:
    pairs = []
    sources = [read_chitchat(limit=400), read_anekdot_dialogues(shared_data / "ru" / "koziev_anekdot_dialogues.tar.xz",
                                                                limit=3000)]
    for dialogues in sources:
        found = [p for p in context_response_pairs(dialogues, 3)
                 if split_of(p.conversation_id) == "train" and 2 <= len(p.response) <= 300
                 and len(p.context.as_query_text(3)) <= 300]  # short inputs keep the encoder quick
        pairs += found[::max(1, len(found) // per_language)][:per_language]
    return pairs


def test_relevance_separates_gold_from_random(shared_data: Path, e5: Encoder) -> None:
    pairs = real_pairs(shared_data, 150)
    # The logistic head: as good on gold vs random (docs/rewards.md) and seconds faster than the default MLP.
    _, metrics = train_relevance_model(None, pairs, None, seed=0, encoder=e5,
                                       config=RelevanceConfig(head="logistic", held_out=0.3))
    for language, row in metrics["held_out"].items():
        print(f"relevance {language}: AUC gold vs random {row['auc_gold_vs_random']:.3f}")
        assert row["auc_gold_vs_random"] > RELEVANCE_AUC_FLOOR[language], (language, row)
    assert set(metrics["held_out"]) == {"en", "ru"}


def test_proxy_refuses_another_encoder(models_dir: Path, e5: Encoder, tmp_path: Path) -> None:
    from core.models.cache import prepare
    from core.models.registry import resolve

    prepare(["minilm"], models_dir)
    texts = [r.text for r in starter_rows()][:40]
    out = tmp_path / "proxy"
    train_specificity_proxy(None, texts, np.arange(40.0), out, config=ProxyConfig(head="ridge"), encoder=e5)
    assert load_specificity_proxy(out, e5).score(texts[:3]).shape == (3,)
    with pytest.raises(RewardModelError, match=r"trained on embeddings of encoder .e5.*Retrain it"):
        load_specificity_proxy(out, Encoder(resolve("minilm", models_dir), device="cpu"))

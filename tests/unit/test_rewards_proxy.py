"""The distilled specificity proxy on a tiny random encoder: recovers a planted target, saves and loads,
refuses a foreign encoder, reports ensemble disagreement and plugs into the blender's annotator slot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from core.types import Candidate, Context, Turn
from ranker.annotator_base import AnnotatorResources
from ranker.features.specificity import SpecificityAnnotator
from retriever.encoder import Encoder
from rl.artifacts import MANIFEST_FILE, RewardModelError
from rl.proxy import (
    ProxyConfig,
    length_features,
    load_proxy_scorer,
    load_specificity_proxy,
    train_specificity_proxy,
)

from tiny_models import build_tiny_encoder

WORDS = ["cat", "coffee", "marathon", "ok", "yes", "thesis", "кот", "кофе", "да", "марафон", "погода", "jazz",
         "Portugal", "nice", "great", "knees", "зонт", "экзамен", "bread", "pizza"]


def phrases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoder]:
    root = tmp_path_factory.mktemp("enc")
    return {"main": Encoder(build_tiny_encoder(root / "main", seed=0), device="cpu"),
            "other": Encoder(build_tiny_encoder(root / "other", model_id="other-encoder", seed=3), device="cpu")}


def planted_target(texts: list[str], encoder: Encoder) -> np.ndarray:
    """A teacher-like target: information grows with length, plus a direction in embedding space."""
    direction = np.random.default_rng(5).normal(size=encoder.dim)
    return 2.0 * length_features(texts)[:, 1] + encoder.encode_passages(texts) @ direction


@pytest.mark.parametrize("head", ["ridge", "mlp"])
def test_proxy_recovers_a_planted_target(encoders: dict[str, Encoder], head: str) -> None:
    encoder = encoders["main"]
    train, test = phrases(400, 0), phrases(150, 1)
    proxy, metrics = train_specificity_proxy(None, train, planted_target(train, encoder), None, seed=0,
                                             config=ProxyConfig(head=head, held_out=0.2, epochs=40, hidden=64),
                                             encoder=encoder)
    rho = spearmanr(proxy.score(test), planted_target(test, encoder)).statistic
    assert rho > 0.9, rho
    assert metrics["held_out_spearman"] > 0.85
    assert set(metrics["held_out_spearman_by_language"]) <= {"en", "ru"}


def test_save_load_round_trip_and_encoder_refusal(encoders: dict[str, Encoder], tmp_path: Path) -> None:
    encoder = encoders["main"]
    texts = phrases(120, 2)
    out = tmp_path / "proxy"
    proxy, _ = train_specificity_proxy(None, texts, planted_target(texts, encoder), out, seed=1,
                                       config=ProxyConfig(head="ridge", members=3), encoder=encoder)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "specificity-proxy" and manifest["encoder"] == encoder.identity
    assert len(manifest["data_sha256"]) == 64 and "held_out_spearman" in manifest["metrics"]
    loaded = load_specificity_proxy(out, encoder)
    probe = phrases(20, 9)
    np.testing.assert_allclose(loaded.score(probe), proxy.score(probe), rtol=1e-5, atol=1e-5)
    assert loaded.identity == proxy.identity and loaded.identity.startswith("specificity-proxy@")
    scorer, identity = load_proxy_scorer(out, encoder)
    assert identity == proxy.identity and scorer(Context(()), probe[:2]) == pytest.approx(proxy.score(probe[:2]))
    other, _ = train_specificity_proxy(None, texts, -planted_target(texts, encoder), None, seed=1,
                                       config=ProxyConfig(head="ridge", members=3), encoder=encoder)
    assert other.identity != proxy.identity
    with pytest.raises(RewardModelError, match=r"other-encoder.*Retrain it"):
        load_specificity_proxy(out, encoders["other"])
    with pytest.raises(RewardModelError, match="not a saved reward model"):
        load_specificity_proxy(tmp_path / "missing", encoder)


def test_ensemble_reports_disagreement(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["main"]
    texts = phrases(200, 3)
    y = planted_target(texts, encoder)
    single, _ = train_specificity_proxy(None, texts, y, None, config=ProxyConfig(head="ridge"), encoder=encoder)
    ensemble, _ = train_specificity_proxy(None, texts, y, None,
                                          config=ProxyConfig(head="ridge", members=4, l2=1.0), encoder=encoder)
    probe = phrases(30, 4)
    mean, spread = ensemble.score_with_disagreement(probe)
    assert len(ensemble.heads) == 4 and spread.shape == (30,) and (spread > 0).all()
    np.testing.assert_allclose(mean, ensemble.member_scores(probe).mean(axis=0))
    assert np.all(single.score_with_disagreement(probe)[1] == 0)


def test_pair_inputs_use_the_context(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["main"]
    replies = phrases(200, 5)
    contexts = [Context((Turn("u", c),)) for c in phrases(200, 6)]
    q = encoder.encode_queries([c.as_query_text(3) for c in contexts])
    y = np.sum(q * encoder.encode_passages(replies), axis=1)  # a purely contextual target
    proxy, metrics = train_specificity_proxy(None, list(zip(contexts, replies, strict=True)), y, None,
                                             config=ProxyConfig(head="ridge", inputs="pair", l2=1.0), encoder=encoder)
    assert metrics["held_out_spearman"] > 0.8
    with pytest.raises(ValueError, match="one context per text"):
        proxy.score(replies[:3])
    assert proxy.score(replies[:3], contexts[:3]).shape == (3,)


def test_annotator_slot_receives_the_proxy(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["main"]
    texts = phrases(100, 7)
    proxy, _ = train_specificity_proxy(None, texts, planted_target(texts, encoder), None,
                                       config=ProxyConfig(head="ridge", held_out=0.0), encoder=encoder)
    annotator = SpecificityAnnotator(AnnotatorResources(specificity=proxy.annotator()))
    pool = [Candidate(t, "bank", "en") for t in texts[:5]]
    features = annotator.annotate_pool(Context((Turn("u", "hi"),)), pool)
    np.testing.assert_allclose(features[:, 0], proxy.score(texts[:5]), rtol=1e-5)


def test_bad_training_input_is_refused(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["main"]
    texts = phrases(30, 8)
    with pytest.raises(ValueError, match="teacher scores"):
        train_specificity_proxy(None, texts, np.zeros(29), None, encoder=encoder)
    with pytest.raises(ValueError, match="finite"):
        train_specificity_proxy(None, texts, np.full(30, np.nan), None, encoder=encoder)
    with pytest.raises(ValueError, match="not a mix"):
        train_specificity_proxy(None, [texts[0], (Context(()), texts[1])], [1.0, 2.0], None, encoder=encoder)
    with pytest.raises(ValueError, match="proxy head"):
        train_specificity_proxy(None, texts, np.arange(30.0), None, config=ProxyConfig(head="tree"), encoder=encoder)


def test_lexical_proxy_needs_no_encoder(tmp_path: Path, encoders: dict[str, Encoder]) -> None:
    texts = phrases(400, 10)
    y = np.array([2.0 * t.count("o") + len(t.split()) for t in texts])  # trigram-visible and length-visible
    out = tmp_path / "lexical"
    proxy, metrics = train_specificity_proxy(None, texts, y, out, config=ProxyConfig(head="ridge", inputs="lexical",
                                                                                    l2=100.0))
    assert metrics["held_out_spearman"] > 0.9
    assert proxy.encoder is None
    for encoder in (None, encoders["other"]):  # reads no embeddings, so any encoder is fine
        loaded = load_specificity_proxy(out, encoder)
        np.testing.assert_allclose(loaded.score(texts[:10]), proxy.score(texts[:10]), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="ridge head"):
        train_specificity_proxy(None, texts, y, None, config=ProxyConfig(head="mlp", inputs="lexical"))
    with pytest.raises(ValueError, match="need an encoder"):
        train_specificity_proxy(None, texts, y, None, config=ProxyConfig(head="ridge"))


def test_distill_scores_through_the_cache_then_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rl.teacher as teacher
    from core.lm.scoring import LMScore
    from core.lm.wrapper import NullLM
    from rl.proxy import distill_specificity_proxy

    calls: list[int] = []

    def fake_texts(lm, texts, **_):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return [LMScore(-3.0 * len(t), -3.0, len(t)) for t in texts]

    monkeypatch.setattr(teacher, "score_texts", fake_texts)
    texts = phrases(120, 11)
    languages = ["en"] * 120
    config = ProxyConfig(head="ridge", inputs="lexical")
    cache = tmp_path / "teacher.jsonl"
    proxy, metrics = distill_specificity_proxy(None, NullLM(), texts, languages, tmp_path / "proxy", config=config,
                                               cache_path=cache)
    assert load_specificity_proxy(tmp_path / "proxy", None).manifest["metrics"]["teacher"]["lm_id"] == "none"
    assert proxy.score(texts[:2]).shape == (2,)
    assert sum(calls) == len(set(texts)) and cache.exists()
    assert metrics["teacher"]["definition"] == config.teacher and metrics["held_out_spearman"] > 0.9
    distill_specificity_proxy(None, NullLM(), texts, languages, None, config=config, cache_path=cache)
    assert sum(calls) == len(set(texts))  # the rerun scored nothing
    with pytest.raises(ValueError, match="needs \\(context, phrase\\) pairs"):
        distill_specificity_proxy(None, NullLM(), texts, languages, None, config=ProxyConfig(teacher="pmi"))

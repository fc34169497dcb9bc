from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from core.corpora import ContextPair, context_response_pairs, read_chitchat
from core.types import SOURCE_BANK, Candidate
from ranker.annotators import AnnotatorResources, build_annotators
from ranker.blender import BOOSTER_NAME, Blender, BlenderMismatchError
from ranker.dataset import BuilderConfig, DatasetError, RankingDataset, build_ranking_dataset
from ranker.features.lexical import LexicalAnnotator
from ranker.idf import IdfTable
from ranker.train import RETRIEVAL_FEATURE, BlenderTrainConfig, ranking_metrics, retrieval_only_r_at_1, train_blender

POOL = 10


@dataclass
class Trained:
    directory: Path
    dataset: RankingDataset
    metrics: dict[str, float]
    pairs: list[ContextPair]
    bank: list[Candidate]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """300 real chitchat contexts; candidates = gold + random bank phrases; no neural features."""
    dialogues = [d for d in read_chitchat(limit=800) if len(d.turns) >= 6][:200]
    # Three contexts from each of 100 conversations, so the hash split has many conversations to spread.
    pairs = [p for d in dialogues[:100] for p in islice(context_response_pairs([d]), 3, 6)]
    bank = [Candidate(t.text, SOURCE_BANK, "en", phrase_id=i)
            for i, t in enumerate(t for d in dialogues[100:] for t in d.turns)]
    idf = IdfTable.build([c.text for c in bank] + [t.text for d in dialogues[:100] for t in d.turns])
    annotators = build_annotators(AnnotatorResources(idf=idf))
    dataset = build_ranking_dataset(pairs, annotators, bank, resources={"idf": idf.hash},
                                    config=BuilderConfig(k_random=POOL - 1, dev_fraction=0.2, test_fraction=0.2))
    directory = tmp_path_factory.mktemp("blender") / "blender"
    config = BlenderTrainConfig(rounds=60, early_stopping=20, num_threads=1, min_data_in_leaf=10)
    metrics = train_blender(dataset, config, directory, idf=idf, annotators=annotators)
    return Trained(directory, dataset, metrics, pairs, bank)


def _pool(t: Trained, pair: ContextPair, n: int = POOL) -> list[Candidate]:
    rng = np.random.default_rng(len(pair.context_id))
    picks = rng.choice(len(t.bank), n - 1, replace=False)
    return [Candidate(pair.response, SOURCE_BANK, "en")] + [replace(t.bank[i]) for i in picks]


def test_beats_random_on_heldout_groups(trained: Trained) -> None:
    blender = Blender.load(trained.directory)
    held = [trained.dataset.subset(s) for s in ("dev", "test")]
    X = np.vstack([h.X for h in held])
    y = np.concatenate([h.y for h in held])
    sizes = np.concatenate([h.group_sizes for h in held])
    metrics = ranking_metrics(blender.raw_scores(X), y, sizes)
    assert metrics["groups"] >= 50
    assert metrics["random_r@1"] == pytest.approx(1 / POOL)
    assert metrics["r@1"] > 1 / POOL + 0.15, metrics
    assert trained.metrics["dev_r@1"] > 1 / POOL


def test_explain_contributions_sum_to_raw_score(trained: Trained) -> None:
    blender = Blender.load(trained.directory)
    ranked = blender.rerank(trained.pairs[0].context, _pool(trained, trained.pairs[0]), explain=True)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    for cand in ranked:
        assert set(cand.contributions) == {*blender.feature_names, "bias"}
        assert sum(cand.contributions.values()) == pytest.approx(cand.score, abs=1e-6)
        assert set(cand.features) == set(blender.feature_names)
    plain = blender.rerank(trained.pairs[0].context, _pool(trained, trained.pairs[0]))
    assert [c.score for c in plain] == pytest.approx([c.score for c in ranked])
    assert all(not c.contributions for c in plain)


def test_load_roundtrip_keeps_scores_and_manifest(trained: Trained) -> None:
    blender = Blender.load(trained.directory)
    assert blender.manifest.data_hash == trained.dataset.data_hash
    assert blender.manifest.lightgbm_version == lgb.__version__
    assert [a["name"] for a in blender.manifest.annotators] == [a.name for a in blender.annotators]
    assert blender.manifest.resources["idf"] == IdfTable.load(trained.directory / "idf.json").hash
    again = Blender.load(trained.directory)
    X = trained.dataset.X[:50]
    assert np.array_equal(blender.raw_scores(X), again.raw_scores(X))
    copy = trained.directory.parent / "copy"
    blender.save(copy)
    assert np.array_equal(Blender.load(copy).raw_scores(X), blender.raw_scores(X))


def test_feature_mismatch_is_refused(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    blender = Blender.load(trained.directory)
    with pytest.raises(BlenderMismatchError, match=r"'specificity' is missing.*repliq train blender"):
        blender.check_compatible(build_annotators(names=[a.name for a in blender.annotators][:-1]))
    monkeypatch.setattr(LexicalAnnotator, "version", "999")
    with pytest.raises(BlenderMismatchError, match=r"'lexical' is version 999, trained with 2"):
        Blender.load(trained.directory)


def test_tampered_booster_is_refused(trained: Trained, tmp_path: Path) -> None:
    blender = Blender.load(trained.directory)
    target = tmp_path / "b"
    blender.save(target)
    booster = target / BOOSTER_NAME
    booster.write_text(booster.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(BlenderMismatchError, match="hash"):
        Blender.load(target)


def test_policy_is_softmax_within_groups() -> None:
    probs = Blender.policy(np.array([1.0, 2.0, 3.0, 0.0, 0.0]), [3, 2])
    assert probs[:3].sum() == pytest.approx(1.0) and probs[3:].tolist() == pytest.approx([0.5, 0.5])
    assert probs[2] > probs[1] > probs[0]
    assert Blender.policy(np.array([1.0, 2.0]), temperature=100.0)[0] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="sum to"):
        Blender.policy(np.zeros(3), [2])


def _softmax_objective(sizes: np.ndarray):
    def objective(preds: np.ndarray, data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
        labels = data.get_label()
        probs = Blender.policy(preds, sizes)
        grad = np.empty_like(preds)
        start = 0
        for size in sizes:
            target = labels[start:start + size] / max(labels[start:start + size].sum(), 1.0)
            grad[start:start + size] = probs[start:start + size] - target
            start += size
        return grad, np.maximum(probs * (1 - probs), 1e-6)
    return objective


def test_continue_training_with_custom_objective(trained: Trained) -> None:
    blender = Blender.load(trained.directory)
    train = trained.dataset.subset("train")
    before = blender.raw_scores(train.X)
    tuned = blender.continue_training(train, _softmax_objective(train.group_sizes), rounds=5)
    assert tuned.booster.num_trees() == blender.booster.num_trees() + 5
    assert tuned.manifest.parent == blender.version
    assert np.array_equal(blender.raw_scores(train.X), before)
    after = tuned.raw_scores(train.X)
    assert not np.allclose(after, before)
    gold_prob = lambda s: Blender.policy(s, train.group_sizes)[train.y > 0].mean()  # noqa: E731
    assert gold_prob(after) > gold_prob(before)


def test_training_needs_dev_groups(trained: Trained, tmp_path: Path) -> None:
    only_train = trained.dataset.subset("train")
    with pytest.raises(DatasetError, match="dev"):
        train_blender(only_train, BlenderTrainConfig(rounds=5), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ranking_metrics_resolve_ties_fairly() -> None:
    y = np.array([1.0, 0, 0, 0, 0, 0, 1, 0])
    flat = ranking_metrics(np.zeros(8), y, [4, 4])
    assert flat["r@1"] == pytest.approx(0.25) == flat["random_r@1"]
    perfect = ranking_metrics(y.copy(), y, [4, 4])
    assert perfect["r@1"] == 1.0 and perfect["mrr"] == 1.0
    worst = ranking_metrics(-y, y, [4, 4])
    assert worst["r@1"] == 0.0 and worst["mrr"] == pytest.approx(0.25)


def test_retrieval_only_baseline_ranks_by_cosine_and_puts_unretrieved_last(trained: Trained) -> None:
    """The bar recorded beside the blender's own dev R@1: the retriever's cosine alone on the same pools."""
    data = trained.dataset.subset("dev")
    column = data.feature_names.index(RETRIEVAL_FEATURE)
    X = data.X.copy()
    X[:, column] = np.where(data.y > 0, 0.9, 0.1)  # a retriever that always finds the gold
    assert retrieval_only_r_at_1(replace(data, X=X)) == 1.0
    X[:, column] = np.where(data.y > 0, np.nan, 0.1)  # the gold was never retrieved: it cannot be picked
    assert retrieval_only_r_at_1(replace(data, X=X)) == 0.0
    # This fixture's pools carry no cosine at all, so the recorded baseline is exactly chance.
    assert trained.metrics["dev_retrieval_r@1"] == pytest.approx(trained.metrics["dev_random_r@1"])

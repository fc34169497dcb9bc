"""The blender as an evaluation scorer: fed like training and serving, searching like a deployment, in the CLI.

One tiny blender is trained for the module the way `repliq train blender` trains one (annotator
resources from ``rl.blender_setup``, retrieval scores from a tiny random encoder, non-retrieved
phrases scored by ``encoder_similarity``), on real chitchat contexts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from core.corpora import ContextPair, Dialogue, context_response_pairs, read_chitchat, write_jsonl_dialogues
from core.types import SOURCE_BANK, Candidate, Context, Turn
from dialog.cli.main import main
from dialog.jobs.eval_ranking import settings_for_blender
from dialog.serving.pipeline import reply_language
from ranker.annotators import build_annotators
from ranker.blender import Blender
from ranker.blender_scorer import BlenderScorer
from ranker.dataset import BuilderConfig, RetrieveFn, build_ranking_dataset, encoder_similarity
from ranker.evaluation import BiEncoderScorer
from ranker.idf import IdfTable
from ranker.train import BlenderTrainConfig, train_blender
from retriever.encoder import Encoder
from rl.blender_setup import BLENDER_DIR, annotator_resources, load_blender

from tiny_models import build_tiny_encoder
from workspace import make_settings

TURNS = 3


@dataclass
class Setup:
    encoder_dir: Path
    encoder: Encoder
    blender_dir: Path
    blender: Blender
    held_out: list[Dialogue]
    bank: list[str]


def bank_retriever(encoder: Encoder, bank: Sequence[Candidate]) -> RetrieveFn:
    """Top-k bank phrases by cosine with ranks 1..k, the stage scores ``BankRetriever`` attaches."""
    vectors = encoder.encode_passages([c.text for c in bank])

    def retrieve(contexts: list[Context], language: str, k: int) -> list[list[Candidate]]:
        queries = encoder.encode_queries([c.as_query_text(TURNS) for c in contexts])
        out = []
        for row in queries @ vectors.T:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([replace(bank[i], stage_scores={"retrieval": float(row[i]), "retrieval_rank": float(r + 1)})
                        for r, i in enumerate(top)])
        return out
    return retrieve


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, one_torch_thread: None) -> Setup:
    root = tmp_path_factory.mktemp("blender-scorer")
    encoder_dir = build_tiny_encoder(root / "tiny-encoder")
    settings = make_settings(root / "home", models_dir)
    settings = replace(settings, encoder=replace(settings.encoder, name=str(encoder_dir), device="cpu"))
    encoder = Encoder.from_config(settings)
    dialogues = [d for d in read_chitchat(limit=450) if len(d.turns) >= 6]
    train, bank_dialogues, held_out = dialogues[:70], dialogues[70:130], dialogues[130:]
    pairs = [p for d in train for p in islice(context_response_pairs([d], context_turns=TURNS), 2, 5)]
    bank = [Candidate(t.text, SOURCE_BANK, "en", phrase_id=i)
            for i, t in enumerate(t for d in bank_dialogues for t in d.turns)]
    idf = IdfTable.build([c.text for c in bank] + [t.text for d in train for t in d.turns])
    resources, descriptor = annotator_resources(settings, encoder, idf)
    annotators = build_annotators(resources)
    dataset = build_ranking_dataset(
        pairs, annotators, bank, retrieve=bank_retriever(encoder, bank),
        similarity=encoder_similarity(encoder, TURNS), resources={"idf": idf.hash, **descriptor},
        config=BuilderConfig(k_retrieved=8, k_random=6, dev_fraction=0.2, test_fraction=0.1))
    blender_dir = root / "artifacts" / BLENDER_DIR
    train_blender(dataset, BlenderTrainConfig(rounds=25, early_stopping=10, num_threads=1, min_data_in_leaf=5),
                  blender_dir, idf=idf, annotators=annotators)
    blender = load_blender(replace(settings, ranker=replace(settings.ranker, blender=str(blender_dir))), encoder)
    assert blender is not None
    return Setup(encoder_dir, encoder, blender_dir, blender, held_out,
                 [t.text for d in held_out[40:] for t in d.turns])


def held_out_pairs(s: Setup, n: int) -> list[ContextPair]:
    return [next(islice(context_response_pairs([d], context_turns=TURNS), 2, None)) for d in s.held_out[:n]]


def serving_scores(s: Setup, context: Context, texts: Sequence[str]) -> dict[str, float]:
    """What the server computes for a pool the retriever returned in cosine order (ranks 1..n)."""
    query = s.encoder.encode_queries([context.as_query_text(TURNS)])[0]
    cosines = s.encoder.encode_passages(list(texts)) @ query
    order = np.argsort(-cosines, kind="stable")
    pool = [Candidate(texts[i], SOURCE_BANK, reply_language(context),
                      stage_scores={"retrieval": float(cosines[i]), "retrieval_rank": float(r + 1)})
            for r, i in enumerate(order)]
    return {c.text: c.score for c in s.blender.rerank(context, pool)}


def test_one_finite_score_per_candidate(setup: Setup) -> None:
    scorer = BlenderScorer(setup.blender, setup.encoder)
    pairs = held_out_pairs(setup, 3)
    russian = Context((Turn("A", "Привет! Как прошли выходные?"), Turn("B", "Отлично, ездили на дачу.")))
    contexts = [p.context for p in pairs] + [russian]
    lists = [setup.bank[:3], setup.bank[3:15], [pairs[0].response, *setup.bank[20:60]], ["Здорово!", "Nice!"]]
    scores = scorer.score(contexts, lists)
    assert [len(s) for s in scores] == [len(c) for c in lists]
    assert all(np.isfinite(s).all() for s in scores)
    assert np.std(scores[2]) > 0  # the features reach the booster: not one constant leaf value


def test_scores_equal_the_serving_blender_on_the_same_pool(setup: Setup) -> None:
    scorer = BlenderScorer(setup.blender, setup.encoder)
    for pair, start in zip(held_out_pairs(setup, 3), (0, 30, 60), strict=True):
        texts = [pair.response, *setup.bank[start:start + 7]]
        expected = serving_scores(setup, pair.context, texts)
        got = scorer.score([pair.context], [texts])[0]
        assert got.tolist() == pytest.approx([expected[t] for t in texts], abs=1e-5)


def test_features_equal_those_of_a_training_pool(setup: Setup) -> None:
    """The dataset builder on the same texts (top-8 retrieved, the rest as bank phrases) gives the same rows."""
    scorer = BlenderScorer(setup.blender, setup.encoder)
    pair = held_out_pairs(setup, 1)[0]
    others = setup.bank
    cosines = scorer.encoder.encode_passages(others) @ scorer.encoder.encode_queries(
        [pair.context.as_query_text(TURNS)])[0]
    gold_cos = scorer.encoder.encode_passages([pair.response]) @ scorer.encoder.encode_queries(
        [pair.context.as_query_text(TURNS)])[0]
    others = [t for t, c in zip(others, cosines, strict=True) if c > gold_cos[0]][:14]  # the gold stays unretrieved
    assert len(others) > 8
    pool = [Candidate(t, SOURCE_BANK, "en", phrase_id=i) for i, t in enumerate(others)]
    top = bank_retriever(setup.encoder, pool)([pair.context], "en", 8)[0]
    dataset = build_ranking_dataset([pair], setup.blender.annotators, pool, retrieve=lambda c, lang, k: [top],
                                    similarity=encoder_similarity(setup.encoder, TURNS),
                                    config=BuilderConfig(k_retrieved=8, k_random=len(pool)))
    texts = [pair.response, *others]
    assert sorted(dataset.texts) == sorted(texts)
    features = scorer.features([pair.context], [texts])[0]
    expected = dataset.X[[dataset.texts.index(t) for t in texts]]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)  # z-scores amplify float32 noise
    assert scorer.score([pair.context], [texts])[0].tolist() == pytest.approx(
        setup.blender.raw_scores(expected).tolist(), abs=1e-5)


def test_top_k_reranks_the_bi_encoder_shortlist(setup: Setup) -> None:
    scorer = BlenderScorer(setup.blender, setup.encoder, rerank_depth=12)
    contexts = [p.context for p in held_out_pairs(setup, 6)]
    got = scorer.top_k(contexts, setup.bank, 4)
    shortlists = BiEncoderScorer(setup.encoder).top_k(contexts, setup.bank, 12)
    reordered = 0
    for context, row, shortlist in zip(contexts, got, shortlists, strict=True):
        assert len(row) == len(set(row)) == 4 and set(row) <= set(shortlist)
        served = serving_scores(setup, context, [setup.bank[i] for i in shortlist])
        assert [setup.bank[i] for i in row] == sorted(served, key=lambda t: -served[t])[:4]
        reordered += row != shortlist[:4]
    assert reordered > 0  # the blender, not the retriever, decides the order


@pytest.fixture
def workspace(setup: Setup, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace whose configured encoder is the tiny one; returns a small JSONL dev corpus."""
    monkeypatch.setenv("REPLIQ_ENCODER_NAME", str(setup.encoder_dir))
    monkeypatch.setenv("REPLIQ_ENCODER_DEVICE", "cpu")
    corpus = tmp_path / "small.jsonl"
    write_jsonl_dialogues(corpus, setup.held_out[:40])
    return corpus


def test_cli_eval_ranking_adds_the_blender_row(setup: Setup, workspace: Path, home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(setup.blender_dir, home / "artifacts" / BLENDER_DIR)
    assert main(["eval", "ranking", "--corpus", str(workspace), "--contexts", "10"]) == 0
    table = capsys.readouterr().out
    assert "| en-small | en | 10 | blender |" in table and "| bm25 |" in table and "| tiny-encoder |" in table
    out = home / "artifacts" / "eval"
    report = json.loads((out / "ranking_eval.json").read_text(encoding="utf-8"))
    assert report["scorers"] == ["bm25", "tiny-encoder", "blender"]
    assert report["results"]["en-small"]["blender"]["bank_recall_at_10"] is not None
    assert (out / "ranking_eval_blender_importance.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_a_blender_trained_for_another_encoder(setup: Setup, workspace: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REPLIQ_ENCODER_NAME", str(build_tiny_encoder(tmp_path / "other", seed=1)))
    assert main(["eval", "ranking", "--corpus", str(workspace), "--contexts", "5",
                 "--blender", str(setup.blender_dir)]) == 2
    err = capsys.readouterr().err
    assert "repliq: error:" in err and "encoder: trained with 'tiny-random-encoder@" in err
    assert "repliq train blender" in err
    assert main(["eval", "ranking", "--corpus", str(workspace), "--contexts", "5", "--no-blender"]) == 0
    assert "| blender |" not in capsys.readouterr().out


def test_settings_for_blender_rebuild_the_inputs_it_was_trained_with(setup: Setup, tmp_path: Path) -> None:
    """The benchmark path: no workspace, only a blender directory and a model cache holding its encoder."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-random-encoder").symlink_to(setup.encoder_dir)
    settings = settings_for_blender(Settings(models_dir=models), setup.blender_dir)
    assert (settings.encoder.name, settings.retrieval.context_turns) == ("tiny-random-encoder", TURNS)
    assert (settings.ranker.blender, settings.ranker.specificity) == (str(setup.blender_dir), "none")
    blender = load_blender(settings, Encoder.from_config(settings))
    assert blender is not None and blender.version == setup.blender.version
    with pytest.raises(FileNotFoundError, match="no trained blender"):
        settings_for_blender(settings, tmp_path)

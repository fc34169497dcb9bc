from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from core.blocklist import Blocklist
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context, Turn
from ranker.annotators import AnnotatorResources, annotate_all, build_annotators, feature_names
from ranker.bm25 import bm25, overlap
from ranker.features.generic import is_generic
from ranker.features.surface import is_question
from ranker.idf import IdfTable, IdfTableError
from retriever.encoder_cache import CachingEncoder

DOCS = [
    "i like to go hiking in the mountains",
    "the weather is nice today",
    "i like pizza",
    "the cat is on the mat",
    "do you like the weather",
    "my guitar has six strings",
]


def _ctx(*texts: str) -> Context:
    return Context(tuple(Turn("u" if i % 2 == 0 else "b", t) for i, t in enumerate(texts)))


def _features(resources: AnnotatorResources, context: Context, candidates: list[Candidate]) -> dict[str, np.ndarray]:
    annotators = build_annotators(resources)
    matrix = annotate_all(annotators, [context], [candidates])[0]
    return dict(zip(feature_names(annotators), matrix.T, strict=True))


def test_generic_phrases_are_flagged() -> None:
    assert is_generic("I agree!", "en")
    assert is_generic("i don't know, man", "en")
    assert is_generic("Ага", "ru")
    assert is_generic("Я согласен с тобой.", "ru")
    assert not is_generic("I agree that hiking in the Alps beats any beach holiday", "en")
    assert not is_generic("Прекрасная идея, жду тебя у фонтана через час.", "ru")
    feats = _features(AnnotatorResources(), _ctx("Сегодня отличная погода!"),
                      [Candidate("Полностью согласен", SOURCE_BANK, "ru"),
                       Candidate("Одеваюсь, жду тебя у фонтана через час.", SOURCE_BANK, "ru")])
    assert feats["generic_phrase"].tolist() == [1.0, 0.0]


def test_highfreq_generic_needs_idf() -> None:
    idf = IdfTable.build(["the cat", "the dog", "the end", "the weather is nice", "zebra"])
    cands = [Candidate("the the", SOURCE_BANK, "en"), Candidate("zebra weather", SOURCE_BANK, "en")]
    with_idf = _features(AnnotatorResources(idf=idf), _ctx("hi"), cands)
    assert with_idf["generic_highfreq"].tolist() == [1.0, 0.0]
    assert np.isnan(_features(AnnotatorResources(), _ctx("hi"), cands)["generic_highfreq"]).all()


def test_language_mismatch_is_detected() -> None:
    cands = [Candidate("Привет, как дела?", SOURCE_BANK, "ru"), Candidate("Hello, how are you?", SOURCE_BANK, "ru"),
             Candidate("123 :)", SOURCE_BANK, "ru")]
    feats = _features(AnnotatorResources(), _ctx("Hi there", "Привет!"), cands)
    assert feats["lang_match_requested"][:2].tolist() == [1.0, 0.0]
    assert feats["lang_match_context"][:2].tolist() == [1.0, 0.0]
    assert np.isnan(feats["lang_match_requested"][2])


def test_bm25_on_hand_cases() -> None:
    idf = IdfTable.build(DOCS)
    query = ["do", "you", "like", "hiking"]
    rare = bm25(query, ["hiking", "is", "my", "passion"], idf)
    common = bm25(query, ["i", "like", "cats"], idf)
    assert rare > common > 0
    assert bm25(query, ["my", "guitar", "has", "six", "strings"], idf) == 0.0
    assert bm25(query, ["hiking", "hiking"], idf) > bm25(query, ["hiking", "today"], idf)
    assert bm25([], ["x"], idf) == 0.0
    assert overlap(["a", "b"], ["b", "c"]) == 0.5
    assert overlap(["a"], []) == 0.0


def test_lexical_features_and_echo() -> None:
    idf = IdfTable.build(DOCS)
    cands = [Candidate("Hiking in the mountains is great", SOURCE_BANK, "en"),
             Candidate("My guitar has six strings", SOURCE_BANK, "en"),
             Candidate("do you like hiking?", SOURCE_BANK, "en")]
    feats = _features(AnnotatorResources(idf=idf), _ctx("Do you like hiking?"), cands)
    assert feats["bm25_last"][0] > feats["bm25_last"][1] == 0.0
    assert feats["echo"].tolist() == [0.0, 0.0, 1.0]
    assert feats["context_word_repeat"][2] == 1.0
    gap = feats["bm25_context_gap"]
    assert gap.max() == 0.0 and gap[1] == pytest.approx(-feats["bm25_context"].max())
    assert np.isnan(_features(AnnotatorResources(), _ctx("hiking"), cands)["bm25_last"]).all()
    assert np.isnan(_features(AnnotatorResources(), _ctx("hiking"), cands)["bm25_context_gap"]).all()


class FakeLM:
    def score(self, context: Context, responses: Sequence[str]) -> Sequence[Mapping[str, float]]:
        return [{"cond_logprob": -float(len(r)), "uncond_logprob": -2.0 * len(r)} for r in responses]


def test_lm_features_nan_when_absent_and_filled_when_given() -> None:
    cands = [Candidate("hello", SOURCE_BANK, "en", phrase_id=7), Candidate("hi", SOURCE_GENERATED, "en")]
    absent = _features(AnnotatorResources(), _ctx("hey"), cands)
    for name in ("lm_cond_logprob", "lm_pmi", "lm_uncond_logprob", "specificity_proxy"):
        assert np.isnan(absent[name]).all(), name
    table_only = _features(AnnotatorResources(lm_unconditional={7: -3.5}), _ctx("hey"), cands)
    assert table_only["lm_uncond_logprob"][0] == pytest.approx(-3.5)
    assert np.isnan(table_only["lm_uncond_logprob"][1]) and np.isnan(table_only["lm_pmi"]).all()
    scored = _features(AnnotatorResources(lm_scorer=FakeLM(), lm_unconditional={7: -3.5}), _ctx("hey"), cands)
    assert scored["lm_cond_logprob"].tolist() == [-5.0, -2.0]
    assert scored["lm_uncond_logprob"].tolist() == [-3.5, -4.0]  # table first, scorer for the rest
    assert scored["lm_pmi"].tolist() == [-1.5, 2.0]


def test_retrieval_features_nan_for_generated() -> None:
    cands = [Candidate("a", SOURCE_BANK, "en", stage_scores={"retrieval": 0.8, "retrieval_rank": 0}),
             Candidate("b", SOURCE_BANK, "en", stage_scores={"retrieval": 0.5, "retrieval_rank": 1}),
             Candidate("c", SOURCE_GENERATED, "en")]
    feats = _features(AnnotatorResources(), _ctx("x"), cands)
    assert feats["retrieval_cosine"][:2].tolist() == pytest.approx([0.8, 0.5])
    assert feats["retrieval_cosine_gap"][:2].tolist() == pytest.approx([0.0, -0.3])
    assert np.isnan(feats["retrieval_cosine"][2]) and np.isnan(feats["retrieval_rank"][2])
    assert np.isnan(feats["retrieval_cosine_z"][2])
    assert feats["source_generated"].tolist() == [0.0, 0.0, 1.0]


def test_retrieval_rank_is_within_the_pool_whatever_the_retriever_said() -> None:
    """The pool, not the bank, numbers the ranks: a gold reply that tops its pool is rank 1 in training,
    evaluation and serving alike, and ties share the better rank."""
    cosines = [0.2, 0.9, 0.5, 0.9, 0.1]
    cands = [Candidate(f"t{i}", SOURCE_BANK, "en", stage_scores={"retrieval": c, "retrieval_rank": 40.0 + i})
             for i, c in enumerate(cosines)]
    feats = _features(AnnotatorResources(), _ctx("x"), cands)
    assert feats["retrieval_rank"].tolist() == [4.0, 1.0, 3.0, 1.0, 5.0]
    z = feats["retrieval_cosine_z"]
    assert float(np.mean(z)) == pytest.approx(0.0, abs=1e-6) and float(np.std(z)) == pytest.approx(1.0, abs=1e-5)
    assert z[1] == pytest.approx(z[3]) and z[1] > z[2] > z[0] > z[4]


def test_specificity_slot_uses_injected_scorer() -> None:
    cands = [Candidate("short", SOURCE_BANK, "en"), Candidate("a longer reply", SOURCE_BANK, "en")]
    feats = _features(AnnotatorResources(specificity=lambda ctx, texts: [len(t) / 10 for t in texts]), _ctx("x"), cands)
    assert feats["specificity_proxy"].tolist() == pytest.approx([0.5, 1.4])


def test_blocklist_words_and_stems() -> None:
    bl = Blocklist.from_lines(["# comment", "badword", "rotten*", ""])
    assert bl.hits(["a", "badword", "rottenness", "badwords"]) == 2
    cands = [Candidate("what a badword", SOURCE_BANK, "en"), Candidate("fine", SOURCE_BANK, "en"),
             Candidate("ok", SOURCE_BANK, "fr")]
    feats = _features(AnnotatorResources(blocklists={"en": bl}), _ctx("x"), cands)
    assert feats["blocklist_hits"][:2].tolist() == [1.0, 0.0]
    assert np.isnan(feats["blocklist_hits"][2])


def test_question_form() -> None:
    assert is_question("Where do you live?") and is_question("what do you do")
    assert is_question("Ты ли это") and is_question("Как дела")
    assert not is_question("I live in Paris.")


def test_idf_roundtrip_and_tamper_detection(tmp_path: Path) -> None:
    idf = IdfTable.build(DOCS)
    assert idf.nidf("the") < idf.nidf("guitar") <= idf.nidf("never-seen") == 1.0
    path = tmp_path / "idf.json"
    digest = idf.save(path)
    loaded = IdfTable.load(path)
    assert loaded.hash == digest == idf.hash and loaded.nidf("guitar") == idf.nidf("guitar")
    path.write_text(path.read_text(encoding="utf-8").replace('"guitar": 1', '"guitar": 2'), encoding="utf-8")
    with pytest.raises(IdfTableError, match="hash"):
        IdfTable.load(path)


def test_registry_rejects_unknown_names_and_features_are_unique() -> None:
    with pytest.raises(KeyError, match="unknown annotators"):
        build_annotators(names=["lexical", "nope"])
    names = feature_names(build_annotators())
    assert len(names) == len(set(names))


class CountingEncoder:
    """Unit vectors from a fixed hash of the text; counts what it was asked to encode."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.passages: list[str] = []

    @staticmethod
    def _vectors(texts: Sequence[str]) -> np.ndarray:
        rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
        matrix = np.array(rows, dtype=np.float32).reshape(len(texts), 8)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-9)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.queries += list(texts)
        return self._vectors(texts)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        self.passages += list(texts)
        return self._vectors(texts)


def test_turn_features_compare_the_last_turns_alone() -> None:
    encoder = CountingEncoder()
    context = Context((Turn("A", "We went to the sea."), Turn("B", "Did you swim?")))
    cands = [Candidate(t, SOURCE_BANK, "en") for t in ("Yes, twice a day", "No", "The water was cold")]
    feats = _features(AnnotatorResources(encoder=encoder), context, cands)
    expected = encoder._vectors([c.text for c in cands]) @ encoder._vectors(["Did you swim?"])[0]
    assert feats["last_turn_cosine"].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert feats["last_turn_cosine_gap"].max() == 0.0
    two = encoder._vectors([c.text for c in cands]) @ encoder._vectors(["We went to the sea.\nDid you swim?"])[0]
    assert feats["last_two_cosine"].tolist() == pytest.approx(two.tolist(), abs=1e-6)
    assert sorted(encoder.queries) == ["Did you swim?", "We went to the sea.\nDid you swim?"]
    assert np.isnan(_features(AnnotatorResources(), context, cands)["last_turn_cosine"]).all()


def test_caching_encoder_bounds_its_cache_but_keeps_seeded_vectors() -> None:
    inner = CountingEncoder()
    cache = CachingEncoder(inner, max_cached=2)
    cache.seed_passages(["bank"], np.ones((1, 8), dtype=np.float32))
    first = cache.encode_passages(["a", "b", "bank"])
    assert inner.passages == ["a", "b"] and np.array_equal(first[2], np.ones(8, dtype=np.float32))
    cache.encode_passages(["c"])  # evicts "a", the oldest
    again = cache.encode_passages(["a", "c", "bank"])
    assert inner.passages == ["a", "b", "c", "a"]
    np.testing.assert_allclose(again[0], first[0])
    with pytest.raises(ValueError, match="max_cached"):
        CachingEncoder(inner, max_cached=0)

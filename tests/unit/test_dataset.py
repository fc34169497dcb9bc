from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.corpora import Dialogue, DialogueTurn, context_response_pairs, split_of
from core.types import SOURCE_BANK, SOURCE_GENERATED, Candidate, Context
from ranker.annotators import AnnotatorResources, annotate_all, build_annotators
from ranker.dataset import (
    BuilderConfig,
    DatasetError,
    RankingDataset,
    build_ranking_dataset,
    encoder_similarity,
    load_human_labels,
    missingness_gaps,
    restrict_origins,
)
from ranker.idf import IdfTable

WORDS = ["sun", "rain", "cat", "dog", "tea", "book", "film", "song",
         "city", "road", "sea", "hill", "bread", "milk", "game", "star"]


def _dialogues(n: int) -> list[Dialogue]:
    out = []
    for i in range(n):
        texts = [f"{WORDS[(i + j) % len(WORDS)]} talk {i} {j}" for j in range(4)]
        out.append(Dialogue(f"syn:{i}", "en", tuple(DialogueTurn("AB"[j % 2], t) for j, t in enumerate(texts))))
    return out


def _bank(n: int = 60) -> list[Candidate]:
    return [Candidate(f"bank phrase {WORDS[i % len(WORDS)]} {i}", SOURCE_BANK, "en", phrase_id=i) for i in range(n)]


def _annotators() -> list:
    return build_annotators(names=["retrieval", "surface", "lexical"])


def test_no_conversation_in_two_splits() -> None:
    pairs = list(context_response_pairs(_dialogues(120)))
    ds = build_ranking_dataset(pairs, _annotators(), _bank(), config=BuilderConfig(k_random=4))
    split_by_conv: dict[str, set[str]] = {}
    for conv, split in zip(ds.conversation_ids, ds.splits, strict=True):
        split_by_conv.setdefault(conv, set()).add(split)
    assert all(len(s) == 1 for s in split_by_conv.values())
    assert set(ds.splits) == {"train", "dev", "test"}
    parts = [ds.subset(s) for s in ("train", "dev", "test")]
    assert sum(len(p.group_sizes) for p in parts) == len(ds.group_sizes)
    assert not set(parts[0].conversation_ids) & (set(parts[1].conversation_ids) | set(parts[2].conversation_ids))
    assert sum(p.X.shape[0] for p in parts) == ds.X.shape[0]


def test_groups_labels_and_gold_dedup() -> None:
    pairs = list(context_response_pairs(_dialogues(3)))
    gold0 = pairs[0].response

    def retrieve(contexts: list[Context], language: str, k: int) -> list[list[Candidate]]:
        return [[Candidate(gold0.upper(), SOURCE_BANK, language, 999, stage_scores={"retrieval": 0.9,
                                                                                     "retrieval_rank": 0}),
                 Candidate("retrieved one", SOURCE_BANK, language, 1000,
                           stage_scores={"retrieval": 0.7, "retrieval_rank": 1})] for _ in contexts]

    def generate(contexts: list[Context], language: str) -> list[list[Candidate]]:
        return [[Candidate("generated reply", SOURCE_GENERATED, language)] for _ in contexts]

    ds = build_ranking_dataset(pairs, _annotators(), _bank(), retrieve=retrieve, generate=generate,
                               config=BuilderConfig(k_random=3, k_retrieved=2))
    off = ds.offsets
    for g in range(len(ds.group_sizes)):
        origins = ds.origins[off[g]:off[g + 1]]
        labels = ds.y[off[g]:off[g + 1]].tolist()
        assert [y for y, o in zip(labels, origins, strict=True) if o == "gold"] == [1.0] and sum(labels) == 1.0
        assert origins.count("random") == 3 and origins.count("generated") == 1
    gold_rows = [r for r in range(off[-1]) if ds.origins[r] == "gold"]
    assert 0 < sum(r in off[:-1] for r in gold_rows) < len(gold_rows)  # gold is not always first
    # The first context's gold was retrieved (in other casing): one row, carrying the real retrieval score.
    first = ds.texts[off[0]:off[1]]
    assert [t.lower() for t in first].count(gold0.lower()) == 1
    assert ds.X[gold_rows[0], ds.feature_names.index("retrieval_cosine")] == pytest.approx(0.9)
    assert ds.X[gold_rows[0], ds.feature_names.index("source_generated")] == 0.0


def test_corpus_negatives_come_from_other_conversations_of_the_same_split() -> None:
    pairs = list(context_response_pairs(_dialogues(120)))
    conversation_of = {p.response: p.conversation_id for p in pairs}
    ds = build_ranking_dataset(pairs, _annotators(), _bank(), config=BuilderConfig(k_random=2, k_corpus=3))
    off = ds.offsets
    for g in range(len(ds.group_sizes)):
        rows = range(off[g], off[g + 1])
        corpus = [ds.texts[r] for r in rows if ds.origins[r] == "corpus"]
        assert len(corpus) == 3 and all(ds.y[r] == 0 for r in rows if ds.origins[r] == "corpus")
        for text in corpus:
            assert conversation_of[text] != ds.conversation_ids[g]
            assert split_of(conversation_of[text]) == ds.splits[g]  # a dev reply never trains
    plain = build_ranking_dataset(pairs, _annotators(), _bank(), config=BuilderConfig(k_random=2))
    assert "corpus" not in plain.origins


def test_corpus_negatives_never_cross_corpora() -> None:
    """A reply of another corpus would give the gold away by its style (long Topical-Chat turns beside
    short chitchat ones), so negatives come from the gold's own corpus: the conversation id's prefix."""
    other = [Dialogue(f"other:{i}", "en", tuple(DialogueTurn("AB"[j % 2], f"other corpus {i} {j}") for j in range(4)))
             for i in range(120)]
    pairs = list(context_response_pairs(_dialogues(120) + other))
    corpus_of = {p.response: p.conversation_id.partition(":")[0] for p in pairs}
    ds = build_ranking_dataset(pairs, _annotators(), _bank(), config=BuilderConfig(k_random=2, k_corpus=3))
    off = ds.offsets
    checked = 0
    for g in range(len(ds.group_sizes)):
        own = ds.conversation_ids[g].partition(":")[0]
        negatives = [ds.texts[r] for r in range(off[g], off[g + 1]) if ds.origins[r] == "corpus"]
        assert negatives and all(corpus_of[t] == own for t in negatives)
        checked += len(negatives)
    assert checked >= 3 * len(ds.group_sizes)


def test_similarity_fills_scores_for_gold_and_random() -> None:
    pairs = list(context_response_pairs(_dialogues(20)))

    def retrieve(contexts: list[Context], language: str, k: int) -> list[list[Candidate]]:
        return [[Candidate(f"retrieved {i}", SOURCE_BANK, language, 500 + i,
                           stage_scores={"retrieval": 0.9 - 0.1 * i, "retrieval_rank": i}) for i in range(k)]
                for _ in contexts]

    def similarity(contexts: list[Context], texts: list[list[str]]) -> list[np.ndarray]:
        return [np.full(len(t), 0.75) for t in texts]

    cfg = BuilderConfig(k_random=3, k_retrieved=3)
    without = build_ranking_dataset(pairs, _annotators(), _bank(), retrieve=retrieve, config=cfg)
    assert "retrieval_cosine" in missingness_gaps(without, threshold=0.4)
    ds = build_ranking_dataset(pairs, _annotators(), _bank(), retrieve=retrieve, similarity=similarity, config=cfg)
    assert not np.isnan(ds.X[:, ds.feature_names.index("retrieval_cosine")]).any()
    assert missingness_gaps(ds) == {}
    gold_rank = ds.X[ds.origins.index("gold"), ds.feature_names.index("retrieval_rank")]
    assert gold_rank == 3.0  # two retrieved phrases (0.9, 0.8) score above 0.75; the random ones tie with it


def test_human_labels_are_graded(tmp_path: Path) -> None:
    pairs = list(context_response_pairs(_dialogues(2)))
    path = tmp_path / "labels.jsonl"
    rows = [{"context_id": pairs[0].context_id, "response": "A brand new reply", "label": 2},
            {"context_id": pairs[0].context_id, "response": pairs[0].response, "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    labels = load_human_labels(path)
    ds = build_ranking_dataset(pairs, _annotators(), _bank(), human_labels=labels, config=BuilderConfig(k_random=2))
    first = dict(zip(ds.texts[: ds.group_sizes[0]], ds.y[: ds.group_sizes[0]].tolist(), strict=True))
    assert first[pairs[0].response] == 1.0 and first["A brand new reply"] == 2.0
    assert sorted(first.values()).count(0.0) == 2
    second = ds.y[ds.group_sizes[0]: ds.group_sizes[0] + ds.group_sizes[1]]
    assert sorted(second.tolist()) == [0.0, 0.0, 1.0]  # no labels for this context: binary
    path.write_text(json.dumps({"context_id": "x", "response": "y", "label": 7}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"labels.jsonl:1.*0..3"):
        load_human_labels(path)


def test_save_load_roundtrip_and_tamper(tmp_path: Path) -> None:
    ds = build_ranking_dataset(list(context_response_pairs(_dialogues(10))), _annotators(), _bank(),
                               config=BuilderConfig(k_random=3))
    path = tmp_path / "ds.npz"
    digest = ds.save(path)
    back = RankingDataset.load(path)
    assert back.data_hash == digest == ds.data_hash
    assert np.array_equal(back.X, ds.X, equal_nan=True) and back.texts == ds.texts
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["y"] = np.zeros_like(arrays["y"])
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(DatasetError, match="data hash"):
        RankingDataset.load(tampered)


def test_no_negatives_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="bank or a retriever"):
        build_ranking_dataset(list(context_response_pairs(_dialogues(2))), _annotators(), [])


class BagOfLettersEncoder:
    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.array([[t.count(ch) + 0.01 for ch in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    encode_queries = _encode
    encode_passages = _encode


def test_encoder_similarity_matches_query_passage_cosine() -> None:
    encoder = BagOfLettersEncoder()
    contexts = [Context(()), _dialogues(1)[0].context(3, 2)]
    sims = encoder_similarity(encoder, context_turns=2)(contexts, [[], ["sun talk", "zzz"]])
    assert sims[0].shape == (0,)
    query = contexts[1].as_query_text(2)
    expected = encoder.encode_passages(["sun talk", "zzz"]) @ encoder.encode_queries([query])[0]
    assert np.allclose(sims[1], expected) and sims[1][0] > sims[1][1]


def test_restricting_origins_equals_annotating_the_smaller_pools() -> None:
    """One rich build answers "which negatives?": dropping origins recomputes ranks, gaps and z-scores
    exactly as the annotators would on the smaller pools themselves."""
    pairs = list(context_response_pairs(_dialogues(40)))
    idf = IdfTable.build([t for p in pairs for t in (p.response, p.context.last_text)])
    annotators = build_annotators(AnnotatorResources(idf=idf), names=["retrieval", "lexical", "surface"])

    def retrieve(contexts: list[Context], language: str, k: int) -> list[list[Candidate]]:
        return [[Candidate(f"retrieved {WORDS[i]} {j}", SOURCE_BANK, language, 900 + i,
                           stage_scores={"retrieval": 0.95 - 0.01 * i - 0.001 * j}) for i in range(k)]
                for j, _ in enumerate(contexts)]

    def similarity(contexts: list[Context], texts: list[list[str]]) -> list[np.ndarray]:
        return [np.array([(sum(map(ord, t)) % 97) / 100 for t in group]) for group in texts]

    rich = build_ranking_dataset(pairs, annotators, _bank(), retrieve=retrieve, similarity=similarity,
                                 config=BuilderConfig(k_retrieved=3, k_random=3, k_corpus=2))
    small = restrict_origins(rich, {"gold", "random"}, annotators)
    assert set(small.origins) == {"gold", "random"} and len(small.group_sizes) == len(rich.group_sizes)
    contexts = {p.context_id: p.context for p in pairs}
    cosine = small.feature_names.index("retrieval_cosine")
    changed = 0
    for g, (start, end) in enumerate(zip(small.offsets[:-1], small.offsets[1:], strict=True)):
        pool = [Candidate(small.texts[r], SOURCE_BANK, "en", stage_scores={"retrieval": float(small.X[r, cosine])})
                for r in range(start, end)]
        expected = annotate_all(annotators, [contexts[small.context_ids[g]]], [pool])[0]
        np.testing.assert_allclose(small.X[start:end], expected, rtol=1e-5, atol=1e-5)
        before = [i for i in range(rich.offsets[g], rich.offsets[g + 1]) if rich.origins[i] in {"gold", "random"}]
        changed += int(not np.allclose(small.X[start:end], rich.X[before], equal_nan=True))
    assert changed > 0  # the derived columns really were recomputed, not copied
    with pytest.raises(DatasetError, match="annotators differ"):
        restrict_origins(rich, {"gold"}, build_annotators(names=["retrieval"]))

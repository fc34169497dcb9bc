"""Bi-encoder fine-tuning on a tiny random model: split hygiene, batches, negatives, exact resume, the saved model."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.corpora import Dialogue, DialogueTurn, split_of
from core.models.cache import weights_digest
from core.models.manifest import ModelManifest
from retriever.encoder import Encoder
from retriever.pairs import (
    TrainPair,
    bilingual_pairs,
    cached_pairs,
    duplicate_free_batches,
    mine_hard_negatives,
    pairs_hash,
    sample_pairs,
)
from retriever.train import RetrieverTrainConfig, TrainRunMismatch, train_retriever

from tiny_models import build_tiny_encoder

WORDS = ["tea", "rain", "cats", "music", "chess", "bread", "trains", "snow", "books", "coffee", "maps", "jazz"]


def dialogue(i: int, language: str = "en", turns: int = 4) -> Dialogue:
    texts = [f"{WORDS[(i + t) % len(WORDS)]} talk {i} turn {t}" for t in range(turns)]
    return Dialogue(f"toy:{i}", language, tuple(DialogueTurn("AB"[t % 2], text) for t, text in enumerate(texts)))


def test_pairs_come_only_from_their_split_and_never_share_a_dialogue() -> None:
    dialogues = [dialogue(i) for i in range(300)]
    train = sample_pairs(dialogues, 10_000, split="train", seed=1)
    dev = sample_pairs(dialogues, 10_000, split="dev", seed=1)
    assert train and dev
    assert {split_of(p.conversation_id) for p in train} == {"train"}
    assert {split_of(p.conversation_id) for p in dev} == {"dev"}
    assert not {p.conversation_id for p in train} & {p.conversation_id for p in dev}
    expected_train = sum(3 for d in dialogues if split_of(d.id) == "train")
    assert len(train) == expected_train  # every eligible turn once, nothing else


def test_sampling_spreads_over_dialogues_before_taking_second_turns() -> None:
    dialogues = [dialogue(i) for i in range(200)]
    n_train = sum(split_of(d.id) == "train" for d in dialogues)
    picked = sample_pairs(dialogues, n_train, seed=3)
    assert len({p.conversation_id for p in picked}) == n_train
    assert picked == sample_pairs(dialogues, n_train, seed=3)
    assert picked != sample_pairs(dialogues, n_train, seed=4)
    assert all(p.query.endswith(p.query.split("\n")[-1]) and "turn" in p.response for p in picked)


def test_bilingual_pairs_read_a_russian_text_file_without_english(tmp_path: Path) -> None:
    blocks = [f"- Привет, это шутка {i}?\n- Нет, это ответ {i}.\n- Ну ладно {i}." for i in range(120)]
    path = tmp_path / "dialogues.txt"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    splits = bilingual_pairs({"train": 50, "dev": 5}, path, english=False)
    assert len(splits["train"]) == 50 and len(splits["dev"]) == 5
    assert {p.language for p in splits["train"]} == {"ru"}
    assert not {p.conversation_id for p in splits["train"]} & {p.conversation_id for p in splits["dev"]}
    with pytest.raises(FileNotFoundError, match="koziev"):
        bilingual_pairs({"train": 1}, tmp_path / "missing.tar.xz", english=False)
    with pytest.raises(ValueError, match="unknown split"):
        bilingual_pairs({"valid": 1}, path, english=False)


def toy_pairs(n: int = 24) -> list[TrainPair]:
    pairs = [TrainPair(f"do you like {WORDS[i % 12]}?", f"yes, {WORDS[i % 12]} number {i}", "en", f"c{i}")
             for i in range(n)]
    pairs += [TrainPair(f"ты любишь {i}?", f"да, очень {i}", "ru", f"r{i}") for i in range(n // 2)]
    return pairs


def test_batches_hold_one_language_and_no_repeated_response() -> None:
    pairs = toy_pairs() + [TrainPair("q", "yes, tea number 0", "en", "dup")] * 3
    batches = duplicate_free_batches(pairs, 5, seed=0)
    assert batches == duplicate_free_batches(pairs, 5, seed=0)
    assert batches != duplicate_free_batches(pairs, 5, seed=1)
    for batch in batches:
        assert len({pairs[i].language for i in batch}) == 1
        assert len({pairs[i].response for i in batch}) == len(batch) <= 5
    covered = sorted(i for batch in batches for i in batch)
    assert len(covered) == len(set(covered)) and len(covered) >= len(pairs) - 1


class WordEncoder:
    """Bag-of-words vectors: a query is closest to responses sharing its words."""

    def _vec(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 4096), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in text.replace("?", " ").replace(",", " ").split():
                rows[r, zlib.crc32(word.encode()) % 4096] += 1.0
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)

    encode_queries = _vec
    encode_passages = _vec


def test_hard_negatives_are_close_but_never_gold_or_same_dialogue() -> None:
    pairs = toy_pairs()
    mined = mine_hard_negatives(pairs, WordEncoder(), skip_top=0, depth=10)
    assert [(p.query, p.response) for p in mined] == [(p.query, p.response) for p in pairs]
    for pair in mined:
        assert pair.negative and pair.negative != pair.response
        owner = next(p for p in pairs if p.response == pair.negative)
        assert owner.conversation_id != pair.conversation_id and owner.language == pair.language
    # skip_top=0 takes the closest non-gold response: for the English pairs it shares the topic word.
    english = [p for p in mined if p.language == "en"]
    assert sum(p.response.split()[1] == p.negative.split()[1] for p in english) >= len(english) // 2
    skipped = mine_hard_negatives(pairs, WordEncoder(), skip_top=2, depth=10)
    assert [p.negative for p in skipped] != [p.negative for p in mined]
    assert pairs_hash(skipped) != pairs_hash(mined) != pairs_hash(pairs)


def test_cached_pairs_reuse_only_under_the_same_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def build() -> list[TrainPair]:
        calls.append(1)
        return toy_pairs(4)

    first = cached_pairs(tmp_path / "pairs.json", "k1", build)
    assert cached_pairs(tmp_path / "pairs.json", "k1", build) == first and len(calls) == 1
    cached_pairs(tmp_path / "pairs.json", "k2", build)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("base") / "tiny-base", model_id="tiny-base", seed=5)


def config_for(base_dir: Path, **changes: object) -> RetrieverTrainConfig:
    values: dict = {"base": str(base_dir), "name": "tiny-ft", "batch_size": 4, "max_seq_length": 32, "epochs": 2,
                    "learning_rate": 1e-3, "checkpoint_every": 2, "log_every": 1, "freeze_embeddings": False}
    values.update(changes)
    return RetrieverTrainConfig(**values)


class Interrupt(Exception):
    pass


def weights_of(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(base_dir: Path,
                                                                                        tmp_path: Path) -> None:
    pairs, dev = toy_pairs(), toy_pairs(20)[-10:]
    config = config_for(base_dir)
    straight = train_retriever(config, pairs, tmp_path / "models-a", tmp_path / "work-a", show_progress=False)
    assert straight.steps > 4 and straight.resumed_from == 0

    def stop_at_5(step: int, _loss: float) -> None:
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_retriever(config, pairs, tmp_path / "models-b", tmp_path / "work-b", callback=stop_at_5,
                        show_progress=False)
    assert not (tmp_path / "models-b" / "tiny-ft").exists()
    assert json.loads((tmp_path / "work-b" / "checkpoint" / "state.json").read_text())["step"] == 4
    with pytest.raises(TrainRunMismatch, match="another training run"):
        train_retriever(config_for(base_dir, learning_rate=5e-4), pairs, tmp_path / "models-b",
                        tmp_path / "work-b", show_progress=False)
    resumed = train_retriever(config, pairs, tmp_path / "models-b", tmp_path / "work-b", dev_pairs=dev,
                              show_progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == straight.steps
    a, b = weights_of(straight.model_dir), weights_of(resumed.model_dir)
    base = weights_of(base_dir)
    assert a.keys() == b.keys()
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not np.allclose(a[k], base[k]) for k in a)  # training did change the weights
    report = json.loads(resumed.report_path.read_text())
    assert [h["step"] for h in report["history"]] == list(range(1, straight.steps + 1))
    assert resumed.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "work-b" / "checkpoint").exists()


def test_saved_model_has_a_manifest_and_loads_with_the_encoder(base_dir: Path, tmp_path: Path) -> None:
    pairs = toy_pairs(12)
    result = train_retriever(config_for(base_dir, epochs=1), pairs, tmp_path / "models", tmp_path / "work",
                             dev_pairs=toy_pairs(20), show_progress=False)
    manifest = ModelManifest.load(result.model_dir)
    base = ModelManifest.load(base_dir)
    assert manifest == result.manifest and manifest.kind == "encoder" and manifest.model_id == "tiny-ft"
    assert manifest.weights_sha256 == weights_digest(result.model_dir)
    assert manifest.extra["data_hash"] == pairs_hash(pairs)
    assert manifest.source_package == "repliq-finetune" and manifest.source_version == base.short_id
    assert (manifest.query_prefix, manifest.passage_prefix) == (base.query_prefix, base.passage_prefix)
    assert set(manifest.extra["metrics"]) >= {"dev_r1_of_10", "dev_r1_of_10_base", "final_loss"}
    encoder = Encoder(result.model_dir, device="cpu")
    rows = encoder.encode_queries(["do you like tea?"])
    assert rows.shape == (1, base.dim) and encoder.manifest.short_id == manifest.short_id


def test_bad_configs_are_refused_before_anything_is_written(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="packaged model"):
        train_retriever(config_for(base_dir, name="e5-small"), toy_pairs(), tmp_path / "m", tmp_path / "w")
    with pytest.raises(ValueError, match="batch_size"):
        train_retriever(config_for(base_dir, batch_size=1), toy_pairs(), tmp_path / "m", tmp_path / "w")
    with pytest.raises(ValueError, match="plain directory name"):
        train_retriever(config_for(base_dir, name="../x"), toy_pairs(), tmp_path / "m", tmp_path / "w")
    assert not (tmp_path / "m").exists() and not (tmp_path / "w").exists()

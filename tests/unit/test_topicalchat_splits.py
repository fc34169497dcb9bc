"""Topical-Chat on both sides without leakage: training reads its ``train`` hash split, evaluation the rest.

The fixture files follow the real Topical-Chat layout (``valid_freq.json``/``valid_rare.json``: a JSON
object of conversation id → ``article_url``, ``config``, ``content`` turns with ``agent``, ``message``,
``sentiment``, ``knowledge_source``, ``turn_rating``, and ``conversation_rating``). Every message names
its conversation, so a text seen anywhere can be traced back to the conversation it came from.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from core.corpora import Dialogue, DialogueTurn, split_of, write_jsonl_dialogues
from dialog.cli.main import main
from ranker.evaluation import topicalchat_dataset
from retriever.pairs import TrainPair, bilingual_pairs, pairs_hash, topicalchat_source

TOPICS = ["football", "jazz", "mars", "chess", "poetry", "sushi", "volcanoes", "trains"]


def conversation_id(file_index: int, i: int) -> str:
    return f"t_{uuid.uuid5(uuid.NAMESPACE_URL, f'topicalchat-fixture/{file_index}/{i}')}"


def write_topicalchat(folder: Path, per_file: int = 80, turns: int = 6) -> dict[str, str]:
    """Both validation files; returns every message text → the corpus id of its conversation."""
    folder.mkdir(parents=True, exist_ok=True)
    owner: dict[str, str] = {}
    for file_index, name in enumerate(("valid_freq.json", "valid_rare.json")):
        data: dict[str, Any] = {}
        for i in range(per_file):
            conv_id = conversation_id(file_index, i)
            topic = TOPICS[i % len(TOPICS)]
            content = []
            for t in range(turns):
                message = f"about {topic}, {conv_id} says thing {t}"
                owner[message] = f"topicalchat:{conv_id}"
                content.append({"message": message, "agent": f"agent_{t % 2 + 1}", "sentiment": "Neutral",
                                "knowledge_source": ["FS1", "Personal Knowledge"], "turn_rating": "Good"})
            data[conv_id] = {"article_url": f"https://example.org/{topic}/{i}", "config": "AB"[i % 2],
                             "content": content,
                             "conversation_rating": {"agent_1": "Good", "agent_2": "Excellent"}}
        (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return owner


@pytest.fixture
def topicalchat(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "topicalchat_valid"
    return folder, write_topicalchat(folder)


def test_the_evaluation_set_never_holds_a_train_split_conversation(topicalchat: tuple[Path, dict[str, str]]) -> None:
    folder, owner = topicalchat
    dataset = topicalchat_dataset(folder, n_contexts=1000, pool_size=10, bank_size=None)
    assert dataset.name == "en-topicalchat-heldout" and dataset.meta["split"] == "dev+test"
    held_out = {conv for conv in owner.values() if split_of(conv) != "train"}
    assert dataset.meta["dialogues"] == len(held_out) and 0 < len(held_out) < len(set(owner.values()))
    assert {ex.conversation_id for ex in dataset.examples} == held_out  # every held-out one, nothing else
    texts = [*(turn.text for ex in dataset.examples for turn in ex.context.turns),
             *(text for ex in dataset.examples for text in ex.candidates), *dataset.bank]
    assert {split_of(owner[text]) for text in texts} == {"dev", "test"}  # contexts, distractors, bank alike
    with pytest.raises(TypeError):  # the held-out splits are not up to the caller
        topicalchat_dataset(folder, split="train", pool_size=10)
    (folder / "valid_rare.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid_rare\.json"):
        topicalchat_dataset(folder)


def test_training_pairs_come_only_from_the_train_split(topicalchat: tuple[Path, dict[str, str]],
                                                        tmp_path: Path) -> None:
    folder, owner = topicalchat
    splits = bilingual_pairs({}, None, english=False,
                             extra=[topicalchat_source(folder, {"train": 10_000, "dev": 10_000})])
    train, dev = splits["train"], splits["dev"]
    assert train and dev
    assert {split_of(p.conversation_id) for p in train} == {"train"}
    assert {split_of(owner[p.response]) for p in train} == {"train"}
    assert all(split_of(owner[line]) == "train" for p in train for line in p.query.split("\n"))
    assert {split_of(p.conversation_id) for p in dev} == {"dev"}  # the in-training dev metric
    assert all(p.language == "en" and p.conversation_id.startswith("topicalchat:t_") for p in train + dev)
    assert len(train) == 5 * sum(split_of(c) == "train" for c in set(owner.values()))  # every turn after the first

    russian = tmp_path / "dialogues.txt"
    russian.write_text("\n\n".join(f"- Привет {i}?\n- Ответ {i}.\n- Ладно {i}." for i in range(60)),
                       encoding="utf-8")
    alone = bilingual_pairs({"train": 20, "dev": 5}, russian, english=False)
    mixed = bilingual_pairs({"train": 20, "dev": 5}, russian, english=False,
                            extra=[topicalchat_source(folder, {"train": 30, "dev": 7})])
    assert mixed["train"][:20] == alone["train"] and len(mixed["train"]) == 50 and len(mixed["dev"]) == 12
    assert pairs_hash(mixed["train"]) != pairs_hash(alone["train"])  # the manifest's data hash follows the data
    with pytest.raises(ValueError, match="topicalchat: pair counts"):
        bilingual_pairs({}, None, english=False, extra=[topicalchat_source(folder, {"train": -1})])


def toy_chitchat(n: int = 60) -> Iterator[Dialogue]:
    for i in range(n):
        texts = [f"hi there {i}", f"hello friend {i}", f"how are you {i}?", f"fine thanks {i}"]
        yield Dialogue(f"chitchat:{i}", "en", tuple(DialogueTurn("AB"[t % 2], x) for t, x in enumerate(texts)))


class Captured:
    """Stands in for ``train_retriever``: keeps what the command would have trained on."""

    def __init__(self) -> None:
        self.pairs: list[TrainPair] = []
        self.dev_pairs: list[TrainPair] = []

    def __call__(self, config: Any, pairs: Sequence[TrainPair], models_dir: Path, work_dir: Path, *,
                 dev_pairs: Sequence[TrainPair] = (), **_: Any) -> argparse.Namespace:
        self.pairs, self.dev_pairs = list(pairs), list(dev_pairs)
        return argparse.Namespace(model_dir=models_dir / config.name, report_path=work_dir / "r.json",
                                  plot_path=work_dir / "p.png")


def test_train_retriever_command_adds_topicalchat_and_corpus_pairs(home: Path, tmp_path: Path,
                                                                     topicalchat: tuple[Path, dict[str, str]],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import retriever.pairs
    import retriever.train

    folder, owner = topicalchat
    captured = Captured()
    monkeypatch.setattr(retriever.train, "train_retriever", captured)
    monkeypatch.setattr(retriever.pairs, "read_chitchat", toy_chitchat)
    corpus = tmp_path / "mine.jsonl"
    write_jsonl_dialogues(corpus, [Dialogue(f"mine:{i}", "uk", tuple(DialogueTurn("AB"[t % 2], f"привіт {i} {t}")
                                                                       for t in range(3))) for i in range(100)])
    assert main(["train", "retriever", "--per-language", "15", "--topicalchat", str(folder),
                 "--topicalchat-pairs", "25", "--corpus", str(corpus), "--corpus-pairs", "9"]) == 0
    by_corpus = {name: [p for p in captured.pairs if p.conversation_id.startswith(name + ":")]
                 for name in ("chitchat", "topicalchat", "mine")}
    assert [len(by_corpus[name]) for name in ("chitchat", "topicalchat", "mine")] == [15, 25, 9]
    assert len(captured.pairs) == 49
    assert {split_of(p.conversation_id) for p in captured.pairs} == {"train"}
    assert {split_of(owner[p.response]) for p in by_corpus["topicalchat"]} == {"train"}
    dev_topicalchat = [p for p in captured.dev_pairs if p.conversation_id.startswith("topicalchat:")]
    assert dev_topicalchat and {split_of(p.conversation_id) for p in captured.dev_pairs} == {"dev"}
    capsys.readouterr()
    assert main(["train", "retriever", "--topicalchat-pairs", "25"]) == 2
    assert "--topicalchat-pairs needs --topicalchat" in capsys.readouterr().err


def test_blender_training_reads_only_the_train_split(topicalchat: tuple[Path, dict[str, str]]) -> None:
    """`repliq train blender --topicalchat` must not see a conversation `repliq eval ranking` scores."""
    from dialog.jobs.train_blender import read_topicalchat_train

    folder, _ = topicalchat
    train = read_topicalchat_train(folder)
    assert train and all(split_of(d.id) == "train" for d in train)
    held_out = {ex.conversation_id for ex in topicalchat_dataset(folder, n_contexts=1000, pool_size=10).examples}
    assert held_out and not held_out & {d.id for d in train}

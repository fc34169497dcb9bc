from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from core.corpora import (
    CorpusFormatError,
    Dialogue,
    DialogueTurn,
    context_response_pairs,
    read_anekdot_dialogues,
    read_chitchat,
    read_convai2,
    read_jsonl_dialogues,
    read_topicalchat,
    split_of,
    write_jsonl_dialogues,
)


def _dialogue(conv_id: str, texts: list[str], speakers: str = "AB") -> Dialogue:
    turns = tuple(DialogueTurn(speakers[i % len(speakers)], t) for i, t in enumerate(texts))
    return Dialogue(conv_id, "en", turns, {"source": "test"})


def test_jsonl_roundtrip_keeps_turn_meta(tmp_path: Path) -> None:
    d = Dialogue("x:1", "ru", (DialogueTurn("A", "Привет", {"evaluation_score": 1}), DialogueTurn("B", "Здравствуй")),
                 {"ratings": {"witty": 3}})
    path = tmp_path / "d.jsonl"
    assert write_jsonl_dialogues(path, [d, _dialogue("x:2", ["a", "b"])]) == 2
    back = list(read_jsonl_dialogues(path))
    assert back[0] == d
    assert back[1].turns[1].text == "b"


def test_jsonl_bad_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "language": "en", "turns": []}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:2"):
        list(read_jsonl_dialogues(path))
    path.write_text(json.dumps({"id": "a", "turns": [{"text": "hi"}]}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="language"):
        list(read_jsonl_dialogues(path))


def test_split_is_stable_and_roughly_proportional() -> None:
    ids = [f"conv-{i}" for i in range(20000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    counts = Counter(splits)
    assert abs(counts["dev"] / len(ids) - 0.1) < 0.01
    assert abs(counts["test"] / len(ids) - 0.1) < 0.01
    assert Counter(split_of(i, dev_fraction=0.0, test_fraction=0.5) for i in ids)["dev"] == 0
    with pytest.raises(ValueError, match="sum to < 1"):
        split_of("x", dev_fraction=0.6, test_fraction=0.5)


def test_pairs_window_ids_and_speaker_change() -> None:
    d = _dialogue("c:1", ["t0", "t1", "t2", "t3", "t4"])
    pairs = list(context_response_pairs([d], context_turns=2))
    assert [p.context_id for p in pairs] == ["c:1#1", "c:1#2", "c:1#3", "c:1#4"]
    assert [t.text for t in pairs[-1].context.turns] == ["t2", "t3"]
    assert pairs[-1].response == "t4"
    same = _dialogue("c:2", ["a", "b", "c"], speakers="AAB")
    assert [p.response for p in context_response_pairs([same])] == ["c"]
    assert [p.response for p in context_response_pairs([same], skip_same_speaker=False)] == ["b", "c"]


def test_anekdot_reader_on_a_small_archive(tmp_path: Path) -> None:
    text = "- Как дела?\n- Хорошо.\n\n\n\n- Ты кто?\n- Я   никто.\n- Врёшь!\n\n\n"
    archive = tmp_path / "a.tar.xz"
    data = text.encode("utf-8")
    with tarfile.open(archive, "w:xz") as tf:
        info = tarfile.TarInfo("dialogues.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    dialogues = list(read_anekdot_dialogues(archive))
    assert [len(d.turns) for d in dialogues] == [2, 3]
    assert dialogues[1].turns[1] == DialogueTurn("B", "Я никто.")
    assert all(d.language == "ru" and d.id.startswith("anekdot:") for d in dialogues)
    assert dialogues[0].id != dialogues[1].id
    assert [d.id for d in read_anekdot_dialogues(archive)] == [d.id for d in dialogues]


def test_anekdot_reader_on_real_file(shared_data: Path) -> None:
    dialogues = list(read_anekdot_dialogues(shared_data / "ru" / "koziev_anekdot_dialogues.tar.xz", limit=50))
    assert len(dialogues) == 50
    assert all(len(d.turns) >= 1 and not d.turns[0].text.startswith("-") for d in dialogues)


def test_convai2_keeps_thumbs_and_sender_class(shared_data: Path) -> None:
    dialogues = list(read_convai2(shared_data / "convai2" / "data_intermediate.json"))
    turns = [t for d in dialogues for t in d.turns]
    scored = [t.meta["evaluation_score"] for t in turns if t.meta.get("evaluation_score") is not None]
    assert set(scored) <= {0, 1} and len(set(scored)) == 2
    assert {t.meta["sender_class"] for t in turns} >= {"Human", "Bot"}
    assert len({d.id for d in dialogues}) == len(dialogues)


def test_topicalchat_keeps_turn_ratings(shared_data: Path) -> None:
    dialogues = list(read_topicalchat(shared_data / "topicalchat_valid" / "valid_rare.json", limit=5))
    assert len(dialogues) == 5
    assert all(d.meta["subset"] == "valid_rare" for d in dialogues)
    assert all("turn_rating" in t.meta for t in dialogues[0].turns)


def test_chitchat_keeps_ratings() -> None:
    dialogues = list(read_chitchat(limit=40))
    assert len(dialogues) == 40
    rated = [d.meta["ratings"] for d in dialogues if "ratings" in d.meta]
    assert rated and all(set(r) == {"witty", "interesting", "upbeat"} for r in rated)
    assert all(d.id.startswith("chitchat:") and d.language == "en" for d in dialogues)

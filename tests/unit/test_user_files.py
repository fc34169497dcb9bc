"""Every reader of user files names the file and the line of a bad byte and says what to do.

Outside-run defect: an answers file cut off in the middle of a UTF-8 character failed with
``'utf-8' codec can't decode byte 0xd0 in position 199``, naming neither the file nor the line.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from core.bank.formats import read_phrases
from core.corpora import CorpusFormatError, read_anekdot_dialogues, read_convai2, read_jsonl_dialogues, read_topicalchat
from core.types import Context, Turn
from core.user_files import UserFileError, decode_user_bytes
from dialog.labeling import LabelingError, LabelStore, export_pointwise, import_labels, read_contexts
from dialog.labeling.tasks import load_export

CUT = "Приве".encode() + "т".encode()[:1]  # the last letter lost its second byte, as in the outside run


def _cut_off(path: Path, good: bytes) -> Path:
    path.write_bytes(good + CUT)
    return path


def test_the_decoder_names_line_and_cause() -> None:
    with pytest.raises(UserFileError) as info:
        decode_user_bytes(b"one\ntwo\nab" + CUT, "answers.jsonl")
    assert str(info.value).startswith("answers.jsonl: line 3: byte 13 (0xd1)")
    assert "cut off" in info.value.reason
    with pytest.raises(UserFileError, match=r"x.csv: line 2: .*re-save it as UTF-8"):
        decode_user_bytes(b"a\ncaf\xe9 au lait\n", "x.csv")
    with pytest.raises(UserFileError, match="line 41"):  # line-by-line readers pass their line number
        decode_user_bytes(b"caf\xe9\n", "x.jsonl", first_line=41)


def test_ssa_answers_cut_off_mid_character(tmp_path: Path) -> None:
    contexts = {f"c{i}": Context((Turn("user", f"line {i}"),)) for i in range(3)}
    export_pointwise(contexts, {"x": lambda c: f"Sure: {c.last_text}"}, tmp_path / "e", overlap=1, honeypot_rate=0)
    tasks = load_export(tmp_path / "e").tasks
    rows = [{"task_id": t, "rater": "r1", "sensible": "yes", "specific": "no"} for t in tasks]
    good = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path = _cut_off(tmp_path / "answers.jsonl", good + b'{"task_id": "')
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(LabelingError) as info:
            import_labels(tmp_path / "e", path, "jsonl", store)
        assert store.count() == 0
    message = str(info.value)
    assert "answers.jsonl: line 4:" in message and "cut off" in message and "nothing imported" in message
    contexts_file = _cut_off(tmp_path / "contexts.jsonl", b'{"id": "a", "turns": []}\n')
    with pytest.raises(LabelingError, match=r"contexts.jsonl: line 2: .*cut off"):
        read_contexts(contexts_file)


@pytest.mark.parametrize("name,good", [
    ("in.csv", b"text,language\nHello.,en\n"),
    ("in.jsonl", b'{"text": "Hello.", "language": "en"}\n'),
    ("in.yml", b"language: en\nconversations:\n- - Hi\n  - Hello.\n"),
])
def test_bank_import_files_cut_off(tmp_path: Path, name: str, good: bytes) -> None:
    path = _cut_off(tmp_path / name, good + b"x")
    rows, errors = read_phrases(path)
    assert rows == [] and len(errors) == 1
    assert (errors[0].file, errors[0].line) == (str(path), good.count(b"\n") + 1)
    assert "cut off" in errors[0].reason and "0xd1" in errors[0].reason


def test_corpus_readers_cut_off(tmp_path: Path) -> None:
    line = json.dumps({"id": "a", "language": "ru", "turns": [{"speaker": "A", "text": "да"}]}).encode() + b"\n"
    with pytest.raises(CorpusFormatError, match=r"d.jsonl: line 3: .*cut off"):
        list(read_jsonl_dialogues(_cut_off(tmp_path / "d.jsonl", line * 2 + b'{"id": "')))
    with pytest.raises(CorpusFormatError, match=r"valid_freq.json: line 2: .*cut off"):
        list(read_topicalchat(_cut_off(tmp_path / "valid_freq.json", b'{"t1": {"content": [\n{"message": "')))
    (tmp_path / "convai.json").write_text("[\n{", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"convai.json: line 2: column 2: not valid JSON"):
        list(read_convai2(tmp_path / "convai.json"))
    with pytest.raises(CorpusFormatError, match=r"jokes.txt: line 3: .*cut off"):
        list(read_anekdot_dialogues(_cut_off(tmp_path / "jokes.txt", b"- a\n- b\n")))
    data = b"- a\n\n- b\n" + CUT
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        info = tarfile.TarInfo("dialogues.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (tmp_path / "jokes.tar.xz").write_bytes(buffer.getvalue())
    with pytest.raises(CorpusFormatError, match=r"jokes.tar.xz:dialogues.txt: line 4: .*cut off"):
        list(read_anekdot_dialogues(tmp_path / "jokes.tar.xz"))

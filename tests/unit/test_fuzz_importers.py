"""Fuzzing every importer of user files: `bank import` (csv, jsonl, yaml), `ssa import` (jsonl, toloka,
labelstudio) and the corpus readers.

A valid file is damaged at random (cut anywhere, bytes inserted or replaced, lines dropped, doubled or
swapped, hostile text or JSON spliced in). Pass: the importer either takes the whole file or refuses the
whole file with errors naming it and a line, and a refused file leaves the bank (or the label store)
byte-for-byte unchanged (content checksums before and after). No other exception type may escape.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bank.formats import write_phrases
from core.bank.store import PhraseBank, PhraseRow
from core.corpora import (
    CorpusFormatError,
    read_anekdot_dialogues,
    read_convai2,
    read_jsonl_dialogues,
    read_topicalchat,
)
from core.types import Context, Turn
from dialog.labeling import LabelingError, LabelStore, export_pointwise, import_labels
from dialog.labeling.formats import write_answers
from dialog.labeling.tasks import load_export

EXAMPLES = int(os.environ.get("REPLIQ_FUZZ_FILES", "40"))  # per format; bench/fuzz.py runs more
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
HOSTILE = ["\x00", "\xff", "\ufeff", "\u202e", "\u200b", "\r", "\r\n", '"', "'", ",", "\t", ":", "- ", "{", "}", "[",
           "]", "\\", "null", "true", "1e999", "NaN", "😀", "Привет", "&anchor", "*alias", "!!python/object", "---"]


def content_checksum(path: Path) -> str:
    """Every table's rows (SQLite's own dump), hashed: equal exactly when nothing was written."""
    with sqlite3.connect(path) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode("utf-8")).hexdigest()


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


def _reshaped(draw: st.DrawFn, text: bytes) -> bytes | None:
    """``text`` (one JSON document) with one node, chosen at random, replaced by random JSON; None if not JSON."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    nodes: list[tuple[object, object]] = []  # (container, key) of every node below the root

    def walk(node: object) -> None:
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in children:
            nodes.append((node, key))
            walk(child)

    walk(doc)
    if not nodes:
        return json.dumps(draw(JSON_VALUES)).encode()
    container, key = nodes[draw(st.integers(0, len(nodes) - 1))]
    container[key] = draw(JSON_VALUES)  # type: ignore[index]
    return json.dumps(doc, ensure_ascii=False, indent=1 if b"\n " in text else None).encode()


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with one to three random injuries."""
    data = original
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        kind = draw(st.sampled_from(["cut", "insert", "replace", "drop", "double", "swap", "splice", "json",
                                     "reshape", "reshape"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        row = draw(st.integers(0, max(0, len(lines) - 1)))
        if kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
        elif kind == "replace" and data:
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif kind in ("drop", "double", "swap"):
            other = draw(st.integers(0, max(0, len(lines) - 1)))
            if kind == "drop":
                del lines[row]
            elif kind == "double":
                lines.insert(row, lines[row])
            else:
                lines[row], lines[other] = lines[other], lines[row]
            data = b"\n".join(lines)
        elif kind == "splice":
            text = draw(st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8), max_size=4).map("".join))
            data = data[:at] + text.encode("utf-8", "surrogatepass") + data[at:]
        elif kind == "json":
            lines.insert(row, json.dumps(draw(JSON_VALUES)).encode())
            data = b"\n".join(lines)
        elif (whole := _reshaped(draw, data)) is not None:  # a JSON file
            data = whole
        elif (line := _reshaped(draw, lines[row])) is not None:  # one line of a JSONL file
            data = b"\n".join([*lines[:row], line, *lines[row + 1:]])
    return data


# ---- bank import -----------------------------------------------------------------------------------------

BANK_ROWS = [PhraseRow("Hello there.", "en", ("greeting",)), PhraseRow("Привет, как дела?", "ru"),
             PhraseRow('She said "yes", then left.', "en", ("small talk", "quotes"), "draft"),
             PhraseRow("Line one: two", "en"), PhraseRow("Ещё одна фраза.", "ru", (), "approved", "import", "CC0")]


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for fmt in ("csv", "jsonl", "yml"):
        write_phrases(root / f"in.{fmt}", BANK_ROWS)
        out[fmt] = (root / f"in.{fmt}").read_bytes()
    return out


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhraseBank]:
    with PhraseBank(tmp_path_factory.mktemp("bank") / "bank.sqlite") as store:
        store.add("Already here.", "en")
        yield store


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "yml"])
def test_bank_import_takes_the_whole_file_or_nothing(fmt: str, originals: dict[str, bytes], bank: PhraseBank,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp(f"bank-{fmt}") / f"fuzzed.{fmt}"
    tally = {"refused": 0, "taken": 0}

    @FUZZ
    @given(damaged(originals[fmt]))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        before = content_checksum(bank.path)
        report = bank.import_file(path, who="fuzz")
        if report.errors:
            tally["refused"] += 1
            assert not report.applied and not report.added_ids
            assert content_checksum(bank.path) == before, "a refused file changed the bank"
            for error in report.errors:
                assert error.file == str(path) and error.line >= 1 and error.reason.strip(), error
        else:
            tally["taken"] += 1
            assert report.applied and len(report.added_ids) == report.accepted
            assert (content_checksum(bank.path) != before) == bool(report.added_ids)

    check()
    assert tally["refused"] > EXAMPLES // 4, tally  # the damage was real often enough to test refusal


# ---- ssa import ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    root = tmp_path_factory.mktemp("ssa")
    contexts = {f"c{i}": Context((Turn("user", f"фраза {i}"),)) for i in range(3)}
    systems = {"x": lambda c: f"Sure: {c.last_text}", "y": lambda c: f"Hmm, {c.last_text}?"}
    out = {}
    for fmt in ("jsonl", "toloka", "labelstudio"):
        export_pointwise(contexts, systems, root / fmt, fmt, overlap=2, honeypot_rate=0)
        info = load_export(root / fmt)
        answers = [{"task_id": t, "rater": f"r{n}", "sensible": n % 2 == 0, "specific": False}
                   for t in info.tasks for n in range(2)]
        path = write_answers(answers, root / f"answers-{fmt}", fmt, info.tasks, info.contexts, info.mode)
        out[fmt] = (root / fmt, path.read_bytes())
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "toloka", "labelstudio"])
def test_ssa_import_takes_the_whole_file_or_nothing(fmt: str, export: dict[str, tuple[Path, bytes]],
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp(f"labels-{fmt}")
    export_dir, original = export[fmt]
    path = root / "answers"

    @FUZZ
    @given(damaged(original))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        labels = root / "labels.sqlite"
        labels.unlink(missing_ok=True)
        with LabelStore(labels) as store:
            before = content_checksum(labels)
            try:
                summary = import_labels(export_dir, path, fmt, store)
            except LabelingError as exc:
                assert content_checksum(labels) == before, "a refused file changed the label store"
                assert str(path) in str(exc) or all(p.source == path.name and p.where for p in exc.problems), exc
                return
            assert store.count() == summary["imported"] > 0

    check()


# ---- corpus readers --------------------------------------------------------------------------------------

def _anekdot_tar(text: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        info = tarfile.TarInfo("dialogues.txt")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


TURNS = [{"speaker": "A", "text": "Привет"}, {"speaker": "B", "text": "Hi there"}]
CORPORA = {
    "jsonl": ("d.jsonl", read_jsonl_dialogues, b"".join(
        json.dumps({"id": f"x:{i}", "language": "ru", "turns": TURNS, "meta": {}}, ensure_ascii=False).encode()
        + b"\n" for i in range(3))),
    "topicalchat": ("valid_freq.json", read_topicalchat, json.dumps(
        {f"t{i}": {"config": "A", "content": [{"agent": "agent_1", "message": "hi", "sentiment": "Neutral",
                                               "turn_rating": "Good"}, {"agent": "agent_2", "message": "hey"}]}
         for i in range(2)}, indent=1).encode()),
    "convai2": ("convai.json", read_convai2, json.dumps(
        [{"dialog": [{"sender": "a", "text": "hi", "sender_class": "Human", "evaluation_score": 1},
                     {"sender": "b", "text": "hello", "sender_class": "Bot"}], "eval_score": 4}] * 2,
        indent=1).encode()),
    "anekdot": ("jokes.txt", read_anekdot_dialogues, "- Привет\n- Пока\n\n- Как дела?\n- Хорошо\n".encode()),
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_readers_read_or_name_the_problem(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    filename, reader, original = CORPORA[name]
    path = tmp_path_factory.mktemp(f"corpus-{name}") / filename

    @FUZZ
    @given(damaged(original))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            dialogues = list(reader(path))
        except CorpusFormatError as exc:
            assert str(exc).startswith(str(path)), exc
            return
        assert all(d.id and d.turns and all(isinstance(t.text, str) for t in d.turns) for d in dialogues)

    check()


def test_a_cut_off_anekdot_archive_is_named(tmp_path: Path) -> None:
    path = tmp_path / "jokes.tar.xz"
    data = _anekdot_tar("- Привет\n- Пока\n".encode() * 50)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusFormatError, match=r"jokes.tar.xz: .*(cut off|not a readable)"):
        list(read_anekdot_dialogues(path))

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bank.formats import FormatError, PhraseRow, read_phrases, write_phrases
from core.bank.store import PhraseBank


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[PhraseBank]:
    store = PhraseBank(tmp_path / "bank.sqlite")
    yield store
    store.close()


def snapshot(bank: PhraseBank) -> tuple:
    with sqlite3.connect(bank.path) as conn:
        return list(conn.iterdump()), bank.stats(), bank.revision


def fields(phrase: object) -> tuple:
    names = ("text", "language", "tags", "status", "source", "license", "author")
    return tuple(getattr(phrase, name) for name in names)


def test_csv_with_a_bad_row_changes_nothing(bank: PhraseBank, tmp_path: Path) -> None:
    bank.add("Already here.", "en")
    before = snapshot(bank)
    path = tmp_path / "in.csv"
    path.write_text(
        "text,language,tags,status\n"
        "Hello there.,en,greeting|small talk,approved\n"
        '"Two, with a comma",en,,draft,extra\n'
        "Three.,en,,publish\n"
        "\n"
        "Already here.,en,,\n",
        encoding="utf-8",
    )
    report = bank.import_file(path, who="ann")
    assert not report.applied
    assert [(e.file, e.line) for e in report.errors] == [(str(path), 3), (str(path), 4), (str(path), 6)]
    assert "5 columns" in report.errors[0].reason or "got 5" in report.errors[0].reason
    assert "publish" in report.errors[1].reason and "#1" in report.errors[2].reason
    assert snapshot(bank) == before
    rows, _ = read_phrases(path)
    assert rows[0].tags == ("greeting", "small talk") and rows[0].origin.line == 2


def test_broken_json_line_changes_nothing(bank: PhraseBank, tmp_path: Path) -> None:
    before = snapshot(bank)
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "Fine.", "language": "en"}\n{"text": "broken", \n["a list"]\n'
                    '{"text": "Typo.", "langauge": "en"}\n{"text": 5, "language": "en"}\n', encoding="utf-8")
    report = bank.import_file(path, who="ann")
    assert not report.applied and [e.line for e in report.errors] == [2, 3, 4, 5]
    assert "broken JSON" in report.errors[0].reason and "langauge" in report.errors[2].reason
    assert "must be a string" in report.errors[3].reason
    assert snapshot(bank) == before


def test_bad_yaml_changes_nothing(bank: PhraseBank, tmp_path: Path) -> None:
    before = snapshot(bank)
    folder = tmp_path / "english"
    folder.mkdir()
    broken = folder / "broken.yml"
    broken.write_text("categories:\n- a\nconversations:\n- - Hi\n  - 'Hello\n  - Bye\n", encoding="utf-8")
    report = bank.import_file(broken, who="ann")
    assert not report.applied and len(report.errors) == 1
    assert report.errors[0].file == str(broken) and report.errors[0].line >= 5
    assert "YAML" in report.errors[0].reason
    shape = folder / "shape.yml"
    shape.write_text("categories: [a]\nconversations:\n- - Hi\n  - Fine.\n- just a string\n", encoding="utf-8")
    report = bank.import_file(shape, who="ann")
    assert not report.applied and [e.line for e in report.errors] == [5]
    assert snapshot(bank) == before


def test_chatterbot_yaml_takes_replies_categories_and_folder_language(tmp_path: Path) -> None:
    folder = tmp_path / "russian"
    folder.mkdir()
    path = folder / "talk.yml"
    path.write_text(
        "categories:\n- Разговоры\nconversations:\n- - Привет!\n  - Здравствуй.\n  - Как дела?\n"
        "- - Yes\n  - yes\n  - 42\n",
        encoding="utf-8",
    )
    rows, errors = read_phrases(path, defaults={"source": "chatterbot-corpus"})
    assert errors == []
    assert [(r.text, r.origin.line) for r in rows] == [("Здравствуй.", 5), ("Как дела?", 6), ("yes", 8),
                                                        ("42", 9)]
    assert {r.language for r in rows} == {"ru"} and {r.source for r in rows} == {"chatterbot-corpus"}
    assert rows[0].tags == ("Разговоры",)
    override, _ = read_phrases(path, defaults={"language": "uk"})
    assert {r.language for r in override} == {"uk"}
    elsewhere = tmp_path / "misc.yml"
    elsewhere.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    unknown, _ = read_phrases(elsewhere)
    assert {r.language for r in unknown} == {""}  # the store then asks for a language


def test_round_trip_through_every_format_loses_nothing(bank: PhraseBank, tmp_path: Path) -> None:
    samples = [
        ("Привет, как дела?", "ru", ["greeting", "тег с пробелом"], "approved", "editor", "CC0-1.0", "Аня"),
        ('She said "yes", then left.', "en", [], "draft", "import", "", ""),
        ("yes", "en", ["bare"], "retired", "editor", "MIT", "bob"),
        ("- 42: null", "en", ["yaml-ish", "greeting"], "approved", "chatterbot-corpus", "BSD-3-Clause", ""),
        ("Добрий день!", "uk", ["greeting"], "approved", "editor", "", "Ольга"),
        ("#not a comment", "en", [], "approved", "editor", "", ""),
    ]
    for text, language, tags, status, source, license_, author in samples:
        bank.add(text, language, tags=tags, status=status, source=source, license=license_, author=author)
    expected = sorted(fields(p) for p in bank.phrases())
    for fmt in ("csv", "jsonl", "yaml"):
        path = tmp_path / f"export.{fmt}"
        assert bank.export(path) == len(samples)
        with PhraseBank(tmp_path / f"copy-{fmt}.sqlite") as copy:
            report = copy.import_file(path, who="ann")
            assert report.applied, report.errors
            assert sorted(fields(p) for p in copy.phrases()) == expected, fmt


def test_empty_export_round_trips(tmp_path: Path) -> None:
    for fmt in ("csv", "jsonl", "yaml"):
        path = tmp_path / f"empty.{fmt}"
        write_phrases(path, [], fmt)
        assert read_phrases(path) == ([], [])


def test_defaults_fill_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("text,license\nHi there.,\nBye now.,MIT\n", encoding="utf-8")
    rows, errors = read_phrases(path, defaults={"language": "en", "source": "forum", "license": "CC-BY-4.0"})
    assert errors == []
    assert [(r.language, r.source, r.license, r.status) for r in rows] == [
        ("en", "forum", "CC-BY-4.0", "approved"), ("en", "forum", "MIT", "approved")]


def test_header_encoding_and_format_errors(tmp_path: Path) -> None:
    bad_header = tmp_path / "a.csv"
    bad_header.write_text("txt,language\nHi.,en\n", encoding="utf-8")
    rows, errors = read_phrases(bad_header)
    assert rows == [] and errors[0].line == 1 and "'text' column" in errors[0].reason
    latin = tmp_path / "b.jsonl"
    latin.write_bytes(b'{"text": "ok", "language": "en"}\n{"text": "caf\xe9", "language": "fr"}\n')
    rows, errors = read_phrases(latin)
    assert errors[0].line == 2 and "UTF-8" in errors[0].reason
    with pytest.raises(FormatError, match=r"\.csv, \.jsonl or \.yml"):
        read_phrases(tmp_path / "c.txt")
    with pytest.raises(FormatError, match="unknown phrase file format"):
        read_phrases(bad_header, fmt="xml")


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_phrases(path, [PhraseRow("Kept.", "en")])
    original = path.read_bytes()
    with pytest.raises(FormatError, match="'\\|'"):
        write_phrases(path, [PhraseRow("New.", "en"), PhraseRow("Bad.", "en", tags=("a|b",))])
    assert path.read_bytes() == original
    assert list(tmp_path.iterdir()) == [path]

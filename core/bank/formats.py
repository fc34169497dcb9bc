"""Phrase files an editor can read and write: CSV, JSON Lines and chatterbot-style YAML.

Readers never raise on bad content: they return every row they could read plus a ``RowError`` (file,
line, reason) for every one they could not, so an editor fixes a file in one pass instead of one error
at a time. Whether a row makes sense for the bank (language, status, duplicates) is the store's job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import yaml

from core.atomic import atomic_write_text
from core.user_files import UserFileError, decode_user_bytes

FIELDS = ("text", "language", "tags", "status", "source", "license", "author")
FORMATS = ("csv", "jsonl", "yaml")
TAG_SEPARATOR = "|"
DEFAULTS: Mapping[str, str] = {"language": "", "status": "approved", "source": "import", "license": "",
                               "author": ""}
# Columns a bank export may carry that an import recomputes; accepted and ignored.
_IGNORED = frozenset({"id", "created", "updated", "version"})
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yml": "yaml", ".yaml": "yaml"}
# chatterbot-corpus names its folders by language name, not by ISO code.
_DIR_LANGUAGES = {"russian": "ru", "english": "en", "ukrainian": "uk", "german": "de", "french": "fr",
                  "spanish": "es", "italian": "it", "portuguese": "pt", "turkish": "tr"}
_YAML_SCALAR_KEYS = ("language", "status", "source", "license", "author")


class Origin(NamedTuple):
    file: str
    line: int


NO_ORIGIN = Origin("", 0)


@dataclass(frozen=True)
class PhraseRow:
    text: str
    language: str
    tags: tuple[str, ...] = ()
    status: str = "approved"
    source: str = "import"
    license: str = ""
    author: str = ""
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class FormatError(ValueError):
    """A file whose format cannot be told or is not supported."""


class PhraseLike(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def language(self) -> str: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def status(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def license(self) -> str: ...
    @property
    def author(self) -> str: ...


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt.lower() not in FORMATS:
            raise FormatError(f"unknown phrase file format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt.lower()
    found = _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise FormatError(
            f"cannot tell the format of {path} from its extension; name it .csv, .jsonl or .yml, "
            f"or pass the format explicitly ({', '.join(FORMATS)})"
        )
    return found


def split_tags(value: object) -> tuple[str, ...] | None:
    """Tags from a list or a ``|``-separated string; ``None`` when the value has another type."""
    if isinstance(value, str):
        items: Iterable[object] = value.split(TAG_SEPARATOR)
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    if not all(isinstance(item, str) for item in items):
        return None
    return tuple(tag.strip() for tag in items if isinstance(tag, str) and tag.strip())


def _make_row(values: Mapping[str, object], defaults: Mapping[str, object], origin: Origin) -> PhraseRow | str:
    """A row, or the reason it cannot be one. Empty or missing values fall back to ``defaults``."""
    unknown = sorted(set(values) - set(FIELDS) - _IGNORED)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}"
    fields: dict[str, str] = {}
    for name in FIELDS:
        if name == "tags":
            continue
        value = values.get(name)
        if value is None or value == "":
            value = defaults.get(name, DEFAULTS.get(name, ""))
        if not isinstance(value, str):
            return f"field {name!r} must be a string, got {type(value).__name__}"
        fields[name] = value
    raw_tags = values.get("tags")
    if raw_tags is None or raw_tags == "":
        raw_tags = defaults.get("tags", ())
    tags = split_tags(raw_tags)
    if tags is None:
        return f"'tags' must be a list of strings or a '{TAG_SEPARATOR}'-separated string"
    return PhraseRow(tags=tags, origin=origin, **fields)


def _collect(result: PhraseRow | str, origin: Origin, rows: list[PhraseRow], errors: list[RowError]) -> None:
    if isinstance(result, str):
        errors.append(RowError(origin.file, origin.line, result))
    else:
        rows.append(result)


def _read_csv(text: str, file: str, defaults: Mapping[str, object]) -> tuple[list[PhraseRow], list[RowError]]:
    rows: list[PhraseRow] = []
    errors: list[RowError] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return rows, [RowError(file, 1, f"empty CSV file: expected a header row ({','.join(FIELDS)})")]
    except csv.Error as exc:
        return rows, [RowError(file, 1, f"malformed CSV header: {exc}")]
    bad = sorted(set(header) - set(FIELDS) - _IGNORED) + sorted({h for h in header if header.count(h) > 1})
    if "text" not in header or bad:
        reason = f"bad header {header}: need a 'text' column and only known columns ({', '.join(FIELDS)})"
        return rows, [RowError(file, 1, reason)]
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(file, line, f"malformed CSV (fix quoting from this line on): {exc}"))
            break
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            errors.append(RowError(file, line, f"expected {len(header)} columns like the header, got {len(record)}"))
            continue
        origin = Origin(file, line)
        _collect(_make_row(dict(zip(header, record, strict=True)), defaults, origin), origin, rows, errors)
    return rows, errors


def _read_jsonl(text: str, file: str, defaults: Mapping[str, object]) -> tuple[list[PhraseRow], list[RowError]]:
    rows: list[PhraseRow] = []
    errors: list[RowError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        origin = Origin(file, number)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(file, number, f"broken JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(obj, dict):
            errors.append(RowError(file, number, f"expected a JSON object per line, got {type(obj).__name__}"))
            continue
        _collect(_make_row(obj, defaults, origin), origin, rows, errors)
    return rows, errors


def _yaml_scalars(node: yaml.Node) -> list[yaml.ScalarNode] | None:
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if isinstance(node, yaml.SequenceNode) and all(isinstance(item, yaml.ScalarNode) for item in node.value):
        return list(node.value)
    return None


def _read_yaml_document(
    doc: yaml.Node, file: str, defaults: Mapping[str, object], rows: list[PhraseRow], errors: list[RowError]
) -> None:
    line = doc.start_mark.line + 1
    if not isinstance(doc, yaml.MappingNode):
        errors.append(RowError(file, line, "expected a mapping with 'categories:' and 'conversations:'"))
        return
    meta: dict[str, object] = dict(defaults)
    conversations: yaml.Node | None = None
    for key_node, value_node in doc.value:
        key = str(key_node.value)
        at = key_node.start_mark.line + 1
        if key == "conversations":
            conversations = value_node
        elif key == "categories":
            scalars = _yaml_scalars(value_node)
            if scalars is None:
                errors.append(RowError(file, at, "'categories' must be a list of strings"))
                return
            meta["tags"] = tuple(str(s.value) for s in scalars)
        elif key in _YAML_SCALAR_KEYS and isinstance(value_node, yaml.ScalarNode):
            meta[key] = str(value_node.value)
        else:
            errors.append(RowError(file, at, f"unexpected key {key!r}; expected categories, conversations "
                                             f"or one of {', '.join(_YAML_SCALAR_KEYS)}"))
            return
    if not isinstance(conversations, yaml.SequenceNode):
        errors.append(RowError(file, line, "'conversations' must be a list of lists of strings"))
        return
    for conversation in conversations.value:
        items = _yaml_scalars(conversation) if isinstance(conversation, yaml.SequenceNode) else None
        if items is None:
            at = conversation.start_mark.line + 1
            errors.append(RowError(file, at, "each conversation must be a list of strings"))
            continue
        for item in items[1:]:
            origin = Origin(file, item.start_mark.line + 1)
            _collect(_make_row({"text": str(item.value)}, meta, origin), origin, rows, errors)


def _read_yaml(text: str, file: str, defaults: Mapping[str, object]) -> tuple[list[PhraseRow], list[RowError]]:
    rows: list[PhraseRow] = []
    errors: list[RowError] = []
    try:
        for doc in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if doc is not None:
                _read_yaml_document(doc, file, defaults, rows, errors)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errors.append(RowError(file, mark.line + 1 if mark else 1, f"YAML syntax error: {exc.problem}"))
    except yaml.YAMLError as exc:
        errors.append(RowError(file, 1, f"YAML error: {exc}"))
    return rows, errors


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "yaml": _read_yaml}


def read_phrases(
    path: Path, fmt: str | None = None, defaults: Mapping[str, object] | None = None
) -> tuple[list[PhraseRow], list[RowError]]:
    """Rows of a phrase file and the errors of the rows that could not be read.

    ``defaults`` fills fields a row leaves empty (keys from ``FIELDS``). For YAML the language comes
    from the document's ``language:`` key, else ``defaults``, else the folder name (``russian/``, ``ru/``).
    """
    path = Path(path)
    kind = detect_format(path, fmt)
    merged: dict[str, object] = {**DEFAULTS, **(defaults or {})}
    if kind == "yaml" and not merged["language"]:
        folder = path.resolve().parent.name.lower()
        merged["language"] = _DIR_LANGUAGES.get(folder, folder if len(folder) == 2 else "")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [RowError(str(path), 0, f"cannot read file: {exc.strerror or exc}")]
    try:
        text = decode_user_bytes(data, path)
    except UserFileError as exc:
        return [], [RowError(exc.source, exc.line, exc.reason)]
    return _READERS[kind](text, str(path), merged)


def _row_dict(phrase: PhraseLike) -> dict[str, object]:
    return {name: list(phrase.tags) if name == "tags" else getattr(phrase, name) for name in FIELDS}


def _csv_text(phrases: Iterable[PhraseLike]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for phrase in phrases:
        if any(TAG_SEPARATOR in tag for tag in phrase.tags):
            raise FormatError(f"tag containing '{TAG_SEPARATOR}' cannot be written to CSV: {phrase.tags}")
        row = _row_dict(phrase)
        row["tags"] = TAG_SEPARATOR.join(phrase.tags)
        writer.writerow([row[name] for name in FIELDS])
    return buffer.getvalue()


def _jsonl_text(phrases: Iterable[PhraseLike]) -> str:
    return "".join(json.dumps(_row_dict(p), ensure_ascii=False) + "\n" for p in phrases)


def _yaml_text(phrases: Iterable[PhraseLike]) -> str:
    """One chatterbot-style document per metadata group.

    Chatterbot files carry no per-phrase metadata, so phrases sharing language, status, source, license,
    author and tags go into one document whose extra keys hold those values; each phrase is the reply of
    a conversation with an empty first turn.
    """
    groups: dict[tuple[object, ...], list[str]] = {}
    for phrase in phrases:
        key = (*(getattr(phrase, name) for name in _YAML_SCALAR_KEYS), tuple(phrase.tags))
        groups.setdefault(key, []).append(phrase.text)
    docs = [
        {**dict(zip(_YAML_SCALAR_KEYS, key[:-1], strict=True)), "categories": list(key[-1]),  # type: ignore[arg-type]
         "conversations": [["", text] for text in texts]}
        for key, texts in groups.items()
    ] or [{"categories": [], "conversations": []}]
    return yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False, width=1 << 20)


_WRITERS = {"csv": _csv_text, "jsonl": _jsonl_text, "yaml": _yaml_text}


def write_phrases(path: Path, phrases: Iterable[PhraseLike], fmt: str | None = None) -> None:
    """Write all phrases at once: a reader of ``path`` sees the old file or the complete new one."""
    path = Path(path)
    atomic_write_text(path, _WRITERS[detect_format(path, fmt)](list(phrases)))

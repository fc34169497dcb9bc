"""Reading files that users hand in: every failure names the file and the line and says what to do.

One decoder for every reader (bank import, SSA answers and contexts, corpora), so a file cut off in the
middle of a UTF-8 character reads "answers.jsonl: line 4: ... cut off" instead of a bare codec message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class UserFileError(ValueError):
    """A user's file that cannot be read as text/JSON; the message names the file and the line."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        super().__init__(f"{source}: line {line}: {reason}")


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def decode_user_bytes(data: bytes, source: str | Path, encoding: str = "utf-8-sig", first_line: int = 1) -> str:
    """``data`` as text, or a ``UserFileError`` naming ``source``, the line and the likely cause.

    ``first_line`` is the line number of ``data``'s first byte, for readers that decode line by line.
    """
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(data, exc.start)
        bad = data[exc.start:exc.end].hex(" ")
        if exc.end >= len(data) and "end of data" in exc.reason:
            advice = ("the file ends in the middle of a character, so it was cut off (an interrupted copy or "
                      "download?); fetch or export it again")
        else:
            advice = "the file is not UTF-8 (cp1251 or latin-1?); re-save it as UTF-8 and run again"
        reason = f"byte {column} (0x{bad}) is not valid UTF-8: {advice}"
        raise UserFileError(str(source), line + first_line - 1, reason) from exc


def read_user_text(path: str | Path, encoding: str = "utf-8-sig") -> str:
    """The whole file as text; a missing file raises ``FileNotFoundError`` with the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    return decode_user_bytes(path.read_bytes(), path, encoding)


def loads_user_json(text: str, source: str | Path) -> Any:
    """``json.loads`` whose error names the file, line and column and says what to do."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserFileError(str(source), exc.lineno, f"column {exc.colno}: not valid JSON ({exc.msg}); fix the "
                            "file, or export it again if it was cut off") from exc


def read_user_json(path: str | Path) -> Any:
    """A whole JSON file, decoded and parsed with errors that name the file and line."""
    return loads_user_json(read_user_text(path), path)


def json_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, object, None)`` per non-blank JSONL line, or ``(line number, None, why)`` when the line is
    not JSON: readers collect every bad row and name it, instead of stopping at the first."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, exc.msg

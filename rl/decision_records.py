"""Reading the decision log (schema ``repliq.decision/1``, written by ``dialog.serving.decision_log``).

The reader lives below the serving layer so off-policy evaluation and labeling jobs read logs without
importing the server. A bad line is skipped and reported with its file and line, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = "repliq.decision/1"
FILE_PREFIX = "decisions-"

_REQUIRED = ("request_id", "language", "policy", "candidates", "chosen", "versions")


def _check_line(obj: Any) -> str:
    """Why a parsed line is not a usable decision ("" when it is)."""
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        return f"not a {SCHEMA} line"
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        return f"missing field(s) {missing}"
    candidates = obj["candidates"]
    if not isinstance(candidates, list) or not candidates:
        return "'candidates' must be a non-empty list"
    if not isinstance(obj["chosen"], int) or not 0 <= obj["chosen"] < len(candidates):
        return f"'chosen' {obj['chosen']!r} is not an index into the {len(candidates)} candidates"
    try:
        total = sum(float(c["propensity"]) for c in candidates)
    except (KeyError, TypeError, ValueError):
        return "every candidate needs a numeric 'propensity'"
    if abs(total - 1.0) > 1e-6 or float(candidates[obj["chosen"]]["propensity"]) <= 0:
        return f"propensities sum to {total:.6g} or the served one has propensity 0"
    return ""


def read_decisions(source: Path) -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
    """Every valid decision in a log file or directory, and (file, line, reason) for each skipped line.

    A corrupt or truncated line (a crash mid-write) is skipped and reported; it never aborts a reader.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(source.glob(f"{FILE_PREFIX}*.jsonl"))
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"no decision logs at {source}; serve with [logging] decisions = true first")
    if not paths:
        raise FileNotFoundError(f"{source} holds no {FILE_PREFIX}*.jsonl files; is it the [logging] dir?")
    records: list[dict[str, Any]] = []
    problems: list[tuple[str, int, str]] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    reason = "truncated line" if not line.endswith("\n") else f"not valid JSON ({exc.msg})"
                    problems.append((path.name, number, reason))
                    continue
                reason = _check_line(obj)
                if reason:
                    problems.append((path.name, number, reason))
                else:
                    records.append(obj)
    return records, problems


def policy_id(record: Mapping[str, Any]) -> str:
    """The serving policy of a decision: exploration policy and ranker version ("epsilon-greedy/...@abc")."""
    return f"{record['policy'].get('name', '?')}@{record['versions'].get('ranker', '?')}"

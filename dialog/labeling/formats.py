"""Platform file formats: task uploads out, rater answers back in.

Three platforms: plain JSONL (any in-house tool), Toloka-style TSV (``INPUT:``/``OUTPUT:``/``GOLDEN:``/
``HINT:``/``ASSIGNMENT:`` columns) and Label Studio (import JSON + labeling config XML out, export
JSON with ``annotations[].result[]`` back). Readers only parse; ``store.validate_answers`` judges values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from core.atomic import atomic_write_json, atomic_write_text
from core.types import Context
from core.user_files import UserFileError, json_lines, read_user_text
from dialog.labeling.tasks import FIVE_POINT, POINTWISE, LabelingError, RowProblem, Task, turns_to_json

FORMATS = ("jsonl", "toloka", "labelstudio")
DEFAULT_RATER_FIELD = {"jsonl": "rater", "toloka": "ASSIGNMENT:worker_id", "labelstudio": "completed_by"}
UPLOAD_FILES = {"jsonl": ("tasks.jsonl",), "toloka": ("tasks.tsv",), "labelstudio": ("tasks.json", "config.xml")}
FIVE_POINT_LABELS = {"a_much_better": "A is much better", "a_better": "A is better", "same": "About the same",
                     "b_better": "B is better", "b_much_better": "B is much better"}


@dataclass
class RawAnswer:
    """One rater's answer to one task, as read; ``where`` locates it for error reports."""

    where: str
    task_id: Any
    rater: Any
    values: dict[str, Any]
    submitted_at: str | None = None
    golden: dict[str, Any] = field(default_factory=dict)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise LabelingError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def _tsv_cell(value: str) -> str:
    # One task per line: tabs and line breaks in a reply become spaces (the manifest keeps the original).
    return " ".join(str(value).split())


def _task_fields(task: Task, context: Context, mode: str) -> dict[str, Any]:
    base: dict[str, Any] = {"task_id": task.task_id, "turns": turns_to_json(context)}
    if mode == POINTWISE:
        return {**base, "response": task.responses[0]}
    return {**base, "response_a": task.responses[0], "response_b": task.responses[1]}


def write_upload(upload_dir: Path, fmt: str, tasks: Sequence[Task], contexts: Mapping[str, Context], mode: str,
                 scale: str | None, overlap: int, visible_systems: Mapping[str, list[str]] | None = None) -> None:
    """Write what goes to the platform. Honeypot answers appear only in Toloka's GOLDEN columns."""
    rows = []
    for task in tasks:
        row = _task_fields(task, contexts[task.context_id], mode)
        if visible_systems is not None:
            row["systems"] = ",".join(visible_systems.get(task.task_id, []))
        rows.append(row)
    if fmt == "jsonl":
        extra = {"overlap": overlap} if mode == POINTWISE else {"scale": scale, "overlap": overlap}
        text = "".join(json.dumps({**r, **extra}, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(upload_dir / "tasks.jsonl", text)
    elif fmt == "toloka":
        atomic_write_text(upload_dir / "tasks.tsv", _toloka_tasks(tasks, rows, mode, scale))
    else:
        atomic_write_json(upload_dir / "tasks.json", [{"data": r} for r in rows])
        atomic_write_text(upload_dir / "config.xml", labelstudio_config(mode, scale))


def _toloka_tasks(tasks: Sequence[Task], rows: Sequence[dict[str, Any]], mode: str, scale: str | None) -> str:
    inputs = [k for k in rows[0] if k != "turns"] if rows else []
    golden_cols = ["sensible", "specific"] if mode == POINTWISE else ["choice"]
    header = ["INPUT:task_id", "INPUT:turns"] + [f"INPUT:{k}" for k in inputs if k != "task_id"]
    header += [f"GOLDEN:{g}" for g in golden_cols] + ["HINT:text"]
    lines = ["\t".join(header)]
    for task, row in zip(tasks, rows, strict=True):
        golden = [""] * len(golden_cols)
        if task.honeypot and task.golden and mode == POINTWISE:
            golden = ["true" if task.golden["sensible"] else "false",
                      ("true" if task.golden["specific"] else "false") if task.golden["sensible"] else ""]
        elif task.honeypot and task.golden and scale != FIVE_POINT:
            golden = [task.golden["better"]]
        hint = task.hint if any(golden) else ""
        cells = [row["task_id"], json.dumps(row["turns"], ensure_ascii=False)]
        cells += [row[k] for k in inputs if k != "task_id"] + golden + [hint]
        lines.append("\t".join(_tsv_cell(c) for c in cells))
    return "\n".join(lines) + "\n"


def labelstudio_config(mode: str, scale: str | None) -> str:
    dialogue = ('  <Header value="Dialogue"/>\n'
                '  <Paragraphs name="dialogue" value="$turns" layout="dialogue" nameKey="speaker" textKey="text"/>\n')
    if mode == POINTWISE:
        return ("<View>\n" + dialogue +
                '  <Header value="Reply"/>\n  <Text name="response" value="$response"/>\n'
                '  <Header value="Sensible: does the reply make sense in this dialogue?"/>\n'
                '  <Choices name="sensible" toName="response" choice="single" required="true">\n'
                '    <Choice value="yes"/>\n    <Choice value="no"/>\n  </Choices>\n'
                '  <Header value="Specific: is it specific to this dialogue (not a reply that fits anything)?"/>\n'
                '  <Choices name="specific" toName="response" choice="single" '
                'visibleWhen="choice-selected" whenTagName="sensible" whenChoiceValue="yes">\n'
                '    <Choice value="yes"/>\n    <Choice value="no"/>\n  </Choices>\n</View>\n')
    options = FIVE_POINT_LABELS if scale == FIVE_POINT else {"a": "A is better", "b": "B is better"}
    choices = "".join(f"    <Choice value={quoteattr(label)} alias={quoteattr(alias)}/>\n"
                      for alias, label in options.items())
    return ("<View>\n" + dialogue +
            '  <Header value="Reply A"/>\n  <Text name="response_a" value="$response_a"/>\n'
            '  <Header value="Reply B"/>\n  <Text name="response_b" value="$response_b"/>\n'
            '  <Header value="Which reply is better for this dialogue?"/>\n'
            '  <Choices name="choice" toName="response_a" choice="single" required="true">\n'
            + choices + "  </Choices>\n</View>\n")


def read_answers(path: Path, fmt: str, rater_field: str | None = None) -> tuple[list[RawAnswer], list[RowProblem], int]:
    """Parse an answers file -> (answers, parse problems, answers skipped as cancelled/rejected)."""
    check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise LabelingError(f"answers file {path} not found")
    field_name = rater_field or DEFAULT_RATER_FIELD[fmt]
    try:
        text = read_user_text(path)
    except UserFileError as exc:
        raise LabelingError(f"nothing imported: {exc}") from exc
    if fmt == "jsonl":
        return (*_read_jsonl(text, path.name, field_name), 0)
    if fmt == "toloka":
        return _read_toloka(text, path.name, field_name)
    return _read_labelstudio(text, path.name, field_name)


def _read_jsonl(text: str, source: str, rater_field: str) -> tuple[list[RawAnswer], list[RowProblem]]:
    answers, problems = [], []
    for number, obj, broken in json_lines(text):
        if broken:
            problems.append(RowProblem(source, f"line {number}", f"not valid JSON ({broken})"))
            continue
        if not isinstance(obj, dict):
            problems.append(RowProblem(source, f"line {number}", "expected a JSON object"))
            continue
        values = {k: obj[k] for k in ("sensible", "specific", "choice") if k in obj}
        golden = obj.get("golden") if isinstance(obj.get("golden"), dict) else {}
        answers.append(RawAnswer(f"line {number}", obj.get("task_id"), obj.get(rater_field), values,
                                 obj.get("submitted_at"), golden))
    return answers, problems


def _unquote(cell: str) -> str:
    cell = cell.rstrip("\r")
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"')
    return cell


def _read_toloka(text: str, source: str, rater_field: str) -> tuple[list[RawAnswer], list[RowProblem], int]:
    lines = text.split("\n")
    header = [_unquote(c) for c in lines[0].split("\t")] if lines else []
    missing = [c for c in ("INPUT:task_id", rater_field) if c not in header]
    outputs = [c for c in header if c.startswith("OUTPUT:")]
    if missing or not outputs:
        need = missing + ([] if outputs else ["OUTPUT:sensible/OUTPUT:specific or OUTPUT:choice"])
        raise LabelingError(f"{source} is not a Toloka results TSV",
                            [RowProblem(source, "line 1", f"missing column(s) {need}")])
    answers, problems, skipped = [], [], 0
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [_unquote(c) for c in line.split("\t")]
        if len(cells) != len(header):
            problems.append(RowProblem(source, f"line {number}", f"{len(cells)} cells, header has {len(header)}"))
            continue
        row = dict(zip(header, cells, strict=True))
        if row.get("ASSIGNMENT:status", "").upper() == "REJECTED":
            skipped += 1
            continue
        values = {c.removeprefix("OUTPUT:"): (row[c] if row[c] != "" else None) for c in outputs}
        golden = {c.removeprefix("GOLDEN:"): row[c] for c in header if c.startswith("GOLDEN:") and row[c] != ""}
        answers.append(RawAnswer(f"line {number}", row["INPUT:task_id"] or None, row[rater_field] or None, values,
                                 row.get("ASSIGNMENT:submitted") or None, golden))
    return answers, problems, skipped


def _ls_rater(value: Any) -> Any:
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    return None if value is None or isinstance(value, bool) else str(value)


def _read_labelstudio(text: str, source: str, rater_field: str) -> tuple[list[RawAnswer], list[RowProblem], int]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelingError(f"{source} is not valid JSON ({exc}); export the project as JSON from Label Studio"
                            ) from exc
    if not isinstance(tasks, list):
        raise LabelingError(f"{source}: expected a Label Studio JSON export (a list of tasks)")
    answers, problems, skipped = [], [], 0
    for i, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        annotations = task.get("annotations", []) if isinstance(task, dict) else None
        if not isinstance(data, dict) or not isinstance(annotations, list):
            problems.append(RowProblem(source, f"[{i}]", "a task needs 'data' and an 'annotations' list"))
            continue
        for j, ann in enumerate(annotations):
            where = f"[{i}].annotations[{j}]"
            if not isinstance(ann, dict) or not isinstance(ann.get("result", []), list):
                problems.append(RowProblem(source, where, "an annotation needs a 'result' list"))
                continue
            if ann.get("was_cancelled"):
                skipped += 1
                continue
            values: dict[str, Any] = {}
            for k, res in enumerate(ann.get("result", [])):
                if not isinstance(res, dict) or res.get("type") != "choices":
                    continue  # comments or other controls a team may add
                value = res.get("value")
                choices = value.get("choices") if isinstance(value, dict) else None
                name = res.get("from_name")
                if not isinstance(name, str) or not isinstance(choices, list) or len(choices) != 1 or name in values:
                    problems.append(RowProblem(source, f"{where}.result[{k}]",
                                               f"{name!r} must hold exactly one choice, once"))
                    continue
                values[str(name)] = choices[0]
            answers.append(RawAnswer(where, data.get("task_id"), _ls_rater(ann.get(rater_field)), values,
                                     ann.get("updated_at") or ann.get("created_at")))
    return answers, problems, skipped


def write_answers(answers: Sequence[Mapping[str, Any]], path: Path, fmt: str, tasks: Mapping[str, Task],
                  contexts: Mapping[str, Context], mode: str) -> Path:
    """Write answers the way each platform exports them (for simulations and round-trip tests).

    An answer is ``{"task_id", "rater", "submitted_at", "sensible", "specific"}`` or ``{..., "choice"}``.
    """
    check_format(fmt)
    keys = ("sensible", "specific") if mode == POINTWISE else ("choice",)
    if fmt == "jsonl":
        text = "".join(json.dumps(dict(a), ensure_ascii=False) + "\n" for a in answers)
        atomic_write_text(path, text)
    elif fmt == "toloka":
        header = ["INPUT:task_id", "INPUT:turns"] + [f"OUTPUT:{k}" for k in keys]
        header += ["ASSIGNMENT:worker_id", "ASSIGNMENT:status", "ASSIGNMENT:submitted"]
        lines = ["\t".join(header)]
        for a in answers:
            turns = json.dumps(turns_to_json(contexts[tasks[a["task_id"]].context_id]), ensure_ascii=False)
            outs = ["" if a[k] is None else ("true" if a[k] is True else "false" if a[k] is False else a[k])
                    for k in keys]
            cells = [a["task_id"], turns, *outs, a["rater"], "APPROVED", a.get("submitted_at") or ""]
            lines.append("\t".join(_tsv_cell(c) for c in cells))
        atomic_write_text(path, "\n".join(lines) + "\n")
    else:
        by_task: dict[str, list[dict[str, Any]]] = {}
        for a in answers:
            result = [{"from_name": k, "to_name": "response" if mode == POINTWISE else "response_a",
                       "type": "choices", "value": {"choices": ["yes" if a[k] is True else "no" if a[k] is False
                                                               else a[k]]}}
                      for k in keys if a[k] is not None]
            by_task.setdefault(a["task_id"], []).append(
                {"completed_by": a["rater"], "result": result, "was_cancelled": False,
                 "created_at": a.get("submitted_at"), "updated_at": a.get("submitted_at")})
        export = [{"id": n + 1, "data": _task_fields(tasks[tid], contexts[tasks[tid].context_id], mode),
                   "annotations": anns} for n, (tid, anns) in enumerate(by_task.items())]
        atomic_write_json(path, export)
    return Path(path)

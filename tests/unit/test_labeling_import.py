"""Strict import: every bad row reported with its place, and a bad file stores nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.types import Context, Turn
from dialog.labeling import Honeypot, LabelingError, LabelStore, export_pairwise, export_pointwise, import_labels
from dialog.labeling.tasks import load_export

SYSTEMS = {"x": lambda c: f"Sure: {c.last_text}", "y": lambda c: f"Hmm, {c.last_text}?"}
POT = Honeypot(Context((Turn("user", "hi"),)), "Purple elephants.", False, False)


@pytest.fixture
def pointwise(tmp_path: Path) -> tuple[Path, list[str], str]:
    contexts = {f"c{i}": Context((Turn("user", f"line {i}"),)) for i in range(4)}
    out = tmp_path / "export"
    export_pointwise(contexts, SYSTEMS, out, "jsonl", overlap=3, honeypots=[POT], honeypot_rate=0.2)
    tasks = load_export(out).tasks
    items = [t for t, task in tasks.items() if not task.honeypot]
    honeypot = next(t for t, task in tasks.items() if task.honeypot)
    return out, items, honeypot


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_bad_row_is_reported_and_nothing_is_stored(tmp_path: Path, pointwise: tuple) -> None:
    out, items, _ = pointwise
    rows = [
        {"task_id": items[0], "rater": "r1", "sensible": "yes", "specific": "no"},  # fine
        {"task_id": "t-nope", "rater": "r1", "sensible": "yes", "specific": "no"},  # unknown task
        {"task_id": items[1], "sensible": "yes", "specific": "no"},  # no rater
        {"task_id": items[1], "rater": "r1", "specific": "no"},  # no sensible
        {"task_id": items[1], "rater": "r2", "sensible": "yes"},  # sensible but no specific
        {"task_id": items[2], "rater": "r1", "sensible": "no", "specific": "yes"},  # contradiction
        {"task_id": items[2], "rater": "r2", "sensible": "maybe", "specific": "no"},  # invalid value
        {"task_id": items[0], "rater": "r1", "sensible": "no"},  # duplicate of row 1
        {"task_id": items[3], "rater": "r1", "sensible": "yes", "specific": "no",
         "golden": {"sensible": "true"}},  # golden on a task that is no honeypot
    ]
    path = _write_jsonl(tmp_path / "answers.jsonl", rows)
    path.write_text(path.read_text() + "{broken\n", encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(LabelingError) as info:
            import_labels(out, path, "jsonl", store)
        assert store.count() == 0
    reasons = {p.where: p.reason for p in info.value.problems}
    assert set(reasons) == {f"line {n}" for n in range(2, 11)}
    assert "unknown task id 't-nope'" in reasons["line 2"]
    assert reasons["line 3"] == "missing rater id"
    assert reasons["line 4"] == "missing 'sensible'"
    assert "missing 'specific'" in reasons["line 5"]
    assert "must be sensible" in reasons["line 6"]
    assert "'maybe'" in reasons["line 7"]
    assert "duplicate" in reasons["line 8"] and "line 1" in reasons["line 8"]
    assert "not a honeypot" in reasons["line 9"]
    assert "not valid JSON" in reasons["line 10"]
    assert "nothing imported" in str(info.value)


def test_meena_rule_and_reimport_protection(tmp_path: Path, pointwise: tuple) -> None:
    out, items, honeypot = pointwise
    rows = [{"task_id": items[0], "rater": "r1", "sensible": False, "specific": None},
            {"task_id": items[0], "rater": "r2", "sensible": "no", "specific": "no"},
            {"task_id": items[1], "rater": "r1", "sensible": True, "specific": True},
            {"task_id": honeypot, "rater": "r1", "sensible": "no"}]
    path = _write_jsonl(tmp_path / "answers.jsonl", rows)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        summary = import_labels(out, path, "jsonl", store)
        labels = {(lb.task_id, lb.rater): (lb.sensible, lb.specific) for lb in store.labels(summary["export_id"])}
        assert labels[(items[0], "r1")] == labels[(items[0], "r2")] == (False, False)
        assert labels[(items[1], "r1")] == (True, True)
        with pytest.raises(LabelingError, match="already imported"):
            import_labels(out, path, "jsonl", store)
        assert store.count() == 4


def test_toloka_golden_must_match_the_export(tmp_path: Path) -> None:
    contexts = {f"c{i}": Context((Turn("user", f"line {i}"),)) for i in range(4)}
    out = tmp_path / "export"
    export_pointwise(contexts, SYSTEMS, out, "toloka", honeypots=[POT], honeypot_rate=0.2)
    honeypot = next(t for t, task in load_export(out).tasks.items() if task.honeypot)
    header = "INPUT:task_id\tOUTPUT:sensible\tOUTPUT:specific\tGOLDEN:sensible\tASSIGNMENT:worker_id\tASSIGNMENT:status"
    lines = [header, f"{honeypot}\tfalse\t\tfalse\tw1\tAPPROVED", f"{honeypot}\ttrue\ttrue\ttrue\tw2\tAPPROVED",
             f"{honeypot}\ttrue\ttrue\tfalse\tw3\tREJECTED"]
    path = tmp_path / "results.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(LabelingError) as info:
            import_labels(out, path, "toloka", store)
        assert [p.where for p in info.value.problems] == ["line 3"]
        assert "does not match this export's honeypot" in info.value.problems[0].reason
        path.write_text("\n".join(lines[:2] + lines[3:]) + "\n", encoding="utf-8")
        summary = import_labels(out, path, "toloka", store)
        assert (summary["imported"], summary["skipped"]) == (1, 1)


def test_toloka_missing_columns_and_pairwise_values(tmp_path: Path) -> None:
    contexts = {f"c{i}": Context((Turn("user", f"line {i}"),)) for i in range(3)}
    out = tmp_path / "pairs"
    export_pairwise(contexts, SYSTEMS, out, "toloka", honeypot_rate=0, scale="binary")
    task_id = next(iter(load_export(out).tasks))
    path = tmp_path / "results.tsv"
    path.write_text(f"INPUT:task_id\tOUTPUT:choice\n{task_id}\ta\n", encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(LabelingError, match="ASSIGNMENT:worker_id"):
            import_labels(out, path, "toloka", store)
        path.write_text(f"INPUT:task_id\tOUTPUT:choice\tASSIGNMENT:worker_id\n{task_id}\ta_much_better\tw1\n"
                        f"{task_id}\tB\tw2\n", encoding="utf-8")
        with pytest.raises(LabelingError, match="line 2: 'choice' is 'a_much_better'; the binary scale allows a, b"):
            import_labels(out, path, "toloka", store)
        assert store.count() == 0
        path.write_text(f"INPUT:task_id\tOUTPUT:choice\tASSIGNMENT:worker_id\n{task_id}\ta\tw1\n"
                        f"{task_id}\tB\tw2\n", encoding="utf-8")
        summary = import_labels(out, path, "toloka", store)
        assert sorted(lb.choice for lb in store.labels(summary["export_id"])) == ["a", "b"]


def test_labelstudio_malformed_annotations(tmp_path: Path, pointwise: tuple) -> None:
    out, items, _ = pointwise
    two = {"from_name": "sensible", "type": "choices", "value": {"choices": ["yes", "no"]}}
    exported = [{"data": {"task_id": items[0]}, "annotations": [{"completed_by": 1, "result": [two]}]},
                {"annotations": []},
                {"data": {"task_id": items[1]}, "annotations": [{"result": []}]}]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(LabelingError) as info:
            import_labels(out, path, "labelstudio", store)
        assert store.count() == 0
    where = sorted(p.where for p in info.value.problems)
    assert where == ["[0].annotations[0]", "[0].annotations[0].result[0]", "[1]", "[2].annotations[0]"]


def test_default_store_lives_in_the_workspace(home: Path, pointwise: tuple, tmp_path: Path) -> None:
    out, items, _ = pointwise
    path = _write_jsonl(tmp_path / "answers.jsonl", [{"task_id": items[0], "rater": 7, "sensible": "yes",
                                                      "specific": "yes"}])
    summary = import_labels(out, path, "jsonl")
    with LabelStore() as store:
        assert store.path == home / "labels.sqlite"
        assert [(lb.rater, lb.sensible) for lb in store.labels(summary["export_id"])] == [("7", True)]
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_second_round_over_the_same_contexts_imports_on_its_own(tmp_path: Path) -> None:
    """Outside-run defect: round 2 (same contexts, same seed, new directory) had round 1's task ids, so
    every one of its rows was refused as "already imported"."""
    contexts = {f"c{i}": Context((Turn("user", f"line {i}"),)) for i in range(3)}
    rounds = [tmp_path / "round1", tmp_path / "round2"]
    for out in rounds:
        export_pointwise(contexts, SYSTEMS, out, "jsonl", overlap=1, honeypot_rate=0, seed=0)
    answer_files = []
    for n, out in enumerate(rounds, start=1):
        rows = [{"task_id": t, "rater": "r1", "sensible": "yes", "specific": "no"} for t in load_export(out).tasks]
        answer_files.append(_write_jsonl(tmp_path / f"answers{n}.jsonl", rows))
    with LabelStore(tmp_path / "labels.sqlite") as store:
        first = import_labels(rounds[0], answer_files[0], "jsonl", store)
        second = import_labels(rounds[1], answer_files[1], "jsonl", store)
        assert first["export_id"] != second["export_id"]
        assert first["imported"] == second["imported"] == store.count() // 2 == 6
        with pytest.raises(LabelingError, match="unknown task id") as info:  # round 1's answers, round 2's export
            import_labels(rounds[1], answer_files[0], "jsonl", store)
        assert "answers for another export" in str(info.value)
        assert store.count() == 12

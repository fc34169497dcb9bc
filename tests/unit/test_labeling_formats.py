"""Round trips through every platform format, and the platform-specific files themselves."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dialog.labeling import LabelStore, export_pairwise, export_pointwise, import_labels
from dialog.labeling.simulate import SimulatedRater, demo_setup, simulate_answers, write_simulated
from dialog.labeling.tasks import load_export

SUFFIX = {"jsonl": "jsonl", "toloka": "tsv", "labelstudio": "json"}


def _export(tmp_path: Path, mode: str, fmt: str, scale: str = "five-point") -> Path:
    contexts, systems, _, point_pots, pair_pots = demo_setup(n_contexts=6)
    out = tmp_path / f"{mode}-{fmt}"
    if mode == "pointwise":
        export_pointwise(contexts, systems, out, fmt, overlap=3, honeypots=point_pots, honeypot_rate=0.2)
    else:
        export_pairwise(contexts, systems, out, fmt, overlap=3, honeypots=pair_pots, honeypot_rate=0.2, scale=scale)
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "toloka", "labelstudio"])
@pytest.mark.parametrize(("mode", "scale"), [("pointwise", None), ("pairwise", "five-point"), ("pairwise", "binary")])
def test_round_trip_keeps_every_label(tmp_path: Path, fmt: str, mode: str, scale: str | None) -> None:
    out = _export(tmp_path, mode, fmt, scale or "five-point")
    _, _, truth, _, _ = demo_setup(n_contexts=6)
    raters = [SimulatedRater("r1", 0.8), SimulatedRater("r2", 0.6), SimulatedRater("r3", careless=True)]
    answers = simulate_answers(out, raters, truth, seed=5)
    path = write_simulated(answers, out, tmp_path / f"answers.{SUFFIX[fmt]}", fmt)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        summary = import_labels(out, path, fmt, store)
        stored = store.labels(summary["export_id"])
    assert summary["imported"] == len(answers) == len(load_export(out).tasks) * 3
    if mode == "pointwise":
        # Meena: a reply rated not sensible is stored as not specific.
        sent = {(a["task_id"], a["rater"], a["sensible"], bool(a["specific"])) for a in answers}
        got = {(lb.task_id, lb.rater, lb.sensible, lb.specific) for lb in stored}
    else:
        sent = {(a["task_id"], a["rater"], a["choice"]) for a in answers}
        got = {(lb.task_id, lb.rater, lb.choice) for lb in stored}
    assert got == sent
    assert all(lb.submitted_at and lb.submitted_at.startswith("2024-05-01T") for lb in stored)


def test_toloka_tsv_has_golden_and_hint_only_on_honeypots(tmp_path: Path) -> None:
    out = _export(tmp_path, "pointwise", "toloka")
    lines = (out / "upload" / "tasks.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header == ["INPUT:task_id", "INPUT:turns", "INPUT:response", "GOLDEN:sensible", "GOLDEN:specific",
                      "HINT:text"]
    export = load_export(out)
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        task = export.tasks[row["INPUT:task_id"]]
        assert json.loads(row["INPUT:turns"])[-1]["text"] == export.contexts[task.context_id].last_text
        if task.honeypot:
            assert row["GOLDEN:sensible"] == str(task.golden["sensible"]).lower() and row["HINT:text"]
            assert row["GOLDEN:specific"] == (str(task.golden["specific"]).lower() if task.golden["sensible"] else "")
        else:
            assert row["GOLDEN:sensible"] == row["GOLDEN:specific"] == row["HINT:text"] == ""


@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
def test_labelstudio_config_matches_the_task_data(tmp_path: Path, mode: str) -> None:
    out = _export(tmp_path, mode, "labelstudio")
    root = ET.fromstring((out / "upload" / "config.xml").read_text(encoding="utf-8"))
    tasks = json.loads((out / "upload" / "tasks.json").read_text(encoding="utf-8"))
    variables = {el.get("value", "").lstrip("$") for el in root.iter() if el.get("value", "").startswith("$")}
    assert variables <= set(tasks[0]["data"])
    names = {el.get("name") for el in root.iter("Choices")}
    assert names == ({"sensible", "specific"} if mode == "pointwise" else {"choice"})
    if mode == "pointwise":
        specific = next(el for el in root.iter("Choices") if el.get("name") == "specific")
        assert specific.get("whenTagName") == "sensible" and specific.get("whenChoiceValue") == "yes"


def test_labelstudio_export_skips_cancelled_and_reads_user_objects(tmp_path: Path) -> None:
    out = _export(tmp_path, "pointwise", "labelstudio")
    task_id = next(t for t, task in load_export(out).tasks.items() if not task.honeypot)
    result = [{"from_name": "sensible", "to_name": "response", "type": "choices", "value": {"choices": ["no"]}},
              {"from_name": "comment", "to_name": "response", "type": "textarea", "value": {"text": ["odd"]}}]
    exported = [{"id": 7, "data": {"task_id": task_id}, "annotations": [
        {"completed_by": {"id": 3, "email": "ann@example.org"}, "result": result, "created_at": "2024-06-01"},
        {"completed_by": 4, "result": [], "was_cancelled": True}]}]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        summary = import_labels(out, path, "labelstudio", store)
        (label,) = store.labels(summary["export_id"])
    assert summary["skipped"] == 1
    assert (label.rater, label.sensible, label.specific) == ("ann@example.org", False, False)

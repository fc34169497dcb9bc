"""Export side: strict input files, determinism, blinding, honeypot mixing, pairwise side permutation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.types import Context, Turn
from dialog.labeling import (
    Honeypot,
    LabelingError,
    export_pairwise,
    export_pointwise,
    read_contexts,
    read_honeypots,
)
from dialog.labeling.tasks import load_export, load_key


def _contexts(n: int) -> dict[str, Context]:
    return {f"c{i}": Context((Turn("user", f"message number {i}"),)) for i in range(n)}


SYSTEMS = {
    "supervised": lambda c: f"Well, {c.last_text}",
    "rl-tuned": lambda c: f"Sure, {c.last_text}",
}
PREFIX = {"supervised": "Well", "rl-tuned": "Sure"}
POTS = [Honeypot(Context((Turn("user", "hi"),)), "Hello! How are you?", True, True),
        Honeypot(Context((Turn("user", "hi"),)), "Purple elephants.", False, False)]
PAIR_POTS = [Honeypot(Context((Turn("user", "hi"),)), better="Hello! How are you?", worse="Purple elephants.")]


def test_read_contexts_reports_every_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "ctx.jsonl"
    rows = [
        '{"id": "a", "turns": [{"speaker": "user", "text": "Привет!"}]}',
        '{"id": "a", "turns": [{"speaker": "user", "text": "dup"}]}',
        "not json",
        '{"id": "b", "turns": []}',
        '{"id": "c", "turns": [{"speaker": "user", "text": "x"}], "extra": 1}',
        '{"turns": [{"speaker": "user", "text": "x"}]}',
        '{"id": "d", "turns": [{"speaker": "user", "text": "  "}]}',
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(LabelingError) as info:
        read_contexts(path)
    where = [p.where for p in info.value.problems]
    assert where == ["line 3", "line 2", "line 4", "line 5", "line 6", "line 7"]
    assert "duplicate id 'a'" in str(info.value)
    path.write_text(rows[0] + "\n", encoding="utf-8")
    assert read_contexts(path)["a"].last_text == "Привет!"


def test_read_honeypots_rejects_specific_without_sensible(tmp_path: Path) -> None:
    path = tmp_path / "hp.jsonl"
    good = {"turns": [{"speaker": "user", "text": "hi"}], "response": "Hello!", "sensible": True, "specific": False}
    bad = {**good, "sensible": False, "specific": True}
    pair = {"turns": [{"speaker": "user", "text": "hi"}], "better": "Hello!", "worse": "Blue."}
    path.write_text("\n".join(json.dumps(x) for x in (good, bad, pair)), encoding="utf-8")
    with pytest.raises(LabelingError, match="line 2: specific=true with sensible=false"):
        read_honeypots(path)
    path.write_text("\n".join(json.dumps(x) for x in (good, pair)), encoding="utf-8")
    pots = read_honeypots(path)
    assert [p.mode for p in pots] == ["pointwise", "pairwise"]


def test_export_is_deterministic_and_blinded(tmp_path: Path) -> None:
    first = export_pointwise(_contexts(10), SYSTEMS, tmp_path / "a", "jsonl", honeypots=POTS, seed=3)
    again = export_pointwise(_contexts(10), SYSTEMS, tmp_path / "b", "jsonl", honeypots=POTS, seed=3)
    other = export_pointwise(_contexts(10), SYSTEMS, tmp_path / "c", "jsonl", honeypots=POTS, seed=4)
    text = (tmp_path / "a" / "upload" / "tasks.jsonl").read_text(encoding="utf-8")

    def without_ids(name: str) -> list[dict]:
        lines = (tmp_path / name / "upload" / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "task_id"} for line in lines]

    # Same seed: same tasks in the same order; but each export is its own round, with its own ids.
    assert without_ids("a") == without_ids("b") != without_ids("c")
    assert len({first["export_id"], again["export_id"], other["export_id"]}) == 3
    assert not set(load_export(tmp_path / "a").tasks) & set(load_export(tmp_path / "b").tasks)
    manifest = (tmp_path / "a" / "manifest.json").read_text(encoding="utf-8")
    for name in SYSTEMS:  # names only in the key
        assert name not in text and name not in manifest
    export = load_export(tmp_path / "a")
    key = load_key(tmp_path / "a" / "key.json", export)
    assert sorted(key.systems.values()) == sorted(SYSTEMS)
    for task in export.tasks.values():
        if not task.honeypot:
            (name,) = key.names(task.task_id)
            assert task.responses[0].startswith(PREFIX[name])
    rows = [json.loads(line) for line in text.splitlines()]
    assert {r["overlap"] for r in rows} == {5}
    assert all(set(r) == {"task_id", "turns", "response", "overlap"} for r in rows)  # no golden, no system


def test_honeypot_rate_and_identical_replies_share_a_task(tmp_path: Path) -> None:
    systems = {**SYSTEMS, "copy": SYSTEMS["supervised"]}
    summary = export_pointwise(_contexts(18), systems, tmp_path / "x", honeypots=POTS, honeypot_rate=0.1)
    # 18 contexts x 2 distinct replies = 36 items; 0.1 of all tasks -> round(0.1 * 36 / 0.9) = 4 honeypots.
    assert summary["counts"]["items"] == 36 and summary["counts"]["honeypots"] == 4
    export = load_export(tmp_path / "x")
    key = load_key(tmp_path / "x" / "key.json", export)
    shared = [key.names(t) for t in export.tasks if len(key.names(t)) == 2]
    assert len(shared) == 18 and all(sorted(n) == ["copy", "supervised"] for n in shared)
    assert any("shown twice" in w for w in summary["warnings"])  # 4 slots, 2 honeypots


def test_pairwise_sides_are_randomized_and_recorded(tmp_path: Path) -> None:
    export_pairwise(_contexts(40), SYSTEMS, tmp_path / "p", "jsonl", honeypots=PAIR_POTS, seed=1)
    export = load_export(tmp_path / "p")
    key = load_key(tmp_path / "p" / "key.json", export)
    firsts = []
    for task in export.tasks.values():
        if task.honeypot:
            assert task.responses[0 if task.golden["better"] == "a" else 1] == "Hello! How are you?"
            continue
        a, b = key.names(task.task_id)
        assert task.responses[0].startswith(PREFIX[a]) and task.responses[1].startswith(PREFIX[b])
        assert key.swapped[task.task_id] == (a == "supervised")  # canonical order is by name: rl-tuned first
        firsts.append(a)
    assert 10 < firsts.count("supervised") < 30


def test_export_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    def broken(context: Context) -> str:
        raise RuntimeError("model not loaded")

    with pytest.raises(LabelingError, match="context c1: raised RuntimeError"):
        export_pointwise(_contexts(2), {**SYSTEMS, "broken": broken}, tmp_path / "e1")
    assert not (tmp_path / "e1").exists()
    with pytest.raises(LabelingError, match="at least two systems"):
        export_pairwise(_contexts(2), {"one": SYSTEMS["supervised"]}, tmp_path / "e2")
    with pytest.raises(LabelingError, match="not pointwise honeypots"):
        export_pointwise(_contexts(2), SYSTEMS, tmp_path / "e3", honeypots=PAIR_POTS)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    with pytest.raises(LabelingError, match="not empty"):
        export_pointwise(_contexts(2), SYSTEMS, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "x"


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    export_pointwise(_contexts(3), SYSTEMS, tmp_path / "m", honeypot_rate=0)
    path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["overlap"] = 3
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(LabelingError, match="hash mismatch"):
        load_export(tmp_path / "m")


def test_unblinded_export_and_a_separate_key(tmp_path: Path) -> None:
    export_pointwise(_contexts(2), SYSTEMS, tmp_path / "open", "toloka", honeypot_rate=0, blind=False)
    header, *rows = (tmp_path / "open" / "upload" / "tasks.tsv").read_text(encoding="utf-8").splitlines()
    assert "INPUT:systems" in header.split("\t")
    assert {row.split("\t")[header.split("\t").index("INPUT:systems")] for row in rows} == set(SYSTEMS)
    summary = export_pointwise(_contexts(2), SYSTEMS, tmp_path / "shut", key_path=tmp_path / "vault" / "key.json")
    assert not (tmp_path / "shut" / "key.json").exists()
    key = load_key(tmp_path / "vault" / "key.json", load_export(tmp_path / "shut"))
    assert summary["key_path"] == str(tmp_path / "vault" / "key.json")
    assert sorted(key.systems.values()) == sorted(SYSTEMS)
    with pytest.raises(LabelingError, match="belongs to export"):
        load_key(tmp_path / "vault" / "key.json", load_export(tmp_path / "open"))


def test_the_recorded_round_rebuilds_the_same_task_ids(tmp_path: Path) -> None:
    from dialog.labeling.tasks import POINTWISE, build_tasks

    contexts = _contexts(6)
    responses = {cid: {name: f"{PREFIX[name]}, {c.last_text}" for name in SYSTEMS} for cid, c in contexts.items()}
    ids = {name: name for name in SYSTEMS}
    export_pointwise(contexts, SYSTEMS, tmp_path / "a", "jsonl", honeypot_rate=0, seed=3, blind=False)
    recorded = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))["round"]
    rebuilt = build_tasks(contexts, responses, POINTWISE, [], 0.0, 3, ids, round_id=recorded)
    assert [t.task_id for t in rebuilt.tasks] == list(load_export(tmp_path / "a").tasks)
    fresh = build_tasks(contexts, responses, POINTWISE, [], 0.0, 3, ids)
    assert fresh.round_id != recorded and not {t.task_id for t in fresh.tasks} & set(load_export(tmp_path / "a").tasks)

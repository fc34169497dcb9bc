"""The labeling loop from the command line on the real pipeline: export -> simulated labels -> import -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialog.cli.main import main

pytestmark = pytest.mark.real


def test_export_simulate_import_report(real_home: Path, models_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLIQ_HOME", str(real_home))
    monkeypatch.setenv("REPLIQ_MODELS", str(models_dir))
    monkeypatch.setenv("REPLIQ_GENERATION_MODE", "off")
    contexts = tmp_path / "ctx.jsonl"
    texts = ["Какая сегодня погода?", "Посоветуй книгу", "What music do you like?", "I just got a puppy"]
    contexts.write_text("".join(json.dumps({"id": f"c{i}", "turns": [{"speaker": "user", "text": t}]},
                                           ensure_ascii=False) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    config = tmp_path / "two.toml"
    config.write_text('[retrieval]\ncontext_turns = 1\n[ranker]\nblender = "none"\n', encoding="utf-8")
    export, answers, report = tmp_path / "export", tmp_path / "answers.jsonl", tmp_path / "report"
    assert main(["ssa", "export", "--contexts", str(contexts), "--system", "one=current",
                 "--system", f"two={config}", "--out", str(export), "--overlap", "3"]) == 0
    assert main(["ssa", "simulate", "--export", str(export), "--answers", str(answers)]) == 0
    assert main(["ssa", "import", "--export", str(export), "--answers", str(answers)]) == 0
    assert main(["ssa", "report", "--export", str(export), "--out", str(report)]) == 0
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert (report / "report.png").stat().st_size > 0
    # Both systems are scored on every context (a substring search of the whole report cannot fail:
    # "honeypot" contains "one").
    systems = data["systems"]
    assert sorted(systems) == ["one", "two"], sorted(systems)
    for name, row in systems.items():
        assert row["contexts"] == len(texts), (name, row)
        for metric in ("sensibleness", "specificity", "ssa"):
            assert 0.0 <= row[metric]["ci_low"] <= row[metric]["value"] <= row[metric]["ci_high"] <= 1.0, (name, row)
        mean_of_parts = (row["sensibleness"]["value"] + row["specificity"]["value"]) / 2
        assert row["ssa"]["value"] == pytest.approx(mean_of_parts), (name, row)
    coverage = data["coverage"]
    assert coverage["item_tasks"] >= len(texts) and coverage["labelled"] == coverage["item_tasks"], coverage
    assert data["labels"]["used"] >= coverage["item_tasks"] and data["mode"] == "pointwise"
    # A second import of the same answers is refused and stores nothing more.
    assert main(["ssa", "import", "--export", str(export), "--answers", str(answers)]) == 2

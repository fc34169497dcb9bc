"""Report numbers: hand-computed on tiny cases, recovered from simulated raters on larger ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core.types import Context, Turn
from dialog.labeling import Honeypot, LabelStore, build_report, export_pairwise, export_pointwise, import_labels
from dialog.labeling.report import dawid_skene_binary, find_cycle, krippendorff_alpha_nominal, majority, win_stats
from dialog.labeling.simulate import SimulatedRater, Truth, simulate_answers, write_simulated
from dialog.labeling.tasks import load_export, load_key


def test_krippendorff_alpha_textbook_example() -> None:
    # Two coders, three units: (1,1), (1,0), (0,0). Coincidences: o11=2, o00=2, o10=o01=1 -> n1=n0=3, n=6.
    # alpha = 1 - (n-1) * (o10+o01) / (2*n1*n0) = 1 - 5*2/18 = 4/9.
    assert krippendorff_alpha_nominal([[1, 1], [1, 0], [0, 0]]) == pytest.approx(4 / 9)
    # A unit with one value is not pairable and changes nothing; full agreement with variation is 1.
    assert krippendorff_alpha_nominal([[1, 1], [1, 0], [0, 0], [1]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([[1, 1], [1, 1]]) != krippendorff_alpha_nominal([[1, 1], [1, 1]])  # NaN


def test_majority_dawid_skene_win_stats_and_cycles() -> None:
    assert [majority([1, 1, 0]), majority([0, 0, 1]), majority([1, 0])] == [1.0, 0.0, 0.5]
    # Two careful raters and three who say "yes" to everything: majority says yes everywhere; DS learns
    # that the yes-sayers carry no information and follows the careful pair.
    truth = [1, 0] * 10
    votes = [(i, r, t) for i, t in enumerate(truth) for r in ("good1", "good2")]
    votes += [(i, r, 1) for i in range(len(truth)) for r in ("yes1", "yes2", "yes3")]
    posterior = dawid_skene_binary(votes)
    assert [round(posterior[i]) for i in range(len(truth))] == truth
    stats = win_stats(8, 2, 5)  # binomial test of 8 of 10: p = 2 * 56/1024
    assert stats["win_rate_a"] == 0.8 and stats["p_value"] == pytest.approx(112 / 1024)
    assert stats["ci_low"] < 0.8 < stats["ci_high"] and not stats["significant"]
    assert sorted(find_cycle({"A": {"B"}, "B": {"C"}, "C": {"A"}})) == ["A", "B", "C"]
    assert find_cycle({"A": {"B", "C"}, "B": {"C"}}) is None


def _tiny_export(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    contexts = {"c1": Context((Turn("user", "one"),)), "c2": Context((Turn("user", "two"),))}
    systems = {"X": lambda c: f"X says {c.last_text}", "Y": lambda c: f"Y says {c.last_text}"}
    out = tmp_path / "export"
    export_pointwise(contexts, systems, out, "jsonl", overlap=3, honeypot_rate=0)
    export = load_export(out)
    key = load_key(out / "key.json", export)
    return out, {f"{task.context_id}{key.names(t)[0]}": t for t, task in export.tasks.items()}


def test_report_on_a_hand_computed_case(tmp_path: Path) -> None:
    out, ids = _tiny_export(tmp_path)
    # (sensible, specific) from raters r1, r2, r3:
    votes = {"c1X": [(1, 1), (1, 0), (0, 0)], "c1Y": [(0, 0), (0, 0), (0, 0)],
             "c2X": [(1, 1), (1, 1), (1, 0)], "c2Y": [(1, 0), (0, 0), (1, 0)]}
    rows = [{"task_id": ids[item], "rater": f"r{n + 1}", "sensible": bool(s), "specific": bool(p) if s else None}
            for item, answers in votes.items() for n, (s, p) in enumerate(answers)]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        import_labels(out, path, "jsonl", store)
        report = build_report(store, out, out_dir=tmp_path / "report", n_boot=200)
    # Majority per item: c1X (1, 0), c1Y (0, 0), c2X (1, 1), c2Y (1, 0).
    # X: sensibleness (1+1)/2 = 1, specificity (0+1)/2 = 0.5, SSA 0.75. Y: 0.5, 0, SSA 0.25.
    x, y = report["systems"]["X"], report["systems"]["Y"]
    assert (x["sensibleness"]["value"], x["specificity"]["value"], x["ssa"]["value"]) == (1.0, 0.5, 0.75)
    assert (y["sensibleness"]["value"], y["specificity"]["value"], y["ssa"]["value"]) == (0.5, 0.0, 0.25)
    assert y["ssa"]["ci_low"] <= 0.25 <= y["ssa"]["ci_high"]
    # Sensible units [1,1,0], [0,0,0], [1,1,1], [1,0,1]; each ordered pair weighs 1/(3-1):
    # o11 = 1+3+1 = 5, o00 = 3, o10 = o01 = 1+1 = 2 -> n1 = 7, n0 = 5, n = 12.
    # alpha = 1 - 11 * 4 / (2 * 7 * 5) = 1 - 44/70 = 13/35.
    assert report["agreement"]["sensible"]["alpha"] == pytest.approx(13 / 35)
    assert report["agreement"]["sensible"]["reading"] == "unreliable"
    # Item SSA: c1 X 0.5 vs Y 0 -> X; c2 X 1 vs Y 0.5 -> X. Two wins of two, sign test p = 0.5.
    (comparison,) = report["comparisons"]
    assert (comparison["system_a"], comparison["wins_a"], comparison["wins_b"]) == ("X", 2, 0)
    assert comparison["win_rate_a"] == 1.0 and comparison["p_value"] == pytest.approx(0.5)
    written = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert written["systems"]["X"]["ssa"]["value"] == 0.75
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| X | 2 | 1.000" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("method", ["majority", "dawid-skene"])
def test_ssa_recovered_and_careless_rater_caught(tmp_path: Path, method: str) -> None:
    rng = random.Random(11)
    contexts = {f"c{i}": Context((Turn("user", f"question {i}"),)) for i in range(80)}
    systems = {"good": lambda c: f"Good: {c.last_text}", "weak": lambda c: f"Weak: {c.last_text}"}
    truth: dict[tuple[str, str], Truth] = {}
    for cid in contexts:
        for name, (p_sens, p_spec) in {"good": (0.9, 0.7), "weak": (0.6, 0.3)}.items():
            sensible = rng.random() < p_sens
            truth[(cid, name)] = Truth(sensible, sensible and rng.random() < p_spec / p_sens)
    pots = [
        Honeypot(Context((Turn("user", q),)), r, s, p)
        for q, r, s, p in [("hi", "Hello, how are you?", True, True), ("hi", "Okay.", True, False),
                           ("hi", "Seven blue rivers.", False, False), ("bye", "See you tomorrow!", True, True)]]
    out = tmp_path / "export"
    export_pointwise(contexts, systems, out, "jsonl", overlap=5, honeypots=pots, honeypot_rate=0.1, seed=2)
    raters = [SimulatedRater(f"r{n}", 0.9) for n in range(5)] + [SimulatedRater("careless", careless=True)]
    answers = simulate_answers(out, raters, truth, seed=2)
    path = write_simulated(answers, out, tmp_path / "answers.jsonl", "jsonl")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        import_labels(out, path, "jsonl", store)
        report = build_report(store, out, method=method, n_boot=500)
    assert report["excluded_raters"] == ["careless"]
    assert all(not row["excluded"] for r, row in report["raters"].items() if r != "careless")
    for name in systems:
        sens = sum(truth[(c, name)].sensible for c in contexts) / len(contexts)
        spec = sum(truth[(c, name)].specific for c in contexts) / len(contexts)
        ssa = report["systems"][name]["ssa"]
        assert abs(ssa["value"] - (sens + spec) / 2) < 0.05
        assert ssa["ci_low"] <= (sens + spec) / 2 <= ssa["ci_high"]
    assert report["comparisons"][0]["significant"] and report["comparisons"][0]["system_a"] == "good"


def _cycle_export(tmp_path: Path, utilities: dict[str, dict[str, int]], method: str = "majority") -> dict:
    contexts = {cid: Context((Turn("user", f"topic {cid}"),)) for cid in utilities}
    systems = {s: (lambda c, s=s: f"{s} replies to {c.last_text}") for s in "ABC"}
    as_truth = {2: Truth(True, True), 1: Truth(True, False), 0: Truth(False, False)}
    truth = {(cid, s): as_truth[u] for cid, by in utilities.items() for s, u in by.items()}
    out = tmp_path / "export"
    export_pairwise(contexts, systems, out, "jsonl", overlap=3, honeypot_rate=0, seed=9)
    raters = [SimulatedRater(f"r{n}", accuracy=1.0) for n in range(3)]
    path = write_simulated(simulate_answers(out, raters, truth), out, tmp_path / "a.jsonl", "jsonl")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        import_labels(out, path, "jsonl", store)
        return build_report(store, out, method=method, n_boot=50)


@pytest.mark.parametrize("method", ["majority", "dawid-skene"])
def test_intransitive_preferences_warn(tmp_path: Path, method: str) -> None:
    # Condorcet: per-context rankings A>B>C, B>C>A, C>A>B give A>B, B>C and C>A, each 2 to 1.
    report = _cycle_export(tmp_path, {"k1": {"A": 2, "B": 1, "C": 0}, "k2": {"B": 2, "C": 1, "A": 0},
                                      "k3": {"C": 2, "A": 1, "B": 0}}, method)
    wins = {(c["system_a"], c["system_b"]): (c["wins_a"], c["wins_b"]) for c in report["comparisons"]}
    assert wins == {("A", "B"): (2, 1), ("B", "C"): (2, 1), ("A", "C"): (1, 2)}
    assert sorted(report["intransitive_cycle"]) == ["A", "B", "C"]
    assert any("intransitive" in w for w in report["warnings"])


def test_consistent_preferences_do_not_warn(tmp_path: Path) -> None:
    report = _cycle_export(tmp_path, {"k1": {"A": 2, "B": 1, "C": 0}, "k2": {"A": 2, "B": 1, "C": 0},
                                      "k3": {"C": 2, "A": 1, "B": 0}})
    assert report["intransitive_cycle"] is None
    assert not any("intransitive" in w for w in report["warnings"])

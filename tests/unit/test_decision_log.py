"""Exploration policies and the decision log: propensities, line schema, privacy, back-pressure, rotation, faults."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.types import Candidate, Context, Turn
from dialog.serving.decision_log import DecisionLog, context_hash
from dialog.serving.exploration import Explorer
from rl.exploration import ServingPolicy, expected_top1_loss

CONTEXT = Context((Turn("user", "Привет, как дела?"),))


def _pool(n: int = 6, features: bool = True) -> list[Candidate]:
    return [Candidate(f"reply {i}", "bank", "ru", phrase_id=i + 1, score=2.0 - i * 0.5,
                      features={"f_a": float(i), "f_b": float("nan") if i == 0 else 1.0} if features else {})
            for i in range(n)]


def _lines(log: DecisionLog) -> list[dict]:
    return [json.loads(line) for path in log.files() for line in path.read_text(encoding="utf-8").splitlines()]


# ---- policies ------------------------------------------------------------------------------------


def test_epsilon_greedy_propensities() -> None:
    p = ServingPolicy("epsilon-greedy", epsilon=0.1, top_k=4).propensities(np.array([0.0, 3.0, 1.0, 2.0, -1.0, 5.0]))
    assert p.sum() == pytest.approx(1.0)
    assert p[5] == pytest.approx(0.9 + 0.1 / 4)
    assert p[1] == p[3] == p[2] == pytest.approx(0.1 / 4)
    assert p[0] == p[4] == 0.0, "outside the top K nothing is explored"


def test_softmax_and_greedy_propensities() -> None:
    scores = np.array([1.0, 0.0, -1.0])
    soft = ServingPolicy("softmax", temperature=0.5, top_k=0).propensities(scores)
    expected = np.exp(scores / 0.5) / np.exp(scores / 0.5).sum()
    assert np.allclose(soft, expected)
    assert ServingPolicy("greedy").propensities(scores).tolist() == [1.0, 0.0, 0.0]
    assert ServingPolicy("softmax", top_k=2).propensities(scores)[2] == 0.0


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"kind": "thompson"}, "not one of"), ({"epsilon": 1.5}, "epsilon"), ({"temperature": 0.0}, "temperature"),
    ({"top_k": -1}, "top_k"),
])
def test_bad_policy_config_names_the_key(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ServingPolicy(**kwargs)


def test_draws_follow_the_propensities_and_the_chosen_one_is_served_first() -> None:
    explorer = Explorer(ServingPolicy("epsilon-greedy", epsilon=0.5, top_k=3), seed=7)
    counts = np.zeros(6)
    for _ in range(4000):
        ranked = _pool()
        decision = explorer.choose(ranked)
        assert decision is not None
        assert ranked[0].text == decision.pool[decision.chosen].text
        assert decision.chosen_propensity > 0
        counts[decision.chosen] += 1
    expected = np.array([0.5 + 0.5 / 3, 0.5 / 3, 0.5 / 3, 0, 0, 0]) * 4000
    assert counts[3:].sum() == 0
    assert np.abs(counts - expected).max() < 4 * np.sqrt(4000 * 0.25), (counts, expected)


def test_expected_r1_loss_is_bounded_by_epsilon() -> None:
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=10) for _ in range(300)]
    relevant = [(s == s.max()).astype(float) * (rng.random() < 0.6) for s in scores]
    loss = expected_top1_loss(ServingPolicy("epsilon-greedy", 0.05, top_k=5), scores, relevant)
    assert 0 < loss["r1_loss"] <= 0.05 * (1 - 1 / 5) * loss["r1_greedy"] + 1e-12


# ---- the log -------------------------------------------------------------------------------------


def _log(tmp_path: Path, **kwargs) -> DecisionLog:
    schema = {"feature_names": ["f_a", "f_b"], "ranker": "abc", "annotators": [{"name": "x", "version": "1"}]}
    return DecisionLog(tmp_path / "decisions", feature_schema=schema, **kwargs)


def test_one_line_per_decision_with_propensities_and_hashed_private_fields(tmp_path: Path) -> None:
    log = _log(tmp_path)
    explorer = Explorer(ServingPolicy("epsilon-greedy", 0.2, top_k=3), seed=1)
    decision = explorer.choose(_pool())
    assert log.record("req-1", "session-42", CONTEXT, "ru", decision, {"encoder": "e@1", "ranker": "abc"})
    log.close()
    [line] = _lines(log)
    assert line["schema"] == "repliq.decision/1" and line["request_id"] == "req-1" and line["language"] == "ru"
    assert "context" not in line and line["context_hash"] == context_hash(CONTEXT)
    assert line["session"] and "session-42" not in json.dumps(line)
    assert line["policy"]["name"] == "epsilon-greedy/eps=0.2/k=3"
    assert [c["propensity"] for c in line["candidates"]] == pytest.approx(decision.propensities)
    assert sum(c["propensity"] for c in line["candidates"]) == pytest.approx(1.0)
    assert line["chosen"] == decision.chosen
    assert line["feature_names"] == ["f_a", "f_b"] and line["feature_schema"]["ranker"] == "abc"
    assert line["candidates"][0]["features"] == [0.0, None], "NaN features are null, the line stays valid JSON"
    assert line["versions"]["encoder"] == "e@1"


def test_user_text_only_when_allowed_and_session_hash_is_stable(tmp_path: Path) -> None:
    log = _log(tmp_path, log_user_text=True)
    explorer = Explorer(ServingPolicy("greedy"))
    for rid in ("a", "b"):
        log.record(rid, "s1", CONTEXT, "ru", explorer.choose(_pool()), {})
    log.record("c", "", CONTEXT, "ru", None, {})
    log.close()
    lines = _lines(log)
    assert [ln["request_id"] for ln in lines] == ["a", "b"] and log.stats()["skipped_empty"] == 1
    assert lines[0]["context"] == [{"speaker": "user", "text": "Привет, как дела?"}]
    assert lines[0]["session"] == lines[1]["session"]
    again = _log(tmp_path)
    assert again.session_hash("s1") == lines[0]["session"], "the salt persists across restarts"
    again.close()


def test_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    log = _log(tmp_path, queue_size=4)
    gate = threading.Event()
    original = log._write

    def stalled(batch: list) -> None:
        gate.wait(10)
        original(batch)

    log._write = stalled  # type: ignore[method-assign]
    explorer = Explorer(ServingPolicy("greedy"))
    decision = explorer.choose(_pool())
    started = time.perf_counter()
    accepted = [log.record(f"r{i}", "", CONTEXT, "ru", decision, {}) for i in range(50)]
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"recording 50 decisions took {elapsed:.3f}s with a stalled writer"
    assert sum(accepted) <= 5 and log.stats()["dropped_full"] == 50 - sum(accepted)
    gate.set()
    log.close()
    assert len(_lines(log)) == sum(accepted)


def test_rotation_by_size_and_retention(tmp_path: Path) -> None:
    directory = tmp_path / "decisions"
    directory.mkdir()
    old = directory / "decisions-20000101T000000000000-1.jsonl"
    old.write_text("{}\n")
    os.utime(old, (time.time() - 40 * 86400, time.time() - 40 * 86400))
    log = _log(tmp_path, rotate_bytes=2048, retention_days=30)
    explorer = Explorer(ServingPolicy("greedy"))
    for i in range(30):
        log.record(f"r{i}", "", CONTEXT, "ru", explorer.choose(_pool()), {})
        time.sleep(0.002)
    log.close()
    assert not old.exists(), "files past the retention are deleted"
    files = log.files()
    assert len(files) >= 3
    assert all(f.stat().st_size < 2048 + 4096 for f in files)
    assert len(_lines(log)) == 30


def test_retention_runs_on_a_clock_without_rotation(tmp_path: Path) -> None:
    """A quiet server never fills a file; old logs must still go."""
    log = _log(tmp_path, rotate_bytes=1 << 20, retention_days=1, prune_every_s=0.05)
    log.record("r0", "", CONTEXT, "ru", Explorer(ServingPolicy("greedy")).choose(_pool()), {})
    deadline = time.time() + 5
    while not log.files() and time.time() < deadline:
        time.sleep(0.01)
    old = log.directory / "decisions-20000101T000000000000-1.jsonl"
    old.write_text("{}\n")
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    while old.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert not old.exists(), "the writer deletes files past the retention while idle"
    assert len(log.files()) == 1, "the current file is kept (and no rotation happened)"
    log.close()
    assert len(_lines(log)) == 1


def test_write_error_stops_logging_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = _log(tmp_path)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    log._current = disk_full  # type: ignore[method-assign]
    explorer = Explorer(ServingPolicy("greedy"))
    with caplog.at_level(logging.ERROR, logger="repliq.decisions"):
        logging.getLogger("repliq.decisions").propagate = True
        try:
            for i in range(5):
                log.record(f"r{i}", "", CONTEXT, "ru", explorer.choose(_pool()), {})
                time.sleep(0.05)
            log.close()
        finally:
            logging.getLogger("repliq.decisions").propagate = False
    assert log.failed and "No space left" in log.failed
    assert log.stats()["written"] == 0 and log.stats()["dropped_failed"] == 5
    assert len([r for r in caplog.records if "decision logging stopped" in r.getMessage()]) == 1
    from dialog.serving.metrics import REGISTRY

    assert REGISTRY.get_sample_value("repliq_decision_log_failed") == 1.0, "the metric says logging stopped"
    assert REGISTRY.get_sample_value("repliq_decisions_dropped_total", {"reason": "failed"}) >= 5


# ---- reading logs back and labeling served turns ---------------------------------------------------


def _served_logs(tmp_path: Path, log_user_text: bool = True) -> Path:
    log = _log(tmp_path, log_user_text=log_user_text)
    policies = [Explorer(ServingPolicy("greedy")), Explorer(ServingPolicy("epsilon-greedy", 0.3, top_k=3), seed=2)]
    for i in range(40):
        language = "ru" if i % 2 else "en"
        context = Context((Turn("user", f"turn {i} text"),))
        log.record(f"req-{i}", "", context, language, policies[i % 4 // 2].choose(_pool()), {"ranker": "abc"})
    log.close()
    return log.directory


def test_reader_skips_corrupt_and_truncated_lines_and_counts_them(tmp_path: Path) -> None:
    from rl.decision_records import read_decisions

    directory = _served_logs(tmp_path)
    path = sorted(directory.glob("decisions-*.jsonl"))[0]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("not json\n" + json.dumps({"schema": "repliq.decision/1", "request_id": "x"}) + "\n")
        handle.write('{"schema": "repliq.decision/1", "req')
    records, problems = read_decisions(directory)
    assert len(records) == 40
    assert [why for _, _, why in problems] == [
        "not valid JSON (Expecting value)", "missing field(s) ['language', 'policy', 'candidates', 'chosen', "
        "'versions']", "truncated line"]
    with pytest.raises(FileNotFoundError, match="decisions = true"):
        read_decisions(tmp_path / "nowhere")


def test_ssa_export_from_logs_is_stratified_and_keyed_by_request_id(tmp_path: Path) -> None:
    from dialog.labeling.from_logs import export_from_logs
    from dialog.labeling.tasks import LabelingError, load_export, load_key

    summary = export_from_logs(_served_logs(tmp_path), tmp_path / "export", per_stratum=4, overlap=3, seed=1)
    strata = {(s["language"], s["policy"]): s["sampled"] for s in summary["strata"]}
    assert strata == {("en", "greedy@abc"): 4, ("ru", "greedy@abc"): 4,
                      ("en", "epsilon-greedy/eps=0.3/k=3@abc"): 4, ("ru", "epsilon-greedy/eps=0.3/k=3@abc"): 4}
    export = load_export(tmp_path / "export")
    assert len(export.tasks) == 16 and all(cid.startswith("req-") for cid in export.contexts)
    key = load_key(tmp_path / "export" / "key.json", export)
    assert {name for tid in export.tasks for name in key.names(tid)} == {p for _, p in strata}
    assert all(not name.startswith(("greedy", "epsilon")) for name in key.task_systems and key.systems), "blinded"
    with pytest.raises(LabelingError, match="log_user_text"):
        export_from_logs(_served_logs(tmp_path / "private", log_user_text=False), tmp_path / "export2")

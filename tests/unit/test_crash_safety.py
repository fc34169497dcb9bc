"""Crash safety of the jobs that write the workspace: kill -9 at several points, then look and rerun.

Each job runs as a real `repliq` command in a child process (tests/crash_jobs.py) on tiny random-weight
models and is killed with SIGKILL at three points: one anywhere in its execution and two at calls that
write storage (SQLite statements, file writes, renames). After each kill:

- the SQLite files pass ``PRAGMA integrity_check``;
- the bank's (or label store's) content checksum is the old one or the new one, nothing in between;
- what a reader would load (the index snapshot named by CURRENT, the blender directory) is complete
  and verified, old or new, never half-written;
- rerunning the command finishes and reaches the same content as an uninterrupted run.

Then a full disk (RLIMIT_FSIZE) while writing the bank and an artifact: a clear error and the old state.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from crash_jobs import Run, kill_points, run
from tiny_models import build_tiny_encoder

SEED = int(os.environ.get("REPLIQ_CRASH_SEED", "4"))
KILLS = 3


def content(bank_path: Path) -> str:
    """What the bank says, without timestamps: phrases, their versions, and how many history entries."""
    with sqlite3.connect(bank_path) as conn:
        rows = conn.execute("SELECT id, text, language, tags, status, source, license, author, version FROM phrases "
                            "ORDER BY id").fetchall()
        history = conn.execute("SELECT COUNT(*) FROM history").fetchone()[0]
    return hashlib.sha256(json.dumps([rows, history], ensure_ascii=False).encode()).hexdigest()


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _phrases(path: Path, start: int, n: int) -> Path:
    rng = random.Random(start)
    words = {"en": ["hello", "tea", "weather", "book", "walk", "tired", "later", "time"],
             "ru": ["привет", "чай", "погода", "книга", "гулять", "устал", "потом", "время"]}
    rows = [f"{' '.join(rng.sample(words[lang], 3)).capitalize()} {i}.,{lang}"
            for i in range(start, start + n) for lang in ("en", "ru")]
    path.write_text("text,language\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace on a tiny encoder with 60 phrases, an index and the files later jobs import."""
    root = tmp_path_factory.mktemp("crash")
    encoder = build_tiny_encoder(root / "encoder")
    home = root / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[encoder]\nname = "{encoder}"\n[ranker]\nspecificity = "none"\n',
                                      encoding="utf-8")
    _phrases(root / "first.csv", 0, 30)
    _phrases(root / "second.csv", 1000, 20)
    assert run(["--home", str(home), "bank", "import", str(root / "first.csv")]).rc == 0
    assert run(["--home", str(home), "index", "build"]).rc == 0
    return root


def copy_home(base: Path, name: str) -> Path:
    home = base / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(base / "home", home)
    return home


def crash_and_check(base: Path, name: str, argv: list[str], observe, rerun_ok) -> dict[str, list]:
    """Reference run, dry run, then a kill at each point: ``observe(home)`` says what a reader sees (and
    checks it is old or new), ``rerun_ok(run, seen)`` judges the rerun. Returns what each kill left."""
    old = observe(copy_home(base, f"{name}-old"))
    reference = copy_home(base, f"{name}-ref")
    dry = run(["--home", str(reference), *argv])
    assert dry.rc == 0, dry.stderr[-2000:]
    new = observe(reference)
    assert new != old, "the job changed nothing: the test would prove nothing"
    seen: dict[str, list] = {"old": [], "new": []}
    for n, point in enumerate(kill_points(dry, KILLS, SEED)):
        home = copy_home(base, f"{name}-kill{n}")
        killed = run(["--home", str(home), *argv], kill_at=point)
        assert killed.killed, f"the kill at call {point} of {dry.calls} did not happen"
        state = observe(home)
        assert state in (old, new), f"kill at call {point}: a state that is neither old nor new"
        seen["old" if state == old else "new"].append(point)
        again = run(["--home", str(home), *argv])
        assert rerun_ok(again, state == new), again.stderr[-2000:]
        assert observe(home) == new, f"kill at call {point}: the rerun did not reach the uninterrupted result"
    return seen


def bank_state(home: Path) -> str:
    assert integrity(home / "bank.sqlite") == "ok"
    return content(home / "bank.sqlite")


def test_bank_import_killed_anywhere_is_all_or_nothing(base: Path) -> None:
    def rerun_ok(again: Run, was_new: bool) -> bool:  # a finished import refuses its file a second time
        return again.rc == (1 if was_new else 0) and (not was_new or "duplicate" in again.stdout + again.stderr)

    crash_and_check(base, "import", ["bank", "import", str(base / "second.csv")], bank_state, rerun_ok)


def index_state(home: Path) -> str:
    """The snapshot CURRENT names, fully verified (checksums of every shard and of the phrase list)."""
    from core.config import load_settings
    from retriever.bank_index import _open_snapshot, index_root
    from retriever.encoder import Encoder

    settings = load_settings(environ={"REPLIQ_HOME": str(home)})
    encoder = Encoder.from_config(settings)
    manifest, _, stored = _open_snapshot(index_root(settings, encoder), encoder, settings)
    assert len(stored) == manifest.total
    return manifest.content_sha256


def test_index_build_killed_anywhere_serves_old_or_new(base: Path) -> None:
    home = base / "home"
    assert run(["--home", str(home), "bank", "import", str(_phrases(base / "third.csv", 2000, 10))]).rc == 0
    try:
        crash_and_check(base, "index", ["index", "build"], index_state, lambda again, _: again.rc == 0)
    finally:
        assert run(["--home", str(home), "index", "build"]).rc == 0  # leave the base consistent for later tests


def labels_state(home: Path) -> str:
    path = home / "labels.sqlite"
    if not path.exists():
        return "no store"
    assert integrity(path) == "ok"
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT export_id, task_id, rater, sensible, specific FROM labels ORDER BY id").fetchall()
        imports = conn.execute("SELECT COUNT(*) FROM imports").fetchone()[0]
    return hashlib.sha256(json.dumps([rows, imports]).encode()).hexdigest()


def test_ssa_import_killed_anywhere_is_all_or_nothing(base: Path) -> None:
    from core.types import Context, Turn
    from dialog.labeling import export_pointwise
    from dialog.labeling.tasks import load_export

    contexts = {f"c{i}": Context((Turn("user", f"фраза {i}"),)) for i in range(6)}
    export_pointwise(contexts, {"x": lambda c: f"Sure: {c.last_text}"}, base / "export", overlap=2, honeypot_rate=0)
    answers = base / "answers.jsonl"
    answers.write_text("".join(json.dumps({"task_id": t, "rater": f"r{n}", "sensible": "yes", "specific": "no"}) + "\n"
                               for t in load_export(base / "export").tasks for n in range(2)), encoding="utf-8")

    def rerun_ok(again: Run, was_new: bool) -> bool:
        return again.rc == (2 if was_new else 0) and (not was_new or "already imported" in again.stderr)

    crash_and_check(base, "ssa", ["ssa", "import", "--export", str(base / "export"), "--answers", str(answers)],
                    labels_state, rerun_ok)


def blender_state(home: Path) -> str:
    """The blender a server would load: complete and hash-checked (Blender.load verifies the booster)."""
    from ranker.blender import Blender

    directory = home / "artifacts" / "blender"
    assert directory.is_dir(), "the blender directory vanished"
    return Blender.load(directory).manifest.model_sha256


def test_train_blender_killed_anywhere_leaves_a_loadable_blender(base: Path) -> None:
    corpus = base / "corpus.jsonl"
    rng = random.Random(1)
    words = {"en": ["hello", "tea", "weather", "book", "walk"], "ru": ["привет", "чай", "погода", "книга", "гулять"]}
    corpus.write_text("".join(json.dumps({"id": f"c:{lang}{i}", "language": lang, "turns": [
        {"speaker": "AB"[j % 2], "text": f"{' '.join(rng.sample(words[lang], 2))} {j}"} for j in range(4)]},
        ensure_ascii=False) + "\n" for i in range(24) for lang in words), encoding="utf-8")
    train = ["train", "blender", "--chitchat", "0", "--corpus", str(corpus), "--rounds", "5"]
    home = base / "home"
    first = run(["--home", str(home), *train, "--max-pairs", "12"])
    assert first.rc == 0, first.stderr[-2000:]
    crash_and_check(base, "blender", [*train, "--max-pairs", "16"], blender_state, lambda again, _: again.rc == 0)


def test_a_full_disk_while_importing_or_building_keeps_the_old_state(base: Path) -> None:
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, like a full disk."""
    home = copy_home(base, "full-disk")
    bank = home / "bank.sqlite"
    before, size = content(bank), bank.stat().st_size
    big = base / "big.csv"
    big.write_text("text,language\n" + "".join(f"A long phrase number {i} {'x' * 300}.,en\n" for i in range(2000)),
                   encoding="utf-8")
    full = run(["--home", str(home), "bank", "import", str(big)], fsize_limit=size + 64 * 1024)
    assert full.rc not in (0, -1), full.stderr[-2000:]  # -1: an uncaught traceback
    assert "disk" in full.stderr.lower() and str(home) in full.stderr, full.stderr[-2000:]
    assert integrity(bank) == "ok" and content(bank) == before
    index_before = index_state(home)
    assert run(["--home", str(home), "bank", "import", str(_phrases(base / "fourth.csv", 3000, 5))]).rc == 0
    full = run(["--home", str(home), "index", "build", "--full"], fsize_limit=4096)
    assert full.rc not in (0, -1), full.stderr[-2000:]
    assert "disk" in full.stderr.lower(), full.stderr[-2000:]
    assert index_state(home) == index_before  # CURRENT still names the complete old snapshot
    assert run(["--home", str(home), "index", "build"]).rc == 0 and index_state(home) != index_before


def test_publishing_a_directory_killed_at_every_storage_call_leaves_old_or_new(tmp_path: Path) -> None:
    """atomic_directory, the publisher of every directory artifact (blender, index snapshot, reward model),
    killed at each of its storage calls: the target holds the complete old or the complete new version."""
    target, saved = tmp_path / "artifact", tmp_path / "saved"
    job = ("crash_jobs:publish", str(target), "new")
    assert run(("crash_jobs:publish", str(target), "old")).rc == 0
    shutil.copytree(target, saved)
    dry = run(job)
    last_write = max(i for i, name in dry.storage_calls if name == "write")
    publishing = [i for i, _ in dry.storage_calls if i > last_write]  # the swap and the clean-up after it
    assert any(name in ("_exchange", "replace") for _, name in dry.storage_calls)
    outcomes = set()
    for point in sorted({*publishing, *(i + 1 for i in publishing)}):
        shutil.rmtree(target)
        shutil.copytree(saved, target)
        assert run(job, kill_at=point).killed
        versions = {(target / name).read_text(encoding="utf-8") for name in ("manifest", "weights", "extra")}
        assert versions in ({"old"}, {"new"}), f"kill at call {point}: {versions}"
        outcomes |= versions
    assert outcomes == {"old", "new"}  # some kills landed before the swap, some after

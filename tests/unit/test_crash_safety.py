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
from tiny_models import build_tiny_decoder, build_tiny_encoder

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


def copy_home(base: Path, name: str, source: str = "home") -> Path:
    home = base / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(base / source, home)
    return home


def crash_and_check(base: Path, name: str, argv: list[str], observe, rerun_ok, source: str = "home",
                    extra_points=lambda dry: [], check_resume=None, kills: int = KILLS) -> dict[str, list]:
    """Reference run, dry run, then a kill at each point: ``observe(home)`` says what a reader sees (and
    checks it is old or new), ``rerun_ok(run, seen)`` judges the rerun. Returns what each kill left.
    ``extra_points(dry)`` adds kill points; ``check_resume(home)``, called after a kill, returns a check of
    the home after the rerun (did it continue from what the killed run had saved?)."""
    old = observe(copy_home(base, f"{name}-old", source))
    reference = copy_home(base, f"{name}-ref", source)
    dry = run(["--home", str(reference), *argv])
    assert dry.rc == 0, dry.stderr[-2000:]
    new = observe(reference)
    assert new != old, "the job changed nothing: the test would prove nothing"
    seen: dict[str, list] = {"old": [], "new": []}
    for n, point in enumerate([*kill_points(dry, kills, SEED), *extra_points(dry)]):
        home = copy_home(base, f"{name}-kill{n}", source)
        killed = run(["--home", str(home), *argv], kill_at=point)
        assert killed.killed, f"the kill at call {point} of {dry.calls} did not happen"
        state = observe(home)
        assert state in (old, new), f"kill at call {point}: a state that is neither old nor new"
        seen["old" if state == old else "new"].append(point)
        resumed = check_resume(home) if check_resume is not None else None
        again = run(["--home", str(home), *argv])
        assert rerun_ok(again, state == new), again.stderr[-2000:]
        assert observe(home) == new, f"kill at call {point}: the rerun did not reach the uninterrupted result"
        if resumed is not None:
            resumed(home)
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


def write_corpus(corpus: Path) -> Path:
    """24 four-turn dialogues per language in the JSONL dialogue format: the blender's training data."""
    rng = random.Random(1)
    words = {"en": ["hello", "tea", "weather", "book", "walk"], "ru": ["привет", "чай", "погода", "книга", "гулять"]}
    corpus.write_text("".join(json.dumps({"id": f"c:{lang}{i}", "language": lang, "turns": [
        {"speaker": "AB"[j % 2], "text": f"{' '.join(rng.sample(words[lang], 2))} {j}"} for j in range(4)]},
        ensure_ascii=False) + "\n" for i in range(24) for lang in words), encoding="utf-8")
    return corpus


def test_train_blender_killed_anywhere_leaves_a_loadable_blender(base: Path) -> None:
    corpus = write_corpus(base / "corpus.jsonl")
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


# The LM and RL jobs: `bank score` (resumable, batch by batch), `train reward` and `rl tune` (resumable from
# its per-iteration checkpoint). Their workspace adds a tiny decoder as the LM and a blender to the base.


@pytest.fixture(scope="module")
def jobs(base: Path) -> Path:
    """Two sources beside the base home: ``jobs`` (a blender, no LM scores yet) and ``rl`` (also the bank
    scored, a specificity proxy and a relevance model: what `rl tune` needs)."""
    from core.config import load_settings
    from core.training_corpora import BlenderCorpora, read_corpora, sample_pairs
    from rl.relevance import train_relevance_model

    decoder = build_tiny_decoder(base / "decoder")
    home = copy_home(base, "jobs")
    with (home / "config.toml").open("a", encoding="utf-8") as config:
        config.write(f'[lm]\nname = "{decoder}"\nthreads = 1\n')
    corpus = write_corpus(base / "jobs-corpus.jsonl")
    trained = run([*lm_argv(base, home), "train", "blender", "--chitchat", "0", "--corpus", str(corpus),
                   "--rounds", "5", "--max-pairs", "16"])
    assert trained.rc == 0, trained.stderr[-2000:]
    rl = copy_home(base, "rl", "jobs")
    proxy = run([*lm_argv(base, rl), *REWARD, "--members", "1"])
    assert proxy.rc == 0, proxy.stderr[-2000:]
    settings = load_settings(environ={"REPLIQ_HOME": str(rl), "REPLIQ_MODELS": str(base / "models")})
    pairs = sample_pairs(read_corpora(BlenderCorpora(chitchat_conversations=0, jsonl=[corpus])), ("en", "ru"), 40,
                         settings.retrieval.context_turns, seed=0)
    train_relevance_model(settings, pairs, settings.artifacts_dir / "reward-relevance")
    return base


REWARD = ["train", "reward", "--kind", "specificity", "--inputs", "lexical", "--head", "ridge"]


def lm_argv(base: Path, home: Path | None = None) -> list[str]:
    """A models directory of the test's own: the teacher cache lives beside it, never in the user's cache."""
    return [*(["--home", str(home)] if home else []), "--models-dir", str(base / "models")]


def lm_scores(home: Path) -> dict[int, tuple[int, float, float]]:
    with sqlite3.connect(home / "bank.sqlite") as conn:
        rows = conn.execute("SELECT phrase_id, phrase_version, sum_logprob, n_tokens FROM lm_scores").fetchall()
    return {pid: (version, total, tokens) for pid, version, total, tokens in rows}


def same_scores(got: dict, want: dict) -> bool:
    """Equal up to float noise (a batch's padding changes the last bits of a log-probability)."""
    return all(pid in want and got[pid][0] == want[pid][0] and got[pid][2] == want[pid][2]
               and got[pid][1] == pytest.approx(want[pid][1], rel=1e-4, abs=1e-4) for pid in got)


def test_bank_score_killed_anywhere_keeps_whole_batches_and_the_rerun_resumes(jobs: Path) -> None:
    argv = [*lm_argv(jobs), "bank", "score", "--batch-size", "8"]
    reference = copy_home(jobs, "score-ref", "jobs")
    phrases = content(reference / "bank.sqlite")
    dry = run(["--home", str(reference), *argv])
    assert dry.rc == 0, dry.stderr[-2000:]
    full = lm_scores(reference)
    assert len(full) > 16, "too few phrases for several batches: the test would prove little"
    batches = sum(name == "executemany" for _, name in dry.storage_calls)
    assert batches >= 3, dry.storage_calls
    # One kill anywhere, one as the second batch is written (the first is committed), one as the last is.
    points = [*kill_points(dry, 1, SEED), ("executemany", 2), ("executemany", batches)]
    resumed = []
    for n, point in enumerate(points):
        home = copy_home(jobs, f"score-kill{n}", "jobs")
        assert run(["--home", str(home), *argv], kill_at=point).killed
        assert integrity(home / "bank.sqlite") == "ok" and content(home / "bank.sqlite") == phrases
        partial = lm_scores(home)
        assert len(partial) % 8 == 0 or len(partial) == len(full), f"kill at {point}: half a batch was stored"
        assert same_scores(partial, full), f"kill at {point}: a stored score differs from the uninterrupted run"
        again = run(["--home", str(home), *argv])
        assert again.rc == 0, again.stderr[-2000:]
        # Resumed: only the phrases the killed run had not committed are scored again.
        assert f"scored {len(full) - len(partial)} phrases" in again.stdout, again.stdout
        assert f"{len(partial)} of {len(full)} approved phrases were already up to date" in again.stdout
        assert lm_scores(home).keys() == full.keys() and same_scores(lm_scores(home), full)
        resumed.append(len(partial))
    assert any(0 < k < len(full) for k in resumed), f"no kill landed between two batches: {resumed}"


def proxy_state(home: Path) -> str:
    """The specificity proxy RL would load (load_artifact checks every array against its manifest)."""
    from rl.proxy import load_specificity_proxy

    assert integrity(home / "bank.sqlite") == "ok"
    return load_specificity_proxy(home / "artifacts" / "reward-specificity", None).identity


def test_train_reward_killed_anywhere_leaves_a_loadable_proxy(jobs: Path) -> None:
    crash_and_check(jobs, "reward", [*lm_argv(jobs), *REWARD, "--members", "2"], proxy_state,
                    lambda again, _: again.rc == 0, source="rl")


def tuned_state(home: Path) -> str:
    """The tuned blender a server would load (Blender.load verifies the booster against its manifest), or
    none at all; never a directory that exists but does not load."""
    from ranker.blender import Blender

    assert integrity(home / "bank.sqlite") == "ok"
    directory = home / "artifacts" / "blender-rl"
    return Blender.load(directory).manifest.model_sha256 if directory.exists() else "no tuned blender"


def test_rl_tune_killed_anywhere_resumes_from_its_checkpoint(jobs: Path) -> None:
    """Kills anywhere, at a publishing call, and as the second checkpoint starts (the first is complete),
    so at least one rerun must continue from a saved iteration rather than start over."""
    resumed: list[int] = []

    def check_resume(home: Path):
        state = home / "artifacts" / "rl-run" / "beta-0.05" / "checkpoint" / "state.json"
        if not state.exists():
            return None
        saved = json.loads(state.read_text(encoding="utf-8"))["history"]

        def after(home: Path) -> None:
            report = json.loads((home / "artifacts" / "rl-run" / "report.json").read_text(encoding="utf-8"))
            # Rows are loaded, not recomputed: even their measured seconds are the killed run's.
            assert report["runs"]["0.05"]["history"][:len(saved)] == saved
            resumed.append(len(saved))

        return after

    def second_checkpoint(dry: Run) -> list[tuple[str, int]]:
        saves = [i for i, name in dry.storage_calls if name == "rl.tune._save"]
        assert len(saves) == 2, saves  # one checkpoint per iteration
        return [("rl.tune._save", 2)]

    argv = [*lm_argv(jobs), "rl", "tune", "--betas", "0.05", "--beta", "0.05", "--iterations", "2"]
    crash_and_check(jobs, "rl", argv, tuned_state, lambda again, _: again.rc == 0, source="rl",
                    extra_points=second_checkpoint, check_resume=check_resume, kills=2)
    assert any(n > 1 for n in resumed), resumed

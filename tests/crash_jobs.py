"""Run a `repliq` command in a child process and kill it with SIGKILL at a chosen point of its execution.

A point is the n-th Python or C function call of the child's main thread (``sys.setprofile``), so kill
points land anywhere: inside a computation, between two SQLite statements, halfway through writing a
file, just before or after an atomic rename. A dry run first counts the calls and lists those that
touch storage (write, rename, fsync, commit, ...), so a test can aim at those as well as anywhere.

Children come from a ``forkserver`` that has already imported torch, transformers, faiss, lightgbm and
the command line, so each starts in well under a second; the forkserver itself never runs a model,
so forking it is safe (no thread pools exist yet). ``fsize_limit`` makes files larger than that many
bytes fail with EFBIG in the child (RLIMIT_FSIZE; SIGXFSZ ignored): a full disk.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

PRELOAD = ["torch", "transformers", "sentence_transformers", "faiss", "lightgbm", "numpy", "sqlite3",
           "dialog.cli.main", "dialog.jobs.index_build", "dialog.jobs.train_blender", "core.bank.store",
           "retriever.bank_index", "dialog.labeling.workflow", "ranker.blender",
           # The LM and RL jobs, and what they import lazily (matplotlib for their plots, transformers' LM parts).
           "dialog.jobs.bank_score", "dialog.jobs.train_reward", "dialog.jobs.rl_tune", "rl.plots",
           "matplotlib.figure", "matplotlib.backends.backend_agg", "transformers.masking_utils",
           "transformers.modeling_layers"]
# C functions whose call is an interesting moment to die: storage is being written or published.
STORAGE_CALLS = frozenset({"write", "writelines", "flush", "fsync", "replace", "rename", "unlink", "rmdir", "mkdir",
                           "commit", "execute", "executemany", "executescript", "close", "truncate", "makedirs",
                           "rmtree", "copyfile", "save", "write_index", "save_model", "dump", "_exchange",
                           "rl.tune._save"})
# Python functions recorded under a qualified name, since their short name is common elsewhere:
# short name -> (the file's path ending, the recorded name).
QUALIFIED = {"_save": ("rl/tune.py", "rl.tune._save")}
_CONTEXT: Any = None


def context() -> Any:
    """The shared forkserver context (started on first use, preloaded once per test session)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


@dataclass
class Run:
    killed: bool
    rc: int | None = None
    calls: int = 0
    storage_calls: list[tuple[int, str]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""


def publish(directory: str, version: str) -> int:
    """A small artifact written through ``atomic_directory``: three files that must agree."""
    from pathlib import Path

    from core.atomic import atomic_directory

    with atomic_directory(Path(directory)) as scratch:
        for name in ("manifest", "weights", "extra"):
            (scratch / name).write_text(version, encoding="utf-8")
    return 0


def _child(argv: list[str] | tuple[str, ...], kill_at: int | tuple[str, int], fsize_limit: int,
           conn: Connection) -> None:
    """Run ``repliq argv`` (a list), or ``module:function`` with string arguments (a tuple)."""
    import importlib

    from dialog.cli.main import main

    if isinstance(argv, tuple):
        module, name = argv[0].split(":")
        function, arguments = getattr(importlib.import_module(module), name), argv[1:]
    else:
        function, arguments = main, (argv,)

    if fsize_limit:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    calls = 0
    storage: list[tuple[int, str]] = []
    # A named point: the n-th call of that storage function (call counts shift with timing, e.g. tqdm's
    # refreshes, so "the last batch's write" is found by name, not by its number in a dry run).
    target, occurrence = kill_at if isinstance(kill_at, tuple) else ("", 0)
    record = not target and kill_at < 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls, occurrence
        if event == "call" or event == "c_call":
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if record or target:
                name = frame.f_code.co_name if event == "call" else getattr(arg, "__name__", "")
                if event == "call" and name in QUALIFIED and frame.f_code.co_filename.endswith(QUALIFIED[name][0]):
                    name = QUALIFIED[name][1]
                if name == target:
                    occurrence -= 1
                    if occurrence == 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                if record and name in STORAGE_CALLS:
                    storage.append((calls, name))
            calls += 1

    out, err = io.StringIO(), io.StringIO()
    rc: int | None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.setprofile(profile)
        try:
            rc = function(*arguments)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # a traceback is a finding: hand it back, do not hide it
            import traceback

            err.write("".join(traceback.format_exception(exc)))
            rc = -1
        finally:
            sys.setprofile(None)
    conn.send(Run(False, rc, calls, storage, out.getvalue(), err.getvalue()))


def run(argv: list[str] | tuple[str, ...], kill_at: int | tuple[str, int] = -1, fsize_limit: int = 0,
        timeout_s: float = 300.0) -> Run:
    """Run ``repliq argv`` in a child; kill it at call number ``kill_at`` (negative: let it finish), or at
    the n-th call of a storage function, ``kill_at=(name, n)`` (names as in ``Run.storage_calls``)."""
    ctx = context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(argv, kill_at, fsize_limit, sender), daemon=True)
    process.start()
    sender.close()
    result = None
    if receiver.poll(timeout_s):
        try:
            result = receiver.recv()
        except EOFError:  # the child died before sending: killed
            result = None
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        raise TimeoutError(f"repliq {' '.join(argv)} did not finish within {timeout_s:.0f} s")
    if result is None:
        if process.exitcode != -signal.SIGKILL:
            raise RuntimeError(f"repliq {' '.join(argv)} died with exit code {process.exitcode}")
        return Run(True)
    return result


def kill_points(dry: Run, n: int, seed: int) -> list[int]:
    """``n`` distinct kill points: one anywhere, one just before a rename or commit (publishing), the rest
    at any storage call (the moments that matter most)."""
    import random

    rng = random.Random(seed)
    points = {rng.randrange(dry.calls)}
    publishing = [i for i, name in dry.storage_calls if name in ("replace", "rename", "commit")]
    if publishing:
        points.add(rng.choice(publishing))
    storage = sorted({i for i, _ in dry.storage_calls})
    while len(points) < min(n, len(storage) + 1):
        points.add(rng.choice(storage))
    return sorted(points)

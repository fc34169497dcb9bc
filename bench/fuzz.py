"""Fuzzing at volume: >= 20,000 hostile Respond requests over real gRPC, and every importer of user files.

The same harness as the CI test (tests/fuzz_harness.py, tests/unit/test_fuzz_grpc.py), run longer:
Hypothesis draws batches of ``--concurrency`` requests that are sent at once while a probe asks Health
every 100 ms. By default the server runs the real serving assembly on tiny random-weight models (what
is under test is the server, validation and pipeline code, not the weights); ``--home`` serves a real
workspace instead (its config decides models, blender and generation). Then the importer fuzz tests
run with ``--file-examples`` damaged files per format.

Records bench/results/fuzz.json and the "fuzz" section of docs/reliability.md.

    .venv/bin/python -m bench.fuzz --cases 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]
DOC = ROOT / "docs" / "reliability.md"


def serve(home: Path | None, scratch: Path) -> tuple[Any, Any, int, str]:
    """(running server, assembled pipeline, max_turn_chars, what is served)."""
    import torch

    from dialog.serving.assembly import build_pipeline
    from dialog.serving.server import start_server

    torch.set_num_threads(1)
    if home is None:
        from test_fuzz_grpc import MAX_TURN_CHARS, tiny_settings

        settings, what = tiny_settings(scratch), "serving assembly on tiny random-weight models, generation on request"
        max_chars = MAX_TURN_CHARS
    else:
        from core.config import load_settings

        settings = load_settings(environ={"REPLIQ_HOME": str(home)})
        settings = replace(settings, server=replace(settings.server, port=0))
        what, max_chars = f"workspace {home} (its configured models)", settings.server.max_turn_chars
    assembled = build_pipeline(settings)
    return start_server(assembled.pipeline, settings.server, default_top_k=5), assembled, max_chars, what


def fuzz_grpc(cases: int, concurrency: int, seed: int, home: Path | None) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis import strategies as st

    from dialog.serving.client import ChatClient

    from fuzz_harness import HealthProbe, Tally, p99_held, run_batch, steady_p99
    from fuzz_harness import cases as case_strategy

    with tempfile.TemporaryDirectory() as scratch:
        running, assembled, max_chars, what = serve(home, Path(scratch))
        client = ChatClient("127.0.0.1", running.port, timeout_s=30.0)
        client.wait_until_serving()
        before = steady_p99(client, 1000, 5)
        tally, pool = Tally(), ThreadPoolExecutor(concurrency)
        progress = {"last": time.monotonic()}

        @fixed_seed(seed)
        @settings(max_examples=-(-cases // concurrency), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(case_strategy(max_chars), min_size=concurrency, max_size=concurrency))
        def fuzz(batch: list) -> None:
            run_batch(client, batch, pool, tally)
            if time.monotonic() - progress["last"] > 30:
                progress["last"] = time.monotonic()
                print(f"  {tally.cases} cases, {dict(tally.codes)}", flush=True)

        started = time.monotonic()
        with HealthProbe(f"127.0.0.1:{running.port}") as probe:
            fuzz()
        seconds = time.monotonic() - started
        pool.shutdown()
        after = steady_p99(client, 1000, 5)
        client.close()
        running.stop(grace=2.0)
        assembled.close()
    return {"served": what, "cases": tally.cases, "concurrency": concurrency, "seed": seed,
            "seconds": round(seconds, 1), "codes": dict(tally.codes.most_common()),
            "unexpected": [f"{reason} <- {case!r:.400}" for case, reason in tally.unexpected[:20]],
            "n_unexpected": len(tally.unexpected), "health_checks": probe.checks,
            "health_failures": probe.failures[:20], "health_slowest_ms": round(probe.slowest_s * 1000, 1),
            "p99_before_ms": round(before * 1000, 2), "p99_after_ms": round(after * 1000, 2),
            "p99_ratio": round(after / before, 3), "p99_held": p99_held(before, after)}


def fuzz_files(examples: int) -> dict[str, Any]:
    """The importer fuzz tests with ``examples`` damaged files per format (a pytest run, so the very
    same assertions as in CI)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_fuzz_importers.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "REPLIQ_FUZZ_FILES": str(examples)})
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    formats = 3 + 3 + 4  # bank csv/jsonl/yaml, ssa jsonl/toloka/labelstudio, four corpus readers
    return {"examples_per_format": examples, "formats": formats, "files": examples * formats,
            "passed": done.returncode == 0, "pytest": summary, "seconds": round(time.monotonic() - started, 1)}


def section(grpc_run: dict[str, Any], files: dict[str, Any] | None) -> str:
    codes = ", ".join(f"{code} {n:,}" for code, n in grpc_run["codes"].items())
    lines = [
        f"**Respond fuzz** ({grpc_run['served']}): {grpc_run['cases']:,} requests at concurrency "
        f"{grpc_run['concurrency']} in {grpc_run['seconds']:.0f} s (seed {grpc_run['seed']}).",
        "",
        f"- Outcomes: {codes}.",
        f"- Undocumented codes or crashes: **{grpc_run['n_unexpected']}**.",
        f"- Health checks during the run: {grpc_run['health_checks']:,}, failed: "
        f"**{len(grpc_run['health_failures'])}**, slowest {grpc_run['health_slowest_ms']} ms.",
        f"- p99 of ordinary requests (median of 5 runs of 1,000): {grpc_run['p99_before_ms']} ms before, "
        f"{grpc_run['p99_after_ms']} ms after (ratio {grpc_run['p99_ratio']}); held: "
        f"**{'yes' if grpc_run['p99_held'] else 'NO'}** (within 20%, or within one 5 ms GIL switch interval).",
    ]
    if files is not None:
        lines.append(f"- Importer fuzz: {files['files']:,} damaged files ({files['examples_per_format']} per format "
                     f"over {files['formats']} formats/readers): {'all passed' if files['passed'] else 'FAILED'} "
                     f"({files['pytest']}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20000, help="Respond requests (default 20,000)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--home", type=Path, help="serve this workspace instead of tiny random-weight models")
    parser.add_argument("--file-examples", type=int, default=300, help="damaged files per importer format (0: skip)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results and docs alone")
    args = parser.parse_args(argv)
    grpc_run = fuzz_grpc(args.cases, args.concurrency, args.seed, args.home)
    files = fuzz_files(args.file_examples) if args.file_examples > 0 else None
    text = section(grpc_run, files)
    print(text)
    if not args.no_write:
        from bench.report import write_results

        write_results("fuzz", {"grpc": grpc_run, "files": files}, text, doc=DOC)
    ok = grpc_run["n_unexpected"] == 0 and not grpc_run["health_failures"] and grpc_run["p99_held"]
    return 0 if ok and (files is None or files["passed"]) else 1


if __name__ == "__main__":
    sys.exit(main())

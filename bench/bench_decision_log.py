"""What the decision log costs a request: serving p50/p99 with ``[logging] decisions`` off and on, in one run.

Two server processes of ``bench.bench_serving`` on the same workspace are up at once: ``tuned`` (decisions
off: serving as shipped) and ``decisions`` (the same, plus exploration, the decision log and the feedback
index, wired as `repliq serve` wires them). The load alternates between them in short blocks (off, on, on,
off, ...), so a change in the shared machine's other load hits both alike, and the latencies of all blocks
of one configuration are pooled per concurrency level. The issue's budget: the log must not push p99 up by
more than 5%. A bootstrap interval of the p99 ratio (on / off, resampling each side's requests) says how far
the measurement itself can be trusted on this machine.

The workspace is mutated (``feedback.sqlite`` and ``decisions/`` appear in it), so point ``--home`` at a
copy:

    cp -a /work/train-home /tmp/dlog-home
    .venv/bin/python -m bench.bench_decision_log --home /tmp/dlog-home --rounds 6 --block 100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_serving import dialogues, run_level, start, stop

CONFIGS = ("tuned", "decisions")


def p99_ratio_interval(on: np.ndarray, off: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of p99(on) / p99(off), each side resampled on its own."""
    rng = np.random.default_rng(seed)
    ratios = [np.percentile(rng.choice(on, len(on)), 99) / np.percentile(rng.choice(off, len(off)), 99)
              for _ in range(resamples)]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def measure(runs: dict[str, dict[str, Any]], levels: list[int], traffic: list, rounds: int, block: int,
            warmup: int, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        for name in CONFIGS:  # warm-up, not counted
            run_level(runs[name]["_port"], level, traffic[:warmup], timeout_s)
        pooled: dict[str, list[float]] = {name: [] for name in CONFIGS}
        errors = dict.fromkeys(CONFIGS, 0)
        for r in range(rounds):
            order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
            chunk = traffic[warmup + r * block: warmup + (r + 1) * block]
            for name in order:
                latencies, codes, _ = run_level(runs[name]["_port"], level, chunk, timeout_s)
                pooled[name] += latencies
                errors[name] += sum(v for k, v in codes.items() if k != "OK")
        off, on = (np.array(pooled[name]) * 1000 for name in CONFIGS)
        low, high = p99_ratio_interval(on, off)
        pct = {f"{side}_p{q}_ms": round(float(np.percentile(values, q)), 1)
               for side, values in (("off", off), ("on", on)) for q in (50, 99)}
        row = {"concurrency": level, "requests_each": len(off), "errors": errors, **pct,
               "p99_ratio": round(float(np.percentile(on, 99) / np.percentile(off, 99)), 3),
               "p99_ratio_ci": [round(low, 3), round(high, 3)],
               "p50_ratio": round(float(np.percentile(on, 50) / np.percentile(off, 50)), 3),
               "load_average": round(os.getloadavg()[0], 1)}
        rows.append(row)
        print(f"c={level:<3} off p50 {row['off_p50_ms']:7.1f} p99 {row['off_p99_ms']:7.1f} | on p50 "
              f"{row['on_p50_ms']:7.1f} p99 {row['on_p99_ms']:7.1f} | p99 ratio {row['p99_ratio']:.3f} "
              f"[{low:.3f}, {high:.3f}] errors {errors} load {row['load_average']}", flush=True)
    return rows


def section(rows: list[dict[str, Any]], ranker: str, args: argparse.Namespace, logged: dict[str, Any]) -> str:
    from bench.report import markdown_table

    table = markdown_table(
        ["concurrency", "requests each", "off p50 ms", "on p50 ms", "off p99 ms", "on p99 ms", "p99 on/off",
         "95% interval", "p50 on/off", "errors off/on", "machine load"],
        [[r["concurrency"], r["requests_each"], r["off_p50_ms"], r["on_p50_ms"], r["off_p99_ms"], r["on_p99_ms"],
          r["p99_ratio"], f"[{r['p99_ratio_ci'][0]:.3f}, {r['p99_ratio_ci'][1]:.3f}]", r["p50_ratio"],
          f"{r['errors']['tuned']}/{r['errors']['decisions']}", r["load_average"]] for r in rows])
    return (
        "## Decision log overhead (issue 18) — `bench/bench_decision_log.py`\n\n"
        f"The default pipeline of the workspace (ranker `{ranker}`, torch, generation off) over real gRPC, two "
        "server processes up at once: decisions **off** (`tuned` of bench_serving) and **on** (`[logging] "
        "decisions = true`: ε-greedy exploration, the decision log's queue and writer thread, the feedback index). "
        f"{args.rounds} alternating blocks of {args.block} requests per configuration and level, after "
        f"{args.warmup} warm-up requests each; latencies pooled per configuration. Budget: p99 on/off ≤ 1.05. "
        f"The interval is a bootstrap of the p99 ratio over requests. Lines written by the logging server: "
        f"{logged.get('lines', '?')} in {logged.get('files', '?')} file(s).\n\n" + table
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="a COPY of a workspace (the logging server writes into it)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--rounds", type=int, default=6, help="alternating blocks per configuration and level")
    parser.add_argument("--block", type=int, default=100, help="requests per block")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave results and docs alone")
    args = parser.parse_args(argv)
    home = Path(args.home)
    if not (home / "bank.sqlite").exists():
        parser.error(f"no bank in {home}; copy a built workspace there first")
    levels = [int(x) for x in args.levels.split(",")]
    traffic = dialogues(str(home), args.warmup + args.rounds * args.block, seed=1)
    runs = {name: start(str(home), args.backend, name, "auto") for name in CONFIGS}
    try:
        skipped = {name: run["skipped"] for name, run in runs.items() if "skipped" in run}
        if skipped:
            raise SystemExit(f"a server did not start: {skipped}")
        rows = measure(runs, levels, traffic, args.rounds, args.block, args.warmup, args.timeout)
    finally:
        for run in runs.values():
            if "_process" in run:
                stop(run)
    files = sorted((home / "decisions").glob("decisions-*.jsonl"))
    logged = {"files": len(files), "lines": sum(f.read_text(encoding="utf-8").count("\n") for f in files)}
    print(f"decision log: {logged}")
    if not args.no_write:
        from bench.report import write_results

        write_results("decision_log", {"levels": levels, "rounds": args.rounds, "block": args.block,
                                       "warmup": args.warmup, "backend": args.backend, "logged": logged,
                                       "rows": rows, "shared_machine": True},
                      section(rows, runs["tuned"].get("ranker", "?"), args, logged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

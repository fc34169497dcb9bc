"""Soak: the default pipeline under steady load for a long time; does memory, file-descriptor or latency creep?

A real server (`bench.serving_load`, the pipeline `repliq serve` builds over the workspace) answers
closed-loop clients at concurrency 32 for 30 minutes (default). Requests get a generous deadline and
the server a queue bound of at least the concurrency, so the soak is about leaks, not about shedding
(that is `bench/overload.py`). Every ``--interval`` seconds it records the server's RSS, open file
descriptors and threads, and the p99 and count of the requests answered in that interval.

Pass: RSS after the warm-up grows by at most 10% (the last third's median against the first sample
after warm-up, so one allocation burst at the end does not decide it), 0 errors, and no fd growth.
Writes bench/results/soak.json, bench/results/soak.png and the section of docs/reliability.md.

    nice -n 19 .venv/bin/python -m bench.soak --home /tmp/ws --minutes 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_serving import traffic as bench_traffic
from bench.serving_load import Recorder, ServerProcess, closed_loop, percentile

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def sample(server: ServerProcess, recorder: Recorder, seen: int, started: float) -> tuple[dict[str, Any], int]:
    window = recorder.since(seen)
    ok = [o.latency * 1000 for o in window if o.code == "OK"]
    row = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(server.rss_mb(), 1), "fds": server.fds(),
           "threads": server.threads(), "answered": len(ok), "errors": len(window) - len(ok),
           "p50_ms": round(percentile(ok, 50), 1), "p99_ms": round(percentile(ok, 99), 1),
           "load_average": round(os.getloadavg()[0], 1)}
    return row, seen + len(window)


def verdict(samples: list[dict[str, Any]], warmup_s: float, total_errors: int) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    base = after[0]
    tail = after[-max(1, len(after) // 3):]
    tail_rss = statistics.median(s["rss_mb"] for s in tail)
    growth = tail_rss / base["rss_mb"] - 1
    fd_growth = max(s["fds"] for s in tail) - base["fds"]
    return {"rss_after_warmup_mb": base["rss_mb"], "rss_tail_median_mb": tail_rss,
            "rss_max_mb": max(s["rss_mb"] for s in after), "rss_growth": round(growth, 4),
            "fds_after_warmup": base["fds"], "fds_max": max(s["fds"] for s in after), "fd_growth": fd_growth,
            "threads_after_warmup": base["threads"], "threads_max": max(s["threads"] for s in after),
            "errors": total_errors,
            "passed": growth <= 0.10 and total_errors == 0 and fd_growth <= 0}


def plot(samples: list[dict[str, Any]], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.atomic import atomic_write_bytes
    from core.figures import png_bytes

    minutes = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(minutes, [s["rss_mb"] for s in samples], color="tab:blue")
    top.set_ylabel("server RSS, MB")
    top.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    top.legend(loc="lower right")
    bottom.plot(minutes, [s["p99_ms"] for s in samples], color="tab:red", label="p99")
    bottom.plot(minutes, [s["p50_ms"] for s in samples], color="tab:orange", label="p50")
    bottom.set_ylabel("latency per interval, ms")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right")
    fig.suptitle("Soak: default pipeline, concurrency 32 (shared machine)")
    atomic_write_bytes(path, png_bytes(fig))


def section(record: dict[str, Any]) -> str:
    v = record["verdict"]
    answered = sum(s["answered"] for s in record["samples"])
    minutes = record["seconds"] / 60
    return (
        f"**Soak** (`bench/soak.py`): the default pipeline of `{record['home']}` "
        f"(ranker `{record['versions'].get('ranker')}`), "
        f"{minutes:.0f} minutes at concurrency {record['concurrency']}, closed loop over "
        f"{record.get('traffic', 'bank phrases')}, deadline "
        f"{record['deadline_s']:.0f} s, server queue bound {record['server']['max_queue']} "
        f"(running {record['server']['max_workers']}); {answered:,} requests answered "
        f"({answered / record['seconds']:.1f}/s). Run niced (`nice -n 19`) on the shared, busy machine, so its "
        "latency is what was left over by other jobs, **not a capacity figure**.\n\n"
        f"- RSS: {v['rss_after_warmup_mb']:.0f} MB after the {record['warmup_s'] / 60:g}-minute warm-up, "
        f"{v['rss_tail_median_mb']:.0f} MB over the last third (median), peak {v['rss_max_mb']:.0f} MB: growth "
        f"**{v['rss_growth'] * 100:+.1f}%** (limit +10%).\n"
        f"- File descriptors: {v['fds_after_warmup']} after warm-up, at most {v['fds_max']} later "
        f"(growth **{v['fd_growth']}**); threads {v['threads_after_warmup']} → at most {v['threads_max']}.\n"
        f"- Errors: **{v['errors']}** (codes: {record['codes']}).\n"
        f"- Passed: **{'yes' if v['passed'] else 'no'}**.\n\n"
        "![RSS and p99 over the soak](../bench/results/soak.png)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=os.environ.get("REPLIQ_HOME", ".repliq"), help="the workspace")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="excluded from the RSS baseline")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--deadline", type=float, default=60.0, help="client deadline per request, seconds")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder with held-out conversations for the traffic (missing: bank phrases)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results and docs alone")
    args = parser.parse_args(argv)
    if not (Path(args.home) / "bank.sqlite").exists():
        parser.error(f"no bank in {args.home}; build the workspace first (scripts/demo, or repliq bank init "
                     "--default and repliq index build)")
    server = ServerProcess(args.home, max_queue=max(32, args.concurrency), max_queue_wait_ms=0.0,
                           default_timeout_s=args.deadline)
    recorder = Recorder()
    seconds = args.minutes * 60
    requests, source = bench_traffic(args.home, args.data, 2000)
    try:
        started = time.monotonic()
        load = threading.Thread(target=closed_loop, daemon=True,
                                args=(server.port, args.concurrency, requests, started + seconds,
                                      args.deadline, recorder))
        load.start()
        samples, seen = [], 0
        while load.is_alive():
            load.join(args.interval)
            row, seen = sample(server, recorder, seen, started)
            samples.append(row)
            print(f"{row['t_s']:7.0f} s  RSS {row['rss_mb']:7.1f} MB  fds {row['fds']:4}  threads {row['threads']:3}  "
                  f"answered {row['answered']:5}  errors {row['errors']}  p99 {row['p99_ms']:8.1f} ms  "
                  f"load {row['load_average']}", flush=True)
    finally:
        server.stop()
    codes: dict[str, int] = {}
    for outcome in recorder.outcomes:
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
    record = {"home": args.home, "seconds": seconds, "warmup_s": args.warmup_minutes * 60,
              "concurrency": args.concurrency, "deadline_s": args.deadline, "server": server.server, "traffic": source,
              "versions": server.versions, "codes": codes, "samples": samples,
              "verdict": verdict(samples, args.warmup_minutes * 60, sum(v for k, v in codes.items() if k != "OK")),
              "niced": os.nice(0), "shared_machine": True}
    print(section(record))
    if not args.no_write:
        from bench.report import write_results

        plot(samples, record["warmup_s"], ROOT / "bench" / "results" / "soak.png")
        write_results("soak", record, section(record), doc=DOC)
    return 0 if record["verdict"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

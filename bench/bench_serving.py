"""Serving under concurrency: the real default pipeline over real gRPC, load from another process.

The server runs in a child process (``multiprocessing``, spawn) on the workspace ``scripts/demo``
builds (``repliq models prepare``, ``repliq bank init --default``, ``repliq index build``; the
blender too when one was trained there). This process is the load generator: a fixed pool of client
threads per concurrency level, a warm-up that is not counted, then the measured requests. Each server
configuration is its own process (so its RSS before and after is its own), and all of them are up at
once: every level is measured on each configuration back to back.

Configurations, measured in the same run so that their ratio means something on a shared machine:
- ``tuned``: this version's serving path (admission control with a bounded queue, every query window
  of a request in one micro-batched encoder call, encoder threads derived from the cores);
- ``legacy``: the behaviour before it (no queue bound, each stage encodes on its own, torch's default
  thread count), kept reachable only here;
- per ``--backend``: torch and/or ONNX (skipped with the reason when no usable export exists).

    .venv/bin/python -m bench.bench_serving --home /tmp/ws --requests 200 --warmup 100
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import random
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import run_concurrently

LEVELS = (1, 8, 32, 64)
MAX_BACKOFF_S = 2.0
MODES = ("tuned", "legacy")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _serve(home: str, backend: str, mode: str, blender: str, conn: Any) -> None:
    """Child process: build the pipeline the way `repliq serve` does, report the port, serve until told."""
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        from core.config import load_settings
        from dialog.serving.assembly import build_pipeline, usable_cores
        from dialog.serving.server import start_server

        settings = load_settings(environ={**os.environ, "REPLIQ_HOME": home})
        server = replace(settings.server, port=0)
        if mode == "legacy":
            server = replace(server, max_queue=100_000, max_queue_wait_ms=0.0, encoder_threads=usable_cores())
        settings = replace(settings, server=server, encoder=replace(settings.encoder, backend=backend),
                           ranker=replace(settings.ranker, blender=blender),
                           generation=replace(settings.generation, mode="off"))
        assembled = build_pipeline(settings)
        if mode == "legacy":
            assembled.pipeline.query_encoder = None  # each stage encodes for itself, as before
        loop = None
        if mode == "decisions":  # tuned plus the decision log, as `repliq serve` wires it (bench_decision_log)
            from dialog.serving.feedback import build_serving_loop

            settings = replace(settings, logging=replace(settings.logging, decisions=True))
            loop = build_serving_loop(settings, assembled.pipeline.reranker)
        running = start_server(assembled.pipeline, settings.server, settings.retrieval.top_k, loop=loop)
        conn.send({"port": running.port, "backend": getattr(assembled.encoder, "backend", "torch"),
                   "ranker": assembled.pipeline.versions.get("ranker")})
    except Exception as exc:  # reported to the parent, which records the configuration as skipped
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    conn.recv()
    running.stop(grace=2.0)
    if loop is not None:
        loop.close()
    assembled.close()
    conn.send({"stopped": True})


def dialogues(home: str, n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """1- to 3-turn dialogues made of bank phrases of one language, a fifth of them repeated openers (as
    real traffic repeats "hi")."""
    with sqlite3.connect(f"file:{home}/bank.sqlite?mode=ro", uri=True) as db:
        rows = db.execute("SELECT text, language FROM phrases WHERE status = 'approved'").fetchall()
    rng = random.Random(seed)
    by_language: dict[str, list[str]] = {}
    for text, language in rows:
        by_language.setdefault(language, []).append(text)
    languages = sorted(by_language)
    openers = [[("user", rng.choice(by_language[lang]))] for lang in languages for _ in range(5)]
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append(rng.choice(openers))
            continue
        texts = by_language[rng.choice(languages)]
        out.append([("user" if t % 2 == 0 else "bot", rng.choice(texts)) for t in range(rng.randint(1, 3))][::-1])
    return out


def heldout_dialogues(data: Path, n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Up to 3-turn windows of held-out conversations (Topical-Chat dev+test, Russian dev), a fifth of them
    repeated openers. Unlike bank phrases, their text is not in the index, so no window is encoded for free
    from the bank's own vectors: the encoder does what it does for real users."""
    from bench.bench_side_by_side import contexts

    rng = random.Random(seed)
    items = contexts(data, max(n // 2, 1))
    # The last turn is the user's; the turns before it alternate back (corpus speaker names mean nothing here).
    windows = [[("user" if (len(context.turns[-3:]) - j) % 2 else "bot", turn.text)
                for j, turn in enumerate(context.turns[-3:])] for _, context, _ in items]
    openers = [[("user", context.turns[0].text)] for _, context, _ in rng.sample(items, 10)]
    return [rng.choice(openers) if i % 5 == 0 else windows[i % len(windows)] for i in range(n)]


def traffic(home: str, data: Path | None, n: int, seed: int = 0) -> tuple[list[list[tuple[str, str]]], str]:
    """Held-out conversations when ``data`` holds them (what real users send: no free encodings from the index),
    else dialogues of bank phrases; the second value names which, for the report."""
    if data is not None and (Path(data) / "topicalchat_valid").is_dir():
        return heldout_dialogues(Path(data), n, seed), f"held-out conversations ({data})"
    return dialogues(home, n, seed), "bank phrases (flatters capacity: their vectors are in the index)"


def run_level(port: int, concurrency: int, requests: list[list[tuple[str, str]]], timeout_s: float,
              seconds: float = 0.0, shed_backoff_s: float = 0.0) -> tuple[list[float], dict[str, int], float]:
    """Closed-loop clients. With ``seconds`` > 0 they cycle through ``requests`` until time is up (goodput over
    a fixed window, not a burst); otherwise each request is sent once. A client told RESOURCE_EXHAUSTED
    waits ``shed_backoff_s`` before its next call, as a well-behaved client backs off from a shedding server
    (without it, shed calls come straight back and the load generator itself eats the cores)."""
    import grpc

    from repliq.v1 import chat_pb2, chat_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = chat_pb2_grpc.ChatStub(channel)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    cursor = itertools.cycle(range(len(requests))) if seconds > 0 else iter(range(len(requests)))
    stop_at = time.perf_counter() + seconds if seconds > 0 else float("inf")

    def worker() -> None:
        backoff = shed_backoff_s
        while time.perf_counter() < stop_at:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            message = chat_pb2.RespondRequest(turns=[chat_pb2.Turn(speaker=s, text=t) for s, t in requests[i]],
                                              top_k=3)
            started = time.perf_counter()
            try:
                stub.Respond(message, timeout=timeout_s)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            elapsed = time.perf_counter() - started
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == "OK":
                    latencies.append(elapsed)
            if code == "RESOURCE_EXHAUSTED" and shed_backoff_s > 0:
                # Exponential back-off with jitter, reset by an answer: what gRPC's retry policy does, and what
                # keeps 64 shed clients from spending the server's cores on refusals.
                time.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            elif code == "OK":
                backoff = shed_backoff_s

    wall = run_concurrently(worker, concurrency)
    channel.close()
    return latencies, codes, wall


def start(home: str, backend: str, mode: str, blender: str) -> dict[str, Any]:
    """A server process for one configuration; ``skipped`` says why when it could not start."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(home, backend, mode, blender, child), daemon=True)
    process.start()
    if not parent.poll(900):
        process.kill()
        return {"backend": backend, "requested_backend": backend, "mode": mode,
                "skipped": "the server did not start within 15 minutes"}
    hello = parent.recv()
    if "error" in hello:
        process.join(10)
        return {"backend": backend, "requested_backend": backend, "mode": mode, "skipped": hello["error"]}
    return {"backend": hello["backend"], "requested_backend": backend, "mode": mode, "ranker": hello["ranker"],
            "rss_mb_before": round(rss_mb(process.pid), 1), "levels": [],
            "_process": process, "_conn": parent, "_port": hello["port"]}


def stop(run: dict[str, Any]) -> None:
    process, conn = run.pop("_process"), run.pop("_conn")
    run.pop("_port")
    run["rss_mb_after"] = round(rss_mb(process.pid), 1)
    conn.send("stop")
    conn.poll(30)
    process.join(10)
    if process.is_alive():
        process.kill()


def measure(runs: list[dict[str, Any]], levels: list[int], traffic: list[list[tuple[str, str]]], warmup: int,
            timeout_s: float, seconds: float = 0.0, shed_backoff_s: float = 0.0) -> None:
    """Level by level, every configuration back to back, so a change in the machine's other load hits
    all of them alike."""
    for level in levels:
        for run in runs:
            if "skipped" in run:
                continue
            run_level(run["_port"], level, traffic[:warmup], timeout_s)  # warm-up, not counted
            latencies, codes, wall = run_level(run["_port"], level, traffic[warmup:], timeout_s, seconds,
                                               shed_backoff_s)
            ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
            row = {"concurrency": level, "requests": sum(codes.values()), "ok": codes.get("OK", 0),
                   "seconds": round(wall, 1),
                   "errors": {k: v for k, v in codes.items() if k != "OK"},
                   "rps": round(codes.get("OK", 0) / wall, 2),
                   "p50_ms": round(float(np.percentile(ms, 50)), 1),
                   "p95_ms": round(float(np.percentile(ms, 95)), 1),
                   "p99_ms": round(float(np.percentile(ms, 99)), 1),
                   "load_average": round(os.getloadavg()[0], 1)}
            run["levels"].append(row)
            print(f"{run['backend']:5} {run['mode']:6} c={level:<3} {row['rps']:7.1f} req/s  "
                  f"p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  "
                  f"load {row['load_average']}", flush=True)


def section(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    from bench.report import markdown_table

    rows = []
    for run in runs:
        if "skipped" in run:
            rows.append([run["requested_backend"], run["mode"],
                         "skipped", run["skipped"][:120], "", "", "", "", "", ""])
            continue
        for level in run["levels"]:
            errors = sum(level["errors"].values())
            rows.append([run["backend"], run["mode"], level["concurrency"], level["rps"], level["p50_ms"],
                         level["p95_ms"], level["p99_ms"], errors, level.get("load_average", ""),
                         f"{run['rss_mb_before']:.0f} → {run['rss_mb_after']:.0f}"])
    table = markdown_table(["backend", "server", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                            "machine load", "RSS MB"], rows)
    ratios = []
    by_key = {(r["backend"], r["mode"]): r for r in runs if "skipped" not in r}
    for backend in sorted({b for b, _ in by_key}):
        tuned, legacy = by_key.get((backend, "tuned")), by_key.get((backend, "legacy"))
        if tuned and legacy:
            parts = [f"c={t['concurrency']}: {t['rps'] / max(lg['rps'], 1e-9):.2f}×"
                     for t, lg in zip(tuned["levels"], legacy["levels"], strict=True)]
            ratios.append(f"- {backend}, tuned / legacy requests/s: " + ", ".join(parts))
    ranker = next((r["ranker"] for r in runs if "ranker" in r), "?")
    seconds, backoff = getattr(args, "seconds", 0.0), getattr(args, "shed_backoff_ms", 0.0)
    traffic = "held-out conversations (Topical-Chat dev+test, Russian dev; not bank text)" \
        if getattr(args, "data", None) else "dialogues made of bank phrases"
    measured = (f"Each level runs {seconds:.0f} s of closed-loop clients cycling through {args.requests} "
                f"{traffic}; a client told RESOURCE_EXHAUSTED backs off {backoff:.0f} ms, doubling per refusal "
                "up to 2 s,"
                if seconds > 0 else f"{args.requests} measured requests per level")
    return (
        "## Serving under concurrency (issue 13) — `bench/bench_serving.py`\n\n"
        f"The default pipeline of the workspace (ranker: `{ranker}`; generation off) over real gRPC on loopback; "
        f"the load generator is a separate process. {measured} after {args.warmup} warm-up requests (not "
        "counted); req/s counts OK answers only (goodput); errors are any non-OK status (RESOURCE_EXHAUSTED "
        "from the bounded queue included); machine load is the 1-minute load average after the level. "
        "`tuned` is this version; `legacy` the behaviour before it (no queue "
        "bound, every stage encodes on its own, torch's default threads), in the same run. "
        "**The machine is shared with other sessions' jobs**, so absolute numbers move from run to run; "
        "compare rows of one run.\n\n" + table + "\n\n" + "\n".join(ratios)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=os.environ.get("REPLIQ_HOME", ".repliq"), help="the workspace")
    parser.add_argument("--backend", default="both", choices=("torch", "onnx", "both"))
    parser.add_argument("--modes", default=",".join(MODES), help="tuned and/or legacy, comma-separated "
                        f"(default: {','.join(MODES)})")
    parser.add_argument("--blender", default="auto", help="[ranker] blender: auto (the workspace's), none or a path")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--requests", type=int, default=200, help="measured requests per level")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests before each level")
    parser.add_argument("--timeout", type=float, default=10.0, help="client deadline per request, seconds")
    parser.add_argument("--data", type=Path, default=None, help="held-out conversations as traffic (a folder with "
                        "topicalchat_valid/ and ru/); without it, dialogues made of bank phrases")
    parser.add_argument("--seconds", type=float, default=0.0, help="measure each level for this long, cycling "
                        "through the traffic (goodput); 0 sends --requests once (default)")
    parser.add_argument("--shed-backoff-ms", type=float, default=0.0, help="a client told RESOURCE_EXHAUSTED "
                        "waits this long before its next call (default 0: straight back)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results and docs alone")
    parser.add_argument("--render", type=Path, help="rewrite the doc section from a saved results JSON; no run")
    args = parser.parse_args(argv)
    if args.render:
        import json

        from bench.report import write_results

        record = json.loads(args.render.read_text(encoding="utf-8"))
        args.requests, args.warmup = record["requests"], record["warmup"]
        args.seconds, args.shed_backoff_ms = record.get("seconds", 0.0), record.get("shed_backoff_ms", 0.0)
        write_results("serving", {k: v for k, v in record.items() if k not in ("benchmark", "machine")},
                      section(record["runs"], args))
        return 0
    if not (Path(args.home) / "bank.sqlite").exists():
        parser.error(f"no bank in {args.home}; build the workspace first: repliq models prepare, "
                     "repliq bank init --default, repliq index build")
    backends = ("torch", "onnx") if args.backend == "both" else (args.backend,)
    levels = [int(x) for x in args.levels.split(",")]
    modes = args.modes.split(",")
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    runs = [start(args.home, backend, mode, args.blender) for backend in backends for mode in modes]
    try:
        n = args.warmup + args.requests
        traffic = heldout_dialogues(args.data, n) if args.data else dialogues(args.home, n)
        measure(runs, levels, traffic, args.warmup, args.timeout,
                args.seconds, args.shed_backoff_ms / 1000)
    finally:
        for run in runs:
            if "_process" in run:
                stop(run)
    for run in runs:
        if "skipped" in run:
            print(f"{run['backend']} {run['mode']}: skipped ({run['skipped']})")
    if not args.no_write:
        from bench.report import write_results

        write_results("serving", {"requests": args.requests, "warmup": args.warmup, "levels": levels,
                                  "traffic": "held-out conversations" if args.data else "bank phrases",
                                  "seconds": args.seconds, "shed_backoff_ms": args.shed_backoff_ms,
                                  "shared_machine": True, "runs": runs}, section(runs, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

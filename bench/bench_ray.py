"""Batch jobs on Ray: the speed-up from 1 to 2 local Ray actors, and Ray's overhead against the local executor.

The job is a real one: `repliq index build --full` with the configured encoder (e5-small) over the first N
approved phrases of a trained workspace's bank, copied into a scratch workspace. In one run: the local
executor (this process, every core), then Ray's start-up, then Ray Data with 1 actor and with 2 actors (one
CPU each; every actor loads the encoder itself). Rounds interleave the three, and the median is reported.
Each Ray run's snapshot checksum is compared with the local one.

    python -m bench.bench_ray [--source-home /work/train-home] [--phrases 5000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report import markdown_table, write_results
from core.config import Settings, load_settings
from core.executor import LOCAL_OBJECT_STORE_BYTES, ExecutorConfig

NAME = "ray"
MODES: dict[str, ExecutorConfig] = {"local": ExecutorConfig(), "ray, 1 actor": ExecutorConfig(kind="ray", actors=1),
                                    "ray, 2 actors": ExecutorConfig(kind="ray", actors=2)}


def scratch_workspace(source_home: Path, phrases: int, root: Path) -> Settings:
    """A workspace whose bank holds the first ``phrases`` approved phrases of ``source_home``'s bank."""
    from core.bank.store import PhraseBank

    source = load_settings(environ={"REPLIQ_HOME": str(source_home)})
    settings = load_settings(environ={"REPLIQ_HOME": str(root)})
    settings = replace(settings, models_dir=source.models_dir)
    root.mkdir(parents=True, exist_ok=True)
    with PhraseBank(source.bank_path) as bank:
        rows = bank.phrases(status="approved")[:phrases]
    if len(rows) < phrases:
        raise ValueError(f"{source.bank_path} has only {len(rows)} approved phrases; ask for --phrases {len(rows)}")
    from core.bank.formats import write_phrases

    write_phrases(root / "phrases.jsonl", rows, "jsonl")
    with PhraseBank(settings.bank_path) as bank:
        report = bank.import_file(root / "phrases.jsonl", "jsonl", who="bench")
        if not report.ok:
            raise ValueError(f"could not copy the bank: {report.summary()}")
    return settings


def timed_build(settings: Settings, executor: ExecutorConfig) -> tuple[float, str]:
    from core.job_configs import IndexBuildConfig
    from dialog.jobs.index_build import index_build

    started = time.perf_counter()
    report = index_build(settings, IndexBuildConfig(full=True, executor=executor))
    return time.perf_counter() - started, report.manifest.checksum


def run(source_home: Path, phrases: int, rounds: int) -> dict[str, Any]:
    import ray

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        settings = scratch_workspace(source_home, phrases, Path(scratch) / "home")
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        checksums: dict[str, set[str]] = {mode: set() for mode in MODES}
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 logging_level=logging.WARNING)
        ray_start = time.perf_counter() - started
        try:
            for round_no in range(rounds):
                for mode, executor in MODES.items():
                    took, checksum = timed_build(settings, executor)
                    seconds[mode].append(took)
                    checksums[mode].add(checksum)
                    print(f"round {round_no + 1}: {mode}: {took:.1f} s ({phrases / took:.0f} phrases/s)", flush=True)
        finally:
            ray.shutdown()
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    local = checksums["local"]
    return {"phrases": phrases, "rounds": rounds, "load_at_start": load_at_start, "cpu_count": os.cpu_count(),
            "encoder": settings.encoder.name, "backend": settings.encoder.backend,
            "ray_start_s": ray_start, "seconds": seconds, "median_s": median,
            "phrases_per_s": {mode: phrases / s for mode, s in median.items()},
            "speedup_2_vs_1_actor": median["ray, 1 actor"] / median["ray, 2 actors"],
            "ray_2_actors_vs_local": median["ray, 2 actors"] / median["local"],
            "ray_2_actors_plus_start_vs_local": (median["ray, 2 actors"] + ray_start) / median["local"],
            "same_snapshot_as_local": {mode: checksums[mode] == local for mode in MODES if mode != "local"}}


def section(result: dict[str, Any]) -> str:
    rows = [[mode, result["median_s"][mode], result["phrases_per_s"][mode],
             result["median_s"][mode] / result["median_s"]["local"],
             "-" if mode == "local" else ("yes" if result["same_snapshot_as_local"][mode] else "no")]
            for mode in MODES]
    table = markdown_table(["executor", "index build s (median)", "phrases/s", "time vs local",
                            "same snapshot checksum as local"], rows)
    return (f"## Batch jobs on Ray (`bench/bench_ray.py`)\n\n"
            f"`repliq index build --full` with {result['encoder']} (backend {result['backend']}) over "
            f"{result['phrases']:,} bank phrases, {result['rounds']} round(s), median. Local: this process on every "
            f"core. Ray: a local Ray (2 CPUs) and Ray Data actors of one CPU each; each actor loads the encoder "
            f"itself, and that load is inside its time. Ray's own start-up, paid once per job: "
            f"{result['ray_start_s']:.1f} s.\n\n{table}\n\n"
            f"Speed-up from 1 to 2 actors: **{result['speedup_2_vs_1_actor']:.2f}x**. Ray with 2 actors against the "
            f"local executor: **{result['ray_2_actors_vs_local']:.2f}x** the time "
            f"({result['ray_2_actors_plus_start_vs_local']:.2f}x with Ray's start-up). {reading(result)}")


def reading(result: dict[str, Any]) -> str:
    """What the numbers say, worded from the numbers (a rerun on another machine may say otherwise)."""
    overhead = result["ray_2_actors_plus_start_vs_local"]
    shared = ""
    if result.get("load_at_start", 0) > (result.get("cpu_count") or 1):
        shared = (f" Caution: other jobs kept the machine busy (load average {result['load_at_start']:.0f} on "
                  f"{result['cpu_count']} cores), so every run got a varying share of the CPU and these ratios are "
                  "noisy; rerun on a quiet machine before reading more than the direction into them.")
    if overhead > 1.0:
        return (f"Here Ray's overhead (start-up, an encoder load per actor, batches pickled through the object "
                f"store) does not pay: with its start-up the job takes {100 * (overhead - 1):.0f}% longer than the "
                "local executor, which already uses both cores in one process. That is why local stays the default; "
                "Ray is for a cluster (`--ray-address`), where actors add cores the driver does not have." + shared)
    return (f"Here Ray with 2 actors, start-up included, takes {100 * (1 - overhead):.0f}% less time than the local "
            "executor; on a machine this small that margin comes and goes with load, so local stays the default."
            + shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-home", type=Path, default=Path("/work/train-home"),
                        help="a workspace whose bank supplies the phrases")
    parser.add_argument("--phrases", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    result = run(args.source_home, args.phrases, args.rounds)
    write_results(NAME, result, section(result))
    print(section(result))


if __name__ == "__main__":
    main()

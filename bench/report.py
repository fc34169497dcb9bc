"""Shared output for benchmarks: a JSON record and one replaceable section in docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nMeasured on the development machine; every ratio compares two settings measured in "
    "the same run.\n"
)


def machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, record: dict[str, Any], section_markdown: str, doc: Path = DOC) -> None:
    """Save the JSON record and replace this benchmark's section (between markers) in ``doc``."""
    record = {"benchmark": name, "machine": machine(), **record}
    atomic_write_json(RESULTS / f"{name}.json", record)
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{section_markdown.strip()}\n\n_Raw numbers: `bench/results/{name}.json`; machine: " \
            f"{record['machine']['cpu_count']} cores, load average {record['machine']['load_average'][0]:.1f} " \
            f"at start, {record['machine']['date']}._\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def run_concurrently(worker: Callable[[], None], concurrency: int) -> float:
    """Run ``worker`` on ``concurrency`` threads at once; the wall-clock seconds until the last one ends."""
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started

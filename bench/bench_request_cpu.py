"""CPU milliseconds per request of ``Pipeline.respond``, split by stage, over held-out contexts in one process.

No gRPC and no load generator: the same contexts are answered twice in a row, "cold" (first sight of
every context; the caches only know the warm-up requests) and "warm" (the same contexts again: the
encoder cache answers every query window, so what is left is everything but the encoder). CPU time
(``time.process_time``, all threads) rather than wall time, so other jobs on a shared machine move the
numbers less. Annotators are timed one family at a time; hygiene and the FAISS search as stages.

    python -m bench.bench_request_cpu --home /tmp/demo-home [--contexts 30] [--out bench/results/request_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json

Spent = dict[str, float]


def _timed(owner: Any, attr: str, label: str, spent: Spent) -> None:
    original: Callable[..., Any] = getattr(owner, attr)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - started

    setattr(owner, attr, wrapped)


def run(home: Path, data: Path, per_language: int) -> dict[str, Any]:
    import core.hygiene as hygiene
    import ranker.annotators as annotators
    import retriever.index as index
    from bench.bench_side_by_side import contexts
    from core.config import load_settings
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.pipeline import PipelineRequest

    spent: Spent = {}
    for name, cls in annotators.registry().items():
        _timed(cls, "annotate", f"annotator {name}", spent)
    _timed(hygiene.HygieneFilter, "split", "hygiene", spent)
    _timed(index.VectorIndex, "_raw_search", "faiss search", spent)
    assembly = build_pipeline(load_settings(environ={"REPLIQ_HOME": str(home)}))
    items = contexts(data, per_language)

    def answer(batch: list[Any]) -> None:
        for language, context, _gold in batch:
            assembly.pipeline.respond(PipelineRequest(context, top_k=3, deadline=time.monotonic() + 60,
                                                      language_hint=language))

    answer(items[:5])  # warm-up: first calls allocate and load
    record: dict[str, Any] = {"home": str(home), "requests": len(items)}
    for label in ("cold", "warm"):
        spent.clear()
        started = time.process_time()
        answer(items)
        per = {k: round(1000 * v / len(items), 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
        record[label] = {"cpu_ms_per_request": round(1000 * (time.process_time() - started) / len(items), 1),
                         "annotators_ms": round(sum(v for k, v in per.items() if k.startswith("annotator")), 2),
                         "stages_ms": per}
        print(label, json.dumps(record[label]), flush=True)
    assembly.close()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a workspace with a bank, an index and a blender")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--contexts", type=int, default=30, help="held-out contexts per language")
    parser.add_argument("--out", type=Path, default=Path("bench/results/request_cpu.json"))
    args = parser.parse_args()
    atomic_write_json(args.out, run(args.home, args.data, args.contexts))


if __name__ == "__main__":
    main()

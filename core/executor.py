"""Where a batch job's model step runs: in this process (the default) or on Ray Data actors that hold the model once.

A job cuts its work into batches and hands the executor a *worker factory*: a small picklable object whose
call loads the model and returns a function from one batch to its results. The local executor calls the
factory once in this process; the Ray executor ships it to a fixed pool of actors
(``map_batches(..., compute=ActorPoolStrategy(size=n))``), each of which loads the model once and then
scores batch after batch. Either way the job receives ``(batch index, results)`` pairs as batches finish
(in any order on Ray) and writes each through its own resumable store, so a run killed mid-way keeps every
batch it received and a rerun computes only the rest.

Both executors run the job's batches exactly as the job cut them, so a model sees the same inputs in the
same groups and both give the same numbers. Ray is imported only when a Ray executor first runs: nothing
else in repliq needs it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

EXECUTORS = ("local", "ray")
# The object store a private local Ray gets: batches of phrases are small, and the default (30% of RAM)
# would reserve gigabytes of shared memory on a machine that also serves.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ExecutorConfig:
    """The jobs' ``--executor``, ``--ray-address`` and ``--actors`` flags."""

    # "local" (the default: on one machine Ray's start-up and serialization rarely pay) or "ray".
    kind: str = "local"
    # Ray only: None starts a private local Ray for the job; "auto" or "ray://host:10001" joins a cluster.
    ray_address: str | None = None
    # Ray only: actors in the pool, each holding its own copy of the model (one CPU each).
    actors: int = 1

    def validate(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.actors < 1:
            raise ValueError(f"--actors must be at least 1, got {self.actors}")
        if self.kind == "local" and (self.ray_address or self.actors != 1):
            raise ValueError("--ray-address and --actors apply to the Ray executor only; add --executor ray")


BatchFn = Callable[[list[Any]], Sequence[Any]]
# Called once per worker (this process, or each Ray actor) to load the model; must pickle for Ray.
WorkerFactory = Callable[[], BatchFn]


class Executor(Protocol):
    name: str

    def map(self, factory: WorkerFactory, batches: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
        """``(index into batches, one result per item)`` for every batch, as each finishes."""
        ...


def _checked(index: int, batch: Sequence[Any], results: Sequence[Any]) -> list[Any]:
    if len(results) != len(batch):
        raise RuntimeError(f"batch {index}: the worker returned {len(results)} results for {len(batch)} items; "
                           "the worker function must return one result per item")
    return list(results)


class LocalExecutor:
    """Every batch in this process, in order; the model is loaded at the first batch (never when there is none)."""

    name = "local"

    def map(self, factory: WorkerFactory, batches: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
        worker: BatchFn | None = None
        for index, batch in enumerate(batches):
            worker = worker or factory()
            yield index, _checked(index, batch, worker(list(batch)))


class _RayWorker:
    """The callable class Ray Data puts in each actor: the model is loaded once, in ``__init__``."""

    def __init__(self, factory: WorkerFactory) -> None:
        self.fn = factory()

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for index, blob in zip(rows["index"], rows["batch"], strict=True):
            batch = pickle.loads(blob)
            out.append(pickle.dumps(_checked(int(index), batch, self.fn(batch))))
        return {"index": np.asarray(rows["index"]), "results": np.array(out, dtype=object)}


class RayExecutor:
    """Batches on a fixed pool of Ray Data actors; joins a cluster or starts a private local Ray.

    Use it as a context manager: Ray starts at the first ``map`` (seconds on a small machine) and a Ray this
    executor started is shut down on exit; a Ray that was already running (a test fixture, a notebook) is left
    alone.
    """

    name = "ray"

    def __init__(self, config: ExecutorConfig, num_cpus: int | None = None) -> None:
        config.validate()
        self.config = config
        self.num_cpus = num_cpus
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def _ensure_ray(self) -> Any:
        try:
            import ray
            import ray.data
        except ImportError as exc:
            raise RuntimeError("--executor ray needs Ray Data: `pip install 'ray[data]==2.60.0'` "
                               "(or run with --executor local)") from exc
        if not ray.is_initialized():
            if self.config.ray_address:
                ray.init(address=self.config.ray_address, logging_level=logging.WARNING)
            else:
                # A local Ray may run more actors than cores (each then gets a slice of a core), never fewer.
                cpus = max(self.num_cpus or os.cpu_count() or 1, self.config.actors)
                ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         logging_level=logging.WARNING)
            self._started = True
        return ray

    def map(self, factory: WorkerFactory, batches: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
        if not batches:
            return
        ray = self._ensure_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # One row per batch, pickled whole: the job's batches reach the model exactly as the job cut them,
        # and one block per batch lets every actor of the pool take work.
        rows = [{"index": i, "batch": pickle.dumps(list(batch))} for i, batch in enumerate(batches)]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _RayWorker, fn_constructor_args=(factory,), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.config.actors), num_cpus=1)
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            for index, blob in zip(block["index"], block["results"], strict=True):
                yield int(index), pickle.loads(blob)


class _Closing:
    """Context-manager face for the local executor, so jobs write one ``with make_executor(...)``."""

    def __init__(self, executor: LocalExecutor) -> None:
        self.executor = executor

    def __enter__(self) -> LocalExecutor:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        return None


def make_executor(config: ExecutorConfig | None = None) -> RayExecutor | _Closing:
    """``with make_executor(config) as executor:`` — the local executor unless the config asks for Ray."""
    config = config or ExecutorConfig()
    config.validate()
    return RayExecutor(config) if config.kind == "ray" else _Closing(LocalExecutor())


def run_batches(executor: Executor, factory: WorkerFactory, batches: Sequence[Sequence[Any]],
                write: Callable[[list[Any], list[Any]], None]) -> None:
    """Map ``batches`` and hand each ``(batch, results)`` to ``write`` as it arrives (the job's resumable store)."""
    for index, results in executor.map(factory, batches):
        write(list(batches[index]), results)

"""`repliq index build`: bring the bank index up to date (incremental unless told to rebuild).

The encoding step is cut into chunks that depend on the job alone, and runs on the chosen executor: this
process (the default), or a pool of Ray actors (``--executor ray``) that each load the encoder once. The
driver assembles the vectors in order and writes the snapshot, so both executors write the same one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.config import Settings
from core.executor import BatchFn, Executor, WorkerFactory, make_executor
from core.job_configs import IndexBuildConfig
from dialog.jobs.common import open_bank
from retriever.bank_index import UpdateReport, build_index, update_index
from retriever.encoder import Encoder

Progress = Callable[[int, int], None]
# Texts per executor batch, in encoder batches: what the torch encoder encodes per call when it reports
# progress. Smaller jobs are cut into at least CHUNKS batches, so that an actor pool can share even them.
CHUNK_BATCHES = 16
CHUNKS = 16


def chunk_size(total: int, batch_size: int) -> int:
    """Texts per executor batch: whole encoder batches, at most CHUNK_BATCHES of them, at least CHUNKS chunks.

    It depends on the job alone (not on the executor or its actor count), so every executor encodes the same
    chunks, each sorted by length into the same model batches, and writes the same vectors.
    """
    per_chunk = -(-max(total, 1) // CHUNKS)
    return max(batch_size, min(batch_size * CHUNK_BATCHES, -(-per_chunk // batch_size) * batch_size))


@dataclass(frozen=True)
class PassageEncoder:
    """Worker factory for ``core.executor``: each worker loads the configured encoder once."""

    settings: Settings
    identity: str
    backend: str

    def __call__(self) -> BatchFn:
        # Unset threads become this worker's CPU share (Ray sets OMP_NUM_THREADS per actor; ONNX Runtime
        # would otherwise take every core of the node in each actor).
        threads = self.settings.encoder.num_threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
        encoder = Encoder.from_config(replace(self.settings, encoder=replace(self.settings.encoder,
                                                                             num_threads=threads)))
        found = (encoder.identity, getattr(encoder, "backend", "torch"))
        if found != (self.identity, self.backend):
            raise RuntimeError(f"this worker's encoder is {found[0]} on {found[1]}, the driver's {self.identity} on "
                               f"{self.backend}: give every Ray node the same model cache (`repliq models prepare`)")
        return lambda texts: list(encoder.encode_passages(texts))


class ExecutorEncoder:
    """The driver's encoder with its passage encoding cut into chunks on an executor; the rest is the encoder's.

    The local executor encodes the chunks with the driver's encoder; others (Ray) load their own in each worker.
    """

    def __init__(self, encoder: Any, executor: Executor, settings: Settings) -> None:
        self._encoder, self._executor, self._batch_size = encoder, executor, settings.encoder.batch_size
        self._factory: WorkerFactory = (
            (lambda: lambda texts: list(encoder.encode_passages(texts))) if executor.name == "local"
            else PassageEncoder(settings, encoder.identity, getattr(encoder, "backend", "torch")))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_passages(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self._encoder.dim), dtype=np.float32)
        chunk = chunk_size(len(texts), self._batch_size)
        batches = [texts[start:start + chunk] for start in range(0, len(texts), chunk)]
        done = 0
        for index, rows in self._executor.map(self._factory, batches):
            out[index * chunk: index * chunk + len(rows)] = np.stack(rows)
            done += len(rows)
            if progress:
                progress(done, len(texts))
        return out


def index_build(settings: Settings, config: IndexBuildConfig, progress: Progress | None = None) -> UpdateReport:
    """Build or update the index; returns what changed (the CLI prints a summary, or JSON)."""
    if config.encoder:
        settings = replace(settings, encoder=replace(settings.encoder, name=config.encoder))
    with open_bank(settings) as bank, make_executor(config.executor) as executor:
        encoder = ExecutorEncoder(Encoder.from_config(settings), executor, settings)
        if config.full:
            started = time.monotonic()
            manifest = build_index(bank, encoder, settings, progress=progress)
            return UpdateReport(manifest.total, 0, 0, 0, True, "--full", manifest, time.monotonic() - started)
        return update_index(bank, encoder, settings, progress=progress)

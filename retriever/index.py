"""A FAISS vector index keyed by phrase ids, editable in place.

HNSW cannot delete vectors, so removal is a tombstone: each FAISS row maps to a phrase id and a live
flag. Searches over-fetch past dead rows; when too many rows are dead the index is rebuilt from its
own stored vectors (no re-encoding; the compressed kind from its decoded codes). Vectors are
L2-normalized on the way in, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from core.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from core.config import RetrievalConfig
from retriever import ivf

KINDS = ("auto", "flat", "hnsw", ivf.KIND)
_RANK = {"flat": 0, "hnsw": 1, ivf.KIND: 2}  # growing past a threshold moves right, never back on add
query_probe = ivf.query_probe
COMPACT_DEAD_FRACTION = 0.25
# Below this many rows a rebuild is cheaper than keeping garbage around but not worth triggering.
COMPACT_MIN_ROWS = 64
BLAS_THRESHOLD = 16
_FILES = ("index.faiss", "row_ids.npy", "live.npy")


class IndexChecksumError(ValueError):
    """Saved index files do not match the checksum recorded when they were written."""


def _tune_faiss() -> None:
    # The shipped threshold (128000) keeps batched flat search off BLAS, ~9x slower (MODELS.md).
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for this process (a process-wide setting: serving sets it once at start)."""
    if threads < 1:
        raise ValueError(f"search threads must be at least 1, got {threads}")
    faiss.omp_set_num_threads(threads)


class _ReadWriteLock:
    """Many concurrent searches, or one mutation: FAISS reads are thread-safe, writes are not."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _as_matrix(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} contain zero vectors, which have no direction to compare")
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def _as_ids(ids: np.ndarray | list[int]) -> np.ndarray:
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if (array < 0).any():
        raise ValueError("phrase ids must be non-negative (-1 marks padding in search results)")
    if len(np.unique(array)) != len(array):
        raise ValueError("phrase ids in one call must be unique")
    return array


class VectorIndex:
    """Cosine top-k over int64 ids: exact below ``config.flat_max`` live vectors, HNSW above (``auto``),
    IVF-PQ with a refine stage above ``config.ivf_min`` (retriever/ivf.py; its ``tuning`` says how it was tuned).

    On a machine where ``faiss.get_num_gpus() > 0`` a flat index is mirrored to all GPUs for search
    (the CPU copy stays the master for edits and saving). That path is untested: no GPU here.
    """

    def __init__(self, dim: int, config: RetrievalConfig | None = None, kind: str = "auto",
                 tune_queries: np.ndarray | None = None) -> None:
        if dim <= 0:
            raise ValueError(f"dimension must be positive, got {dim}")
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        _tune_faiss()
        self.dim = dim
        self.config = config or RetrievalConfig()
        self.requested_kind = kind
        self._lock = _ReadWriteLock()
        self._row_ids = np.empty(0, dtype=np.int64)
        self._live = np.empty(0, dtype=bool)
        self._row_of: dict[int, int] = {}
        self.tuning: dict = {}
        # Query vectors the compressed kind is tuned on (ivf.tune); kept in memory only.
        self.tune_queries = None if tune_queries is None else _as_matrix(tune_queries, dim, "tuning queries")
        self._index, self.kind = self._new_index(0)
        self._search_index: faiss.Index = self._index

    @classmethod
    def build(cls, ids: np.ndarray | list[int], vectors: np.ndarray, config: RetrievalConfig | None = None,
              kind: str = "auto", tune_queries: np.ndarray | None = None) -> VectorIndex:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array (n, dim), got shape {matrix.shape}")
        index = cls(matrix.shape[1], config, kind, tune_queries)
        index.add(ids, matrix)
        return index

    @classmethod
    def build_chunked(cls, dim: int, chunks: ivf.Chunks, total: int, config: RetrievalConfig | None = None,
                      kind: str = "auto", tune_queries: np.ndarray | None = None) -> VectorIndex:
        """Build from ``chunks`` (callable -> (ids, vectors) chunks, read thrice) without holding every vector."""
        index = cls(dim, config, kind, tune_queries)

        def checked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for ids, vectors in chunks():
                yield index._validated(ids, vectors)

        with index._lock.write():
            index._fill(checked, total)
        return index

    def _kind_for(self, n_live: int) -> str:
        if self.requested_kind != "auto":
            return self.requested_kind
        if n_live > self.config.ivf_min:
            return ivf.KIND
        return "hnsw" if n_live > self.config.flat_max else "flat"

    def _new_index(self, n_live: int) -> tuple[faiss.Index, str]:
        kind = self._kind_for(n_live)
        if kind == "flat" or kind == ivf.KIND:  # an IVF index needs training data: flat until the first add
            return faiss.IndexFlatIP(self.dim), "flat"
        index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.hnsw_ef_construction
        index.hnsw.efSearch = self.config.hnsw_ef_search
        return index, kind

    def _refresh_search_index(self) -> None:
        self._search_index = self._index
        if self.kind == "flat" and faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
            self._search_index = faiss.index_cpu_to_all_gpus(self._index)

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, phrase_id: object) -> bool:
        return isinstance(phrase_id, int | np.integer) and int(phrase_id) in self._row_of

    @property
    def ids(self) -> np.ndarray:
        """Live phrase ids, in row order."""
        return self._row_ids[self._live].copy()

    @property
    def dead_rows(self) -> int:
        return len(self._row_ids) - len(self._row_of)

    @property
    def total_rows(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add new ids; an id already present is an error (use :meth:`upsert` for edits)."""
        id_array, matrix = self._validated(ids, vectors)
        with self._lock.write():
            present = [int(i) for i in id_array if int(i) in self._row_of]
            if present:
                raise ValueError(f"ids already in the index: {present[:10]}; remove them first or use upsert()")
            self._add_unlocked(id_array, matrix)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Tombstone these ids (unknown ids are ignored); returns how many were removed."""
        id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock.write():
            removed = self._remove_unlocked(id_array)
            if self._needs_compaction():
                self._rebuild()
        return removed

    def upsert(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Replace the vectors of ids that exist and add the rest (an edit is remove + add)."""
        id_array, matrix = self._validated(ids, vectors)
        with self._lock.write():
            self._remove_unlocked(id_array)
            self._add_unlocked(id_array, matrix)

    def _validated(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        id_array = _as_ids(ids)
        matrix = _as_matrix(vectors, self.dim, "vectors")
        if len(id_array) != len(matrix):
            raise ValueError(f"{len(id_array)} ids but {len(matrix)} vectors")
        return id_array, matrix

    def _add_unlocked(self, id_array: np.ndarray, matrix: np.ndarray) -> None:
        if _RANK[self._kind_for(len(self._row_of) + len(id_array))] > _RANK[self.kind]:
            self._rebuild((id_array, matrix))  # straight into the bigger kind, not appended to the old first
            return
        self._append(id_array, matrix)
        if self._needs_compaction():
            self._rebuild()
        else:
            self._refresh_search_index()

    def _remove_unlocked(self, id_array: np.ndarray) -> int:
        removed = 0
        for pid in id_array.tolist():
            row = self._row_of.pop(pid, None)
            if row is not None:
                self._live[row] = False
                removed += 1
        return removed

    def _append(self, id_array: np.ndarray, matrix: np.ndarray) -> None:
        start = len(self._row_ids)
        if len(matrix):
            self._index.add(matrix)
        self._row_ids = np.concatenate([self._row_ids, id_array])
        self._live = np.concatenate([self._live, np.ones(len(id_array), dtype=bool)])
        self._row_of.update((int(pid), start + offset) for offset, pid in enumerate(id_array))

    def _needs_compaction(self) -> bool:
        rows = len(self._row_ids)
        return rows >= COMPACT_MIN_ROWS and self.dead_rows > COMPACT_DEAD_FRACTION * rows

    def compact(self) -> None:
        """Drop tombstoned rows by rebuilding from the stored vectors (no re-encoding)."""
        with self._lock.write():
            self._rebuild()

    def _rebuild(self, extra: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        rows = np.flatnonzero(self._live)
        total = len(rows) + (0 if extra is None else len(extra[0]))
        self._fill(ivf.stored_chunks(self._index, rows, self._row_ids[rows], extra), total)

    def _fill(self, chunks: ivf.Chunks, total: int) -> None:
        """Replace the index by a new one of the kind ``total`` rows call for, holding the chunks' rows."""
        self._row_ids = np.empty(0, dtype=np.int64)
        self._live = np.empty(0, dtype=bool)
        self._row_of, previous, self.tuning = {}, self.tuning, {}
        if total and self._kind_for(total) == ivf.KIND:
            self._index, shape = ivf.trained_index(self.dim, chunks, total, self.config)
            self.kind = ivf.KIND
        else:
            self._index, self.kind = self._new_index(total)
        for ids, vectors in chunks():
            self._append(ids, vectors)
        if len(self._row_of) != len(self._row_ids) or len(self._row_ids) != total:
            raise ValueError(f"the vector chunks held {len(self._row_ids)} rows ({len(self._row_of)} distinct ids), "
                             f"expected {total} distinct ids")
        if self.kind == ivf.KIND:
            self.tuning = ivf.tune(self._index, shape, chunks, total, self.config, self.tune_queries, previous)
        self._refresh_search_index()

    def vectors(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored (normalized) vectors of live ids; KeyError names the first unknown id."""
        with self._lock.read():
            rows = []
            for pid in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
                if pid not in self._row_of:
                    raise KeyError(f"id {pid} is not in the index")
                rows.append(self._row_of[pid])
            if not rows:
                return np.empty((0, self.dim), dtype=np.float32)
            return np.stack([self._index.reconstruct(row) for row in rows])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live ids per query, best first; missing slots have id -1 and score -inf."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        matrix = _as_matrix(queries, self.dim, "queries")
        with self._lock.read():
            return self._search_live(matrix, k)

    def _search_live(self, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(matrix)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        total = int(self._search_index.ntotal)
        if n == 0 or total == 0 or not self._row_of:
            return scores, ids
        # Enough extra rows to step over every tombstone is exact for flat search; capped so a large
        # dead fraction does not make every query scan far; rows still short are retried wider.
        fetch = min(total, k + min(self.dead_rows, 4 * k + 32))
        pending = np.arange(n)
        while len(pending):
            raw_scores, rows = self._raw_search(matrix[pending], fetch)
            short = []
            for position, query in enumerate(pending):
                valid = rows[position] >= 0
                row_hits = rows[position][valid]
                live = self._live[row_hits]
                hit_rows = row_hits[live][:k]
                if len(hit_rows) < k and fetch < total and len(hit_rows) < len(self._row_of):
                    short.append(query)
                    continue
                ids[query, : len(hit_rows)] = self._row_ids[hit_rows]
                scores[query, : len(hit_rows)] = raw_scores[position][valid][live][:k]
            pending = np.asarray(short, dtype=np.int64)
            fetch = min(total, fetch * 2)
        return scores, ids

    def _raw_search(self, matrix: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, fetch))
            return self._search_index.search(matrix, fetch, params=params)
        return self._search_index.search(matrix, fetch)

    def save(self, directory: Path) -> str:
        """Write the index to ``directory`` (replaced atomically); returns the content checksum."""
        with self._lock.read():
            blobs = {"index.faiss": faiss.serialize_index(self._index).tobytes(),
                     "row_ids.npy": _npy_bytes(self._row_ids), "live.npy": _npy_bytes(self._live)}
            meta = {"dim": self.dim, "kind": self.kind, "requested_kind": self.requested_kind,
                    "live": len(self._row_of), "rows": len(self._row_ids), "tuning": self.tuning}
        with atomic_directory(Path(directory)) as scratch:
            for name, blob in blobs.items():  # fsynced: CURRENT may point here right after
                atomic_write_bytes(scratch / name, blob)
            atomic_write_json(scratch / "meta.json", meta)
        return _checksum(blobs)

    @classmethod
    def load(cls, directory: Path, config: RetrievalConfig | None = None,
             expected_checksum: str | None = None) -> VectorIndex:
        """Read a saved index; with ``expected_checksum`` the bytes are verified before FAISS sees them."""
        directory = Path(directory)
        missing = [name for name in (*_FILES, "meta.json") if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a saved vector index (missing {', '.join(missing)})")
        blobs = {name: (directory / name).read_bytes() for name in _FILES}
        if expected_checksum is not None and _checksum(blobs) != expected_checksum:
            raise IndexChecksumError(f"{directory}: index files do not match their recorded checksum")
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        index = cls(int(meta["dim"]), config, meta.get("requested_kind", meta["kind"]))
        index._index = faiss.deserialize_index(np.frombuffer(blobs["index.faiss"], dtype=np.uint8))
        index.kind, index.tuning = meta["kind"], meta.get("tuning", {})
        index._row_ids = np.load(io.BytesIO(blobs["row_ids.npy"]), allow_pickle=False).astype(np.int64)
        index._live = np.load(io.BytesIO(blobs["live.npy"]), allow_pickle=False).astype(bool)
        if not (index._index.d == index.dim and index._index.ntotal == len(index._row_ids) == len(index._live)):
            raise IndexChecksumError(f"{directory}: index, id and live arrays disagree in size")
        index._row_of = {int(pid): int(row) for row, pid in enumerate(index._row_ids) if index._live[row]}
        index._refresh_search_index()
        return index


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _checksum(blobs: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update(name.encode())
        digest.update(len(blobs[name]).to_bytes(8, "little"))
        digest.update(blobs[name])
    return digest.hexdigest()


def checksum_files(directory: Path) -> str:
    """sha256 over the serialized index bytes and the id/live arrays of a saved index."""
    return _checksum({name: (Path(directory) / name).read_bytes() for name in _FILES})

"""The persisted vector index of the approved bank phrases, one shard per language.

Layout under ``settings.indexes_dir / <encoder model_id>/``: immutable snapshot directories and a
``CURRENT`` file naming the live one. A build writes a new snapshot beside the live one and only then
swaps ``CURRENT`` atomically, so a crash at any point leaves the previous index usable. Loading
refuses an index that no longer matches the encoder or the bank, because a silently stale index
returns plausible but wrong replies.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import faiss
import numpy as np

from core.artifacts import KINDS, ArtifactError, ArtifactManifest, check_manifest, package_versions, save_manifest
from core.atomic import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    sha256_bytes,
    sha256_json,
)
from retriever.index import IndexChecksumError, VectorIndex, query_probe

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.encoder import Encoder

FORMAT = KINDS["index"].format_version
KEEP_SNAPSHOTS = 2
BUILD_HINT = "run `repliq index build`"
Progress = Callable[[int, int], None]
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_SHARD_NAME = re.compile(r"[A-Za-z0-9_-]{1,16}")


class BankIndexError(Exception):
    """The bank index cannot be used as it is; the message says what to run."""


class StaleIndexError(BankIndexError):
    """The index was built from another state of the bank."""


class IndexNotFoundError(StaleIndexError):
    """No index has been built for this encoder yet."""


class IndexMismatchError(BankIndexError):
    """The index was built with another encoder (id, weights or dimension)."""


class IndexCorruptError(IndexMismatchError):
    """The index files differ from what was written (checksum) or cannot be read."""


class BankLike(Protocol):
    @property
    def revision(self) -> int: ...
    def phrases(self, *, status: str | None = None, language: str | None = None) -> list[Any]: ...
    def changed_since(self, revision: int) -> list[int]: ...


class PhraseInfo(NamedTuple):
    text: str
    language: str
    status: str


@dataclass
class IndexManifest:
    bank_revision: int
    encoder_id: str
    encoder_identity: str
    encoder_weights_sha256: str
    dim: int
    counts: dict[str, int]
    kinds: dict[str, str]
    params: dict[str, Any]  # index settings, and under "ivf_tuning" what the compressed shards chose and measured
    shard_checksums: dict[str, str]
    phrases_sha256: str
    content_sha256: str
    checksum: str
    created: str
    faiss_version: str
    repliq_version: str
    format: int = FORMAT
    snapshot: str = field(default="", compare=False)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_artifact(self) -> ArtifactManifest:
        """The common manifest: identity is the snapshot checksum; lineage the encoder and bank revision."""
        details = {k: v for k, v in asdict(self).items() if k != "snapshot"}
        return ArtifactManifest(
            kind="index", identity=self.checksum, config=self.params, data_sha256=self.content_sha256,
            lineage={"model": self.encoder_identity, "bank": str(self.bank_revision)}, metrics={"counts": self.counts},
            versions=package_versions("faiss-cpu", "numpy", "repliq"), created_at=self.created, details=details)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path, snapshot: str) -> IndexManifest:
        """Read a snapshot manifest, refusing another kind or format with the command that rebuilds it."""
        try:
            check_manifest(data, "index", where)
        except ArtifactError as exc:
            raise IndexMismatchError(str(exc)) from exc
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name != "snapshot"}, snapshot=snapshot)


@dataclass
class UpdateReport:
    added: int
    edited: int
    removed: int
    unchanged: int
    full_rebuild: bool
    reason: str
    manifest: IndexManifest
    seconds: float = 0.0


@dataclass
class _BankState:
    revision: int
    current: dict[int, tuple[str, str, str]]  # id -> (language, text sha256, text)
    changed: list[int]


def _text_sha(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def _content_sha(entries: dict[int, tuple[str, str]]) -> str:
    return sha256_json(sorted([pid, lang, sha] for pid, (lang, sha) in entries.items()))


def _read_bank(bank: BankLike, since: int | None = None, attempts: int = 5) -> _BankState:
    """Approved phrases and the revision they belong to, re-read if an edit lands in between."""
    for _ in range(attempts):
        revision = bank.revision
        phrases = bank.phrases(status="approved")
        changed = list(bank.changed_since(since)) if since is not None else []
        if bank.revision == revision:
            bad = next((p for p in phrases if not _SHARD_NAME.fullmatch(p.language)), None)
            if bad is not None:
                raise ValueError(f"phrase #{bad.id} has language {bad.language!r}, which cannot name an index "
                                 "shard; fix it in the bank")
            return _BankState(revision, {int(p.id): (p.language, _text_sha(p.text), p.text) for p in phrases},
                              changed)
    raise StaleIndexError("the bank kept changing while it was being read; retry when editing pauses")


def index_root(settings: Settings, encoder: Encoder) -> Path:
    return Path(settings.indexes_dir) / _SAFE.sub("_", encoder.manifest.model_id)


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            for leftover in root.glob(".snap-*"):  # scratch dirs of builds killed mid-write
                shutil.rmtree(leftover, ignore_errors=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _repliq_version() -> str:
    try:
        return metadata.version("repliq")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_snapshot(root: Path, shards: dict[str, VectorIndex], stored: dict[int, tuple[str, str]],
                    revision: int, encoder: Encoder, settings: Settings) -> IndexManifest:
    shards = {lang: shard for lang, shard in shards.items() if len(shard)}
    name = f"snap-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-r{revision}"
    phrases_blob = json.dumps({str(pid): list(entry) for pid, entry in sorted(stored.items())}).encode()
    with atomic_directory(root / name) as scratch:
        checksums = {lang: shard.save(scratch / "shards" / lang) for lang, shard in sorted(shards.items())}
        atomic_write_bytes(scratch / "phrases.json", phrases_blob)
        phrases_sha = sha256_bytes(phrases_blob)
        config = settings.retrieval
        manifest = IndexManifest(
            bank_revision=revision, encoder_id=encoder.manifest.model_id, encoder_identity=encoder.identity,
            encoder_weights_sha256=encoder.manifest.weights_sha256, dim=encoder.dim,
            counts={lang: len(shard) for lang, shard in shards.items()},
            kinds={lang: shard.kind for lang, shard in shards.items()},
            params={"flat_max": config.flat_max, "hnsw_m": config.hnsw_m, "hnsw_ef_construction":
                    config.hnsw_ef_construction, "hnsw_ef_search": config.hnsw_ef_search, "ivf_min": config.ivf_min,
                    "ivf_tuning": {lang: shard.tuning for lang, shard in shards.items() if shard.tuning}},
            shard_checksums=checksums, phrases_sha256=phrases_sha, content_sha256=_content_sha(stored),
            checksum=sha256_json({"shards": checksums, "phrases": phrases_sha}),
            created=datetime.now(UTC).isoformat(timespec="seconds"), faiss_version=faiss.__version__,
            repliq_version=_repliq_version(), snapshot=name)
        save_manifest(scratch / "manifest.json", manifest.to_artifact())
    atomic_write_text(root / "CURRENT", name + "\n")
    older = sorted((p for p in root.glob("snap-*") if p.is_dir() and p.name != name), reverse=True)
    for old in older[KEEP_SNAPSHOTS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def _group(ids: list[int], langs: list[str], vectors: np.ndarray) -> dict[str, tuple[list[int], np.ndarray]]:
    groups: dict[str, list[int]] = {}
    for row, lang in enumerate(langs):
        groups.setdefault(lang, []).append(row)
    return {lang: ([ids[r] for r in rows], vectors[rows]) for lang, rows in groups.items()}


def build_index(bank: BankLike, encoder: Encoder, settings: Settings,
                progress: Progress | None = None) -> IndexManifest:
    """Encode every approved phrase and publish a new snapshot."""
    root = index_root(settings, encoder)
    with _build_lock(root):
        return _full_build(root, _read_bank(bank), encoder, settings, progress)


def _full_build(root: Path, state: _BankState, encoder: Encoder, settings: Settings,
                progress: Progress | None) -> IndexManifest:
    ids = sorted(state.current)
    vectors = encoder.encode_passages([state.current[pid][2] for pid in ids], progress=progress)
    groups = _group(ids, [state.current[pid][0] for pid in ids], vectors)
    shards = {lang: VectorIndex.build(gids, gvecs, settings.retrieval, tune_queries=query_probe(  # big banks only
        [state.current[pid][2] for pid in gids], encoder.encode_queries, settings.retrieval))
        for lang, (gids, gvecs) in groups.items()}
    stored = {pid: entry[:2] for pid, entry in state.current.items()}
    return _write_snapshot(root, shards, stored, state.revision, encoder, settings)


def update_index(bank: BankLike, encoder: Encoder, settings: Settings,
                 progress: Progress | None = None) -> UpdateReport:
    """Re-encode only phrases changed since the indexed revision; full build when there is no usable index."""
    started = time.monotonic()
    root = index_root(settings, encoder)
    with _build_lock(root):
        try:
            manifest, shards, stored = _open_snapshot(root, encoder, settings)
        except (IndexNotFoundError, IndexMismatchError) as exc:
            state = _read_bank(bank)
            built = _full_build(root, state, encoder, settings, progress)
            return UpdateReport(len(state.current), 0, 0, 0, True, str(exc), built, time.monotonic() - started)
        state = _read_bank(bank, since=manifest.bank_revision)
        if state.revision < manifest.bank_revision:
            built = _full_build(root, state, encoder, settings, progress)
            reason = f"bank revision {state.revision} is older than the index's {manifest.bank_revision}"
            return UpdateReport(len(state.current), 0, 0, 0, True, reason, built, time.monotonic() - started)
        target = {pid: entry[:2] for pid, entry in state.current.items()}
        check = set(state.changed)
        if {pid: stored[pid] for pid in stored if pid not in check} != {
                pid: target[pid] for pid in target if pid not in check}:
            check = set(stored) | set(target)  # history does not explain the difference: compare everything
        added, edited, removed, unchanged = _classify(stored, target, check)
        if not (added or edited or removed) and state.revision == manifest.bank_revision:
            return UpdateReport(0, 0, 0, len(unchanged), False, "up to date", manifest, time.monotonic() - started)
        for pid in edited + removed:
            shards[stored[pid][0]].remove([pid])
        to_encode = added + edited
        vectors = encoder.encode_passages([state.current[pid][2] for pid in to_encode], progress=progress)
        for lang, (gids, gvecs) in _group(to_encode, [target[pid][0] for pid in to_encode], vectors).items():
            shards.setdefault(lang, VectorIndex(encoder.dim, settings.retrieval)).add(gids, gvecs)
        new_manifest = _write_snapshot(root, shards, target, state.revision, encoder, settings)
        return UpdateReport(len(added), len(edited), len(removed), len(unchanged), False, "incremental",
                            new_manifest, time.monotonic() - started)


def _classify(stored: dict[int, tuple[str, str]], target: dict[int, tuple[str, str]],
              ids: set[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    added, edited, removed, unchanged = [], [], [], []
    for pid in sorted(ids):
        before, after = stored.get(pid), target.get(pid)
        if before is None and after is not None:
            added.append(pid)
        elif before is not None and after is None:
            removed.append(pid)
        elif before is not None:
            (unchanged if before == after else edited).append(pid)
    return added, edited, removed, unchanged


def _open_snapshot(root: Path, encoder: Encoder, settings: Settings
                   ) -> tuple[IndexManifest, dict[str, VectorIndex], dict[int, tuple[str, str]]]:
    pointer = root / "CURRENT"
    if not pointer.is_file():
        others = sorted(p.parent.name for p in root.parent.glob("*/CURRENT")) if root.parent.is_dir() else []
        hint = f" (indexes exist for other encoders: {', '.join(others)})" if others else ""
        raise IndexNotFoundError(f"no index for encoder {encoder.identity} under {root.parent}{hint}; {BUILD_HINT}")
    name = pointer.read_text(encoding="utf-8").strip()
    snapshot = root / name
    try:
        if not name.startswith("snap-") or "/" in name:
            raise ValueError(f"CURRENT names {name!r}")
        data = json.loads((snapshot / "manifest.json").read_text(encoding="utf-8"))
        phrases_blob = (snapshot / "phrases.json").read_bytes()
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorruptError(f"the index snapshot {snapshot} is unreadable ({exc}); {BUILD_HINT}") from exc
    try:
        manifest = IndexManifest.from_json(data, snapshot / "manifest.json", name)
    except (KeyError, TypeError) as exc:
        raise IndexCorruptError(f"the index snapshot {snapshot} has a damaged manifest ({exc}); {BUILD_HINT}") from exc
    if (manifest.encoder_id, manifest.encoder_weights_sha256) != (
            encoder.manifest.model_id, encoder.manifest.weights_sha256):
        raise IndexMismatchError(f"the index in {snapshot} was built with encoder {manifest.encoder_identity}, "
                                 f"but the configured encoder is {encoder.identity}; {BUILD_HINT}")
    if manifest.dim != encoder.dim:
        raise IndexMismatchError(f"the index in {snapshot} has dimension {manifest.dim}, the encoder produces "
                                 f"{encoder.dim}; {BUILD_HINT}")
    if (sha256_bytes(phrases_blob) != manifest.phrases_sha256
            or sha256_json({"shards": manifest.shard_checksums, "phrases": manifest.phrases_sha256})
            != manifest.checksum):
        raise IndexCorruptError(f"the index in {snapshot} fails its checksum; {BUILD_HINT}")
    shards: dict[str, VectorIndex] = {}
    for lang, checksum in manifest.shard_checksums.items():
        try:
            shards[lang] = VectorIndex.load(snapshot / "shards" / lang, settings.retrieval, checksum)
        except (IndexChecksumError, OSError) as exc:
            raise IndexCorruptError(f"the {lang} shard of {snapshot} fails its checksum ({exc}); "
                                    f"{BUILD_HINT}") from exc
        if shards[lang].dim != manifest.dim:
            raise IndexCorruptError(f"the {lang} shard of {snapshot} has the wrong dimension; {BUILD_HINT}")
    stored = {int(pid): (entry[0], entry[1]) for pid, entry in json.loads(phrases_blob).items()}
    return manifest, shards, stored


class BankIndex:
    """A verified snapshot plus the approved phrases it was built from, ready to search."""

    def __init__(self, manifest: IndexManifest, shards: dict[str, VectorIndex],
                 phrases: dict[int, PhraseInfo]) -> None:
        self.manifest = manifest
        self._shards = shards
        self._phrases = phrases

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._shards))

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards.values())

    def phrase(self, phrase_id: int) -> PhraseInfo | None:
        return self._phrases.get(phrase_id)

    def shard(self, language: str) -> VectorIndex | None:
        return self._shards.get(language)

    def search(self, query_vecs: np.ndarray, language: str, k: int) -> list[list[tuple[int, float]]]:
        """Per query, up to k (phrase id, cosine) pairs from the ``language`` shard, best first."""
        queries = np.asarray(query_vecs, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        shard = self._shards.get(language)
        if shard is None:
            return [[] for _ in range(len(queries))]
        scores, ids = shard.search(queries, k)
        return [[(int(pid), float(score)) for pid, score in zip(row_ids, row_scores, strict=True) if pid >= 0]
                for row_ids, row_scores in zip(ids, scores, strict=True)]


def load_index(settings: Settings, encoder: Encoder, bank: BankLike) -> BankIndex:
    """The live index, refused (with the command to fix it) unless it matches this encoder and bank."""
    root = index_root(settings, encoder)
    manifest, shards, stored = _open_snapshot(root, encoder, settings)
    state = _read_bank(bank)
    if state.revision != manifest.bank_revision:
        raise StaleIndexError(f"the index was built at bank revision {manifest.bank_revision}, the bank is at "
                              f"revision {state.revision}; {BUILD_HINT} (it re-encodes only the changes)")
    target = {pid: entry[:2] for pid, entry in state.current.items()}
    if target != stored:
        raise StaleIndexError(f"the index does not hold the bank's approved phrases (another bank file at the "
                              f"same revision?); {BUILD_HINT}")
    phrases = {pid: PhraseInfo(entry[2], entry[0], "approved") for pid, entry in state.current.items()}
    return BankIndex(manifest, shards, phrases)


def describe_index(root: Path) -> dict[str, Any] | None:
    """The live snapshot's manifest as a dict (for ``repliq index status``), without verifying it."""
    pointer = Path(root) / "CURRENT"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text(encoding="utf-8").strip() / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

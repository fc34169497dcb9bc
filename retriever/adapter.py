"""A response-tuned query adapter on top of a frozen bi-encoder.

Off-the-shelf e5 is a semantic-similarity model: it finds phrases *like* the user's turn, not *answers*
to it. Fine-tuning the whole encoder fixes that but makes a 470 MB copy per deployment and forces a
re-encode of the bank. The adapter moves only the query side: ``q' = normalize(q + (q @ down) @ up)``, a
low-rank residual map learned from (context, reply) pairs on frozen embeddings. Passages, and so the
bank index, are untouched; the adapter is a few hundred KB and ships with the project.

The residual starts at zero (``up = 0``), so an untrained adapter is exactly the base encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import (
    ArtifactError,
    ArtifactManifest,
    kind_spec,
    load_manifest,
    package_versions,
    save_manifest,
    shipped_dir,
)
from core.atomic import atomic_directory
from core.types import QueryPassageEncoder

KIND = "query-adapter"
WEIGHTS_NAME = "adapter.npz"
MANIFEST_NAME = kind_spec(KIND).manifest_file
REBUILD = "run `repliq train adapter` (or `repliq train default` for the whole shipped chain)"


class AdapterError(ValueError):
    """A missing, corrupt or mismatched adapter; the message names the command that rebuilds it."""


@dataclass(frozen=True)
class QueryAdapter:
    """The low-rank residual map and the identity of the encoder whose query vectors it maps."""

    down: np.ndarray  # (dim, rank)
    up: np.ndarray  # (rank, dim)
    base_encoder: str  # the base encoder's identity (model id @ weights hash)

    @property
    def dim(self) -> int:
        return int(self.down.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.down, self.up):
            h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return h.hexdigest()

    @property
    def identity(self) -> str:
        return f"{KIND}@{self.digest[:12]}"

    def apply(self, queries: np.ndarray) -> np.ndarray:
        """Map L2-normalized query rows; the result is L2-normalized again (cosine stays a dot product)."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"adapter expects rows of dim {self.dim}, got shape {queries.shape}")
        mapped = queries + (queries @ self.down) @ self.up
        norms = np.linalg.norm(mapped, axis=1, keepdims=True)
        return (mapped / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def save_adapter(directory: Path, adapter: QueryAdapter, *, config: dict[str, Any], data_sha256: str,
                 metrics: dict[str, Any]) -> ArtifactManifest:
    """Weights and manifest written together, atomically: a crash leaves the old adapter or the new one."""
    manifest = ArtifactManifest(kind=KIND, identity=adapter.digest, config=config, data_sha256=data_sha256,
                                lineage={"encoder": adapter.base_encoder},
                                versions=package_versions("numpy", "torch"), metrics=metrics,
                                details={"dim": adapter.dim, "rank": adapter.rank})
    with atomic_directory(Path(directory)) as scratch:
        np.savez(scratch / WEIGHTS_NAME, down=adapter.down.astype(np.float32), up=adapter.up.astype(np.float32))
        save_manifest(scratch / MANIFEST_NAME, manifest)
    return manifest


def load_adapter(directory: Path, base_identity: str | None = None) -> tuple[QueryAdapter, ArtifactManifest]:
    """The adapter in ``directory``; refused when corrupt, of another format, or made for another encoder."""
    directory = Path(directory)
    weights_path = directory / WEIGHTS_NAME
    if not (directory / MANIFEST_NAME).is_file() or not weights_path.is_file():
        raise AdapterError(f"no query adapter in {directory} ({MANIFEST_NAME} and {WEIGHTS_NAME} needed); {REBUILD}")
    try:
        manifest = load_manifest(directory, KIND)
    except ArtifactError as exc:
        raise AdapterError(str(exc)) from exc
    base = manifest.lineage.get("encoder", "")
    try:
        with np.load(weights_path) as arrays:
            adapter = QueryAdapter(down=arrays["down"], up=arrays["up"], base_encoder=base)
    except (OSError, ValueError, KeyError) as exc:
        raise AdapterError(f"{weights_path} is unreadable ({exc}); {REBUILD}") from exc
    if adapter.digest != manifest.identity:
        raise AdapterError(f"{weights_path} does not match the weights hash in its manifest (corrupt or edited); "
                           f"{REBUILD}")
    if base_identity is not None and base != base_identity:
        raise AdapterError(f"the query adapter in {directory} was trained on encoder {base}, "
                           f"but the configured encoder is {base_identity}; {REBUILD}, or set "
                           "[encoder] adapter = \"none\"")
    return adapter, manifest


class AdaptedEncoder:
    """A base encoder whose query side goes through the adapter; passages are the base encoder's own.

    ``identity`` stays the base encoder's, because that is what the bank index holds vectors of (the
    index stays valid with or without an adapter). Consumers of *query* cosines (the blender) record
    ``adapter_identity`` too, so a blender trained without the adapter is refused with one.
    """

    def __init__(self, base: QueryPassageEncoder, adapter: QueryAdapter) -> None:
        base_identity = getattr(base, "identity", None)
        if base_identity is not None and base_identity != adapter.base_encoder:
            raise AdapterError(f"adapter {adapter.identity} was trained on {adapter.base_encoder}, "
                               f"not {base_identity}; {REBUILD}")
        self.base, self.adapter = base, adapter
        self.identity: str | None = base_identity
        self.manifest = getattr(base, "manifest", None)
        self.dim: int = int(getattr(base, "dim", adapter.dim))
        self.adapter_identity = adapter.identity
        # The runtime underneath (torch or onnx), so whoever reports the backend sees through the adapter.
        self.backend: str = str(getattr(base, "backend", "torch"))

    def encode_queries(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self.adapter.apply(self.base.encode_queries(texts, *args, **kwargs))

    def encode_passages(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        return self.base.encode_passages(texts, *args, **kwargs)


def adapter_identity(encoder: object) -> str:
    """``"none"`` for a plain encoder, else the adapter's identity (through any caching wrapper)."""
    while encoder is not None:
        found = getattr(encoder, "adapter_identity", None)
        if found:
            return str(found)
        encoder = getattr(encoder, "encoder", None)
    return "none"


def configured_adapter(setting: str, workspace_dir: Path, base_identity: str) -> QueryAdapter | None:
    """The adapter ``[encoder] adapter`` asks for.

    ``"none"``: no adapter. A path: that adapter, refused if it was made for another encoder. ``"auto"``:
    the workspace's own (`repliq train adapter`), else the one shipped with the project, each only when it
    was trained on this very encoder; another encoder (MiniLM, a fine-tuned e5) runs without one.
    """
    if setting == "none":
        return None
    if setting != "auto":
        return load_adapter(Path(setting).expanduser(), base_identity)[0]
    for candidate in (workspace_dir, shipped_dir("adapter")):
        if (candidate / MANIFEST_NAME).is_file():
            adapter, _ = load_adapter(candidate)
            if adapter.base_encoder == base_identity:
                return adapter
    return None


def with_configured_adapter(encoder: Any, setting: str, workspace_dir: Path) -> Any:
    """``encoder`` wrapped in the configured adapter, or unchanged when there is none."""
    adapter = configured_adapter(setting, workspace_dir, str(getattr(encoder, "identity", "")))
    return AdaptedEncoder(encoder, adapter) if adapter is not None else encoder

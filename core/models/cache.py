"""The model cache: build each named model once per machine, and describe any local model directory.

A cached model is trusted only while the weights hash recorded in its manifest still matches the
files on disk, so a damaged or hand-edited cache entry is rebuilt instead of silently used. Builds
run in a scratch directory that replaces the entry only when complete, under a per-model file lock,
so a crash or two concurrent ``prepare`` runs never leave a half-written model.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_directory
from core.models import registry
from core.models.local import (  # noqa: F401  (re-exported for callers of the cache)
    WEIGHT_SUFFIXES,
    describe_local_dir,
    embedding_dim,
    is_current,
    weight_files,
    weights_digest,
)
from core.models.manifest import MANIFEST_NAME, ModelManifest
from core.models.spec import ModelSpec


class UnknownModelError(ValueError):
    """A model name the cache cannot build; the message lists the known names."""


@dataclass(frozen=True)
class PrepareResult:
    name: str
    path: Path
    status: str  # "built" or "cached"
    seconds: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    license: str
    languages: tuple[str, ...]
    prepared: bool
    path: Path
    description: str


def _select(names: Sequence[str] | None, specs: dict[str, ModelSpec]) -> list[ModelSpec]:
    if names is None:
        return [spec for spec in specs.values() if spec.kind == "encoder" or spec.default]
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise UnknownModelError(
            f"unknown model name(s) {', '.join(map(repr, unknown))}; known models: {', '.join(sorted(specs))} "
            "(see `repliq models list`)"
        )
    return [specs[name] for name in dict.fromkeys(names)]


@contextmanager
def _build_lock(models_dir: Path, name: str, say: Callable[[str], None]) -> Iterator[None]:
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{name}: another process is preparing it; waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(spec: ModelSpec, target: Path) -> None:
    # Scratch directories of builds killed outright (no cleanup ran) would otherwise pile up.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(target) as scratch:
        spec.build(scratch)
        manifest = ModelManifest.load(scratch)
        digest = weights_digest(scratch)
        if manifest.weights_sha256 != digest:
            raise RuntimeError(
                f"the builder of {spec.name!r} recorded weights_sha256 {manifest.weights_sha256[:12]}… but the "
                f"files hash to {digest[:12]}…; builders must record core.models.cache.weights_digest(dir)"
            )
        _make_readable(scratch)


def _make_readable(root: Path) -> None:
    """Scratch directories and atomic writes are owner-only; a cache shared with a service account
    must be readable by it."""
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def prepare(
    names: Sequence[str] | None,
    models_dir: Path,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[PrepareResult]:
    """Build the named models (``None``: every encoder plus the default decoders) into ``models_dir``.

    Models already built and intact are left alone (status ``cached``) unless ``force`` is set.
    All names are checked before anything is built.
    """
    say = progress or (lambda _message: None)
    models_dir = Path(models_dir)
    results = []
    for spec in _select(names, registry.all_specs()):
        target = models_dir / spec.name
        started = time.perf_counter()
        with _build_lock(models_dir, spec.name, say):
            if not force and is_current(target):
                status = "cached"
            else:
                say(f"{spec.name}: building from {spec.source_package} (once per machine)")
                _build(spec, target)
                status = "built"
        seconds = time.perf_counter() - started
        say(f"{spec.name}: {status} in {seconds:.1f}s at {target}")
        results.append(PrepareResult(spec.name, target, status, seconds))
    return results


def list_models(models_dir: Path) -> list[ModelInfo]:
    """Every known model with its cache state (manifest present; hashes are checked by ``prepare``)."""
    models_dir = Path(models_dir)
    return [
        ModelInfo(spec.name, spec.kind, spec.license, tuple(spec.languages),
                  (models_dir / spec.name / MANIFEST_NAME).is_file(), models_dir / spec.name, spec.description)
        for spec in registry.all_specs().values()
    ]




def cached_encoders(models_dir: Path) -> list[Path]:
    """Every encoder in the cache, packaged or trained into it (``repliq train retriever``): what
    ``repliq models prepare`` exports to ONNX. Directories whose manifest cannot be read are skipped."""
    found = []
    for path in sorted(Path(models_dir).iterdir()) if Path(models_dir).is_dir() else []:
        if path.name.startswith(".") or not (path / MANIFEST_NAME).is_file():
            continue
        try:
            if ModelManifest.load(path).kind == "encoder":
                found.append(path)
        except (OSError, ValueError, TypeError):
            continue
    return found

"""The model cache: build each named model once per machine, and describe any local model directory.

A cached model is trusted only while the weights hash recorded in its manifest still matches the
files on disk, so a damaged or hand-edited cache entry is rebuilt instead of silently used. Builds
run in a scratch directory that replaces the entry only when complete, under a per-model file lock,
so a crash or two concurrent ``prepare`` runs never leave a half-written model.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import atomic_directory, sha256_file, sha256_json
from core.models import registry
from core.models.manifest import MANIFEST_NAME, ModelManifest
from core.models.spec import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


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


def weight_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    return sorted(
        path for path in model_dir.rglob("*")
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(model_dir).parts)
    )


def weights_digest(model_dir: Path) -> str:
    """The hash a manifest records as ``weights_sha256``: the file's own sha256 when there is one
    weights file (as builders naturally compute it), else a hash over every file's path and sha256."""
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return sha256_file(files[0])
    return sha256_json({path.relative_to(model_dir).as_posix(): sha256_file(path) for path in files})


def is_current(model_dir: Path) -> bool:
    """True when the directory has a readable manifest whose weights hash matches its files."""
    try:
        manifest = ModelManifest.load(model_dir)
        return manifest.weights_sha256 == weights_digest(model_dir)
    except (OSError, ValueError, TypeError):
        return False


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _transformer_dim(folder: Path) -> int:
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    for key in ("hidden_size", "d_model", "dim", "hidden_dim"):
        if isinstance(config.get(key), int):
            return config[key]
    return 0


def _pooling_dim(config: dict[str, Any]) -> int:
    dim = int(config.get("embedding_dimension") or config.get("word_embedding_dimension") or 0)
    modes = config.get("pooling_mode")
    if modes is None:
        count = sum(1 for key, on in config.items() if key.startswith("pooling_mode_") and on is True)
    else:
        count = 1 if isinstance(modes, str) else len(modes)
    return dim * max(count, 1)


def embedding_dim(model_dir: Path) -> int:
    """Output width of a sentence-transformers directory, read from its module configs (no model load)."""
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        dim = _transformer_dim(model_dir)  # a bare transformers model: ST adds mean pooling
    else:
        dim = 0
        for module in sorted(_read_json(modules_file), key=lambda item: item.get("idx", 0)):
            folder = model_dir / module.get("path", "")
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            config_file = folder / "config.json"
            if kind == "Transformer":
                dim = _transformer_dim(folder) or dim
            elif kind == "Pooling" and config_file.is_file():
                dim = _pooling_dim(_read_json(config_file)) or dim
            elif kind == "Dense" and config_file.is_file():
                dim = int(_read_json(config_file).get("out_features") or dim)
    if dim <= 0:
        raise ValueError(f"cannot tell the embedding size of {model_dir}; is it a sentence-transformers directory "
                         "(modules.json, config.json, 1_Pooling/config.json)?")
    return dim


def describe_local_dir(path: Path) -> ModelManifest:
    """Manifest of a model directory given by path: its repliq manifest, or one built on the fly.

    Prefixes come from the directory's saved sentence-transformers prompts when it has any.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist; give a sentence-transformers directory "
                                "or a cached model name (see `repliq models list`)")
    if (path / MANIFEST_NAME).is_file():
        return ModelManifest.load(path)
    st_config = path / "config_sentence_transformers.json"
    prompts = (_read_json(st_config).get("prompts") or {}) if st_config.is_file() else {}
    return ModelManifest(
        model_id=path.resolve().name,
        kind="encoder",
        source_package="local",
        source_version="",
        weights_sha256=weights_digest(path),
        dim=embedding_dim(path),
        query_prefix=str(prompts.get("query") or ""),
        passage_prefix=str(prompts.get("document") or prompts.get("passage") or ""),
        extra={"path": str(path.resolve())},
    )

"""One contract for every trained or built thing: index, encoder, blender, reward models, RL run, labeling batch.

Each artifact carries one :class:`ArtifactManifest`: its kind and format version, the config and data it
was built from (a hash), its **lineage** (the references of the artifacts it was built on: encoder, bank
revision, specificity proxy, parent blender...), the package versions, its metrics, when it was made,
and its own identity (a content hash). A consumer that finds a parent changed knows the artifact is
stale, and ``repliq artifacts list`` can say so before serving refuses it.

On disk the manifest is one JSON object: the common keys below plus the kind's own details beside them
(flat, so the formats that predate this contract keep their field names). Saves are atomic; a load
checks kind and format version and refuses a mismatch with the command that rebuilds the artifact
(:data:`KINDS` maps each kind to that command and to where it lives in a workspace).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json

COMMON_KEYS = ("kind", "format_version", "identity", "config", "data_sha256", "lineage", "versions", "metrics",
               "created_at")
# An artifact's lineage value when it was built without that parent (e.g. a blender without a proxy).
ABSENT = "none"


class ArtifactError(ValueError):
    """An artifact that cannot be used as asked; the message names the file and the command to run."""


@dataclass(frozen=True)
class ArtifactKind:
    """What the workspace knows about one kind: its current format, how to rebuild it and where it lives."""

    kind: str
    format_version: int
    rebuild: str
    location: str  # relative to the workspace home ("models:" = the model cache)
    manifest_file: str = "manifest.json"


KINDS: dict[str, ArtifactKind] = {k.kind: k for k in (
    ArtifactKind("index", 2, "repliq index build", "indexes/<encoder>/<snapshot>"),
    ArtifactKind("encoder", 1, "repliq train retriever", "models:<name>", "repliq_manifest.json"),
    ArtifactKind("blender", 2, "repliq train blender", "artifacts/blender", "blender_manifest.json"),
    ArtifactKind("blender-rl", 2, "repliq rl tune", "artifacts/blender-rl", "blender_manifest.json"),
    ArtifactKind("specificity-proxy", 2, "repliq train reward --kind specificity", "artifacts/reward-specificity"),
    ArtifactKind("relevance", 2, "repliq train reward --kind relevance", "artifacts/reward-relevance"),
    ArtifactKind("preference-reward", 2, "repliq train reward --kind preference", "artifacts/reward-preference"),
    ArtifactKind("sensibleness-judge", 1, "repliq train judge", "artifacts/judge"),
    ArtifactKind("rl-run", 1, "repliq rl tune", "artifacts/rl-run"),
    ArtifactKind("labeling-batch", 1, "repliq ssa export", "any --out directory"),
    ArtifactKind("prompt-pool", 1, "repliq train prompts", "artifacts/prompt-pool"),
    ArtifactKind("prompt-retriever", 1, "repliq train prompts", "artifacts/prompt-retriever"),
    ArtifactKind("query-adapter", 1, "repliq train adapter", "artifacts/adapter", "adapter_manifest.json"),
)}


def kind_spec(kind: str) -> ArtifactKind:
    if kind not in KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return KINDS[kind]


def rebuild_command(kind: str) -> str:
    return KINDS[kind].rebuild if kind in KINDS else "rebuild it"


def package_versions(*packages: str) -> dict[str, str]:
    """Python and the given distributions' versions ("unknown" when not installed), for reproducing a build."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def shipped_dir(name: str) -> Path:
    """Where repliq ships a small trained artifact (``core/data/shipped/<name>``), so a fresh install serves the
    learned chain; `repliq train default` rebuilds every one of them from public data."""
    import core.data

    return Path(core.data.__file__).resolve().parent / "shipped" / name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ArtifactManifest:
    kind: str
    identity: str  # content hash of the artifact itself (weights, booster, shards...)
    config: dict[str, Any] = field(default_factory=dict)
    data_sha256: str = ""
    # Parent name -> the reference the artifact was built on ("encoder" -> "e5-small@…", "blender" -> …).
    lineage: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=now)
    format_version: int = 0  # 0: the kind's current version
    details: dict[str, Any] = field(default_factory=dict)  # the kind's own fields, stored beside the common ones
    # Prefix of ``ref``; a model's id for encoders, else the kind.
    name: str = ""

    def __post_init__(self) -> None:
        spec = kind_spec(self.kind)
        if not self.format_version:
            self.format_version = spec.format_version
        clash = sorted(set(self.details) & set(COMMON_KEYS))
        if clash:
            raise ValueError(f"{self.kind} details {clash} would overwrite common manifest keys; rename them")

    @property
    def ref(self) -> str:
        """How other artifacts record this one in their lineage: ``<name>@<first 12 identity digits>``."""
        return f"{self.name or self.kind}@{self.identity[:12]}"

    @property
    def rebuild(self) -> str:
        return rebuild_command(self.kind)

    def to_json(self) -> dict[str, Any]:
        return {**self.details, "kind": self.kind, "format_version": self.format_version, "identity": self.identity,
                "config": self.config, "data_sha256": self.data_sha256, "lineage": dict(self.lineage),
                "versions": self.versions, "metrics": self.metrics, "created_at": self.created_at}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: Path | str = "manifest") -> ArtifactManifest:
        """Parse without checking kind or version (see :func:`load_manifest` for the checked load)."""
        if not isinstance(obj, dict) or "kind" not in obj or "identity" not in obj:
            raise ArtifactError(f"{where} is not an artifact manifest (no kind or identity)")
        try:
            return cls(kind=str(obj["kind"]), identity=str(obj["identity"]), config=dict(obj.get("config") or {}),
                       data_sha256=str(obj.get("data_sha256", "")), lineage=dict(obj.get("lineage") or {}),
                       versions=dict(obj.get("versions") or {}), metrics=dict(obj.get("metrics") or {}),
                       created_at=str(obj.get("created_at", "")), format_version=int(obj.get("format_version", -1)),
                       details={k: v for k, v in obj.items() if k not in COMMON_KEYS})
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where} has a malformed artifact manifest ({exc})") from exc


def save_manifest(path: Path, manifest: ArtifactManifest) -> None:
    """Atomic write; inside an :func:`core.atomic.atomic_directory` scratch it lands with the rest."""
    atomic_write_json(Path(path), manifest.to_json())


def read_json(path: Path, expected: str) -> dict[str, Any]:
    """The manifest file as a dict; a missing or unreadable file names the command that makes ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found: no {expected} there; run `{rebuild_command(expected)}`")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc}); run `{rebuild_command(expected)}`") from exc
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} is not a JSON object; run `{rebuild_command(expected)}`")
    return obj


def check_manifest(obj: dict[str, Any], kinds: str | tuple[str, ...], where: Path | str) -> ArtifactManifest:
    """Refuse another kind or another format version than this code writes, naming the rebuild command."""
    accepted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where} is not a JSON object; run `{rebuild_command(accepted[0])}` to rebuild it")
    found = obj.get("kind")
    if found not in accepted:
        wanted = " or ".join(repr(k) for k in accepted)
        raise ArtifactError(f"{where} holds a {found!r} artifact, not {wanted}; point the config at a {accepted[0]} "
                            f"(build one with `{rebuild_command(accepted[0])}`)")
    spec = KINDS[str(found)]
    version = obj.get("format_version")
    if version != spec.format_version or "identity" not in obj:
        saved = "a format from before the artifact contract" if version is None else f"format {version}"
        raise ArtifactError(f"{where} is a {found} in {saved}, this repliq reads format {spec.format_version}; "
                            f"run `{spec.rebuild}` to rebuild it")
    return ArtifactManifest.from_json(obj, where)


def load_manifest(path: Path, kinds: str | tuple[str, ...]) -> ArtifactManifest:
    """The checked manifest at ``path`` (a file, or a directory holding the kind's manifest file)."""
    path = Path(path)
    first = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if path.is_dir():
        path = path / kind_spec(first[0]).manifest_file
    return check_manifest(read_json(path, first[0]), kinds, path)


def check_lineage(manifest: ArtifactManifest, parent: str, live: str, where: Path | str) -> None:
    """Refuse an artifact built on another ``parent`` than the one it is about to be used with."""
    recorded = manifest.lineage.get(parent, ABSENT)
    if recorded != live:
        raise ArtifactError(f"{where} was built on {parent} {recorded!r}, but this workspace has {live!r}; "
                            f"run `{manifest.rebuild}` to rebuild it (or configure the {parent} it was built on)")


def check_declared(obj: Any, kind: str, where: Path | str) -> None:
    """Check kind and format of a manifest that declares a kind; formats from before this contract that
    carry their own schema check (labeling exports: rater work that must stay loadable) declare none."""
    if isinstance(obj, dict) and "kind" in obj:
        check_manifest(obj, kind, where)

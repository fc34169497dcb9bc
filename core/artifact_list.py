"""Every artifact in a workspace, its lineage, and whether it is stale (``repliq artifacts list``).

An artifact is stale when something it was built on has moved: a blender whose encoder or specificity
proxy is no longer the one the workspace serves with, an RL-tuned blender whose π_ref was retrained,
an index built at an older bank revision or with other weights of its encoder, a fine-tuned encoder
whose base model was re-prepared. Serving refuses most of these at load time; this listing says so
beforehand, with the command that rebuilds each one.

Only manifests are read (no model is loaded), so the listing is instant on any workspace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.artifacts import ABSENT, KINDS, ArtifactError, ArtifactManifest, check_manifest, rebuild_command
from core.config import Settings

# Artifact-manifest file names, most specific first (a blender directory holds both kinds of JSON).
MANIFEST_FILES = ("blender_manifest.json", "manifest.json")
# Lineage keys that name a workspace artifact by its default directory under <home>/artifacts.
WORKSPACE_PARENTS = ("blender", "reward-specificity", "reward-relevance", "prompt-pool")
FINETUNE_PACKAGE = "repliq-finetune"  # ModelManifest.source_package of encoders trained into the cache


@dataclass
class ArtifactEntry:
    path: str
    kind: str
    identity: str  # the reference other artifacts record (``<name>@<12 hash digits>``)
    created_at: str
    lineage: dict[str, str]
    stale: bool
    reasons: list[str] = field(default_factory=list)
    rebuild: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _kind_of_dir(directory: Path) -> str:
    """The kind a workspace directory holds by its default name (for manifests too old to say)."""
    for spec in KINDS.values():
        if spec.location == f"artifacts/{directory.name}":
            return spec.kind
    return "unknown"


def _read_artifact(directory: Path) -> ArtifactManifest | ArtifactEntry | None:
    """The checked manifest in ``directory``; an unusable one as a stale entry; ``None`` if there is none."""
    path = next((directory / name for name in MANIFEST_FILES if (directory / name).is_file()), None)
    if path is None:
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind not in KINDS:
            raise ArtifactError(f"{path} declares no known artifact kind")
        return check_manifest(obj, str(kind), path)
    except (OSError, ValueError, ArtifactError) as exc:
        guessed = _kind_of_dir(directory)
        return ArtifactEntry(str(directory), guessed, "?", "", {}, True, [str(exc)], rebuild_command(guessed))


class LiveRefs:
    """What the workspace holds now, for each lineage key; ``None`` for keys it cannot judge."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str], str | None] = {}

    def get(self, key: str, recorded: str) -> str | None:
        slot = (key, recorded.partition("@")[0] if key in ("model", "base") else "")
        if slot not in self._cache:
            self._cache[slot] = self._resolve(key, slot[1])
        return self._cache[slot]

    def _resolve(self, key: str, model_id: str) -> str | None:
        settings = self.settings
        if key == "encoder":
            return self._model_ref(settings.encoder.name)
        if key in ("model", "base"):
            configured = self._model_ref(settings.encoder.name)
            if configured.partition("@")[0] == model_id:  # also covers an encoder configured by path
                return configured
            return self._model_ref(model_id)
        if key == "bank":
            return self._bank_revision()
        if key == "specificity":
            return self._artifact_ref(settings.artifact_path(settings.ranker.specificity, "reward-specificity"))
        if key in WORKSPACE_PARENTS:
            path = settings.artifacts_dir / key
            return self._artifact_ref(path if path.exists() else None)
        return None

    def _model_ref(self, name: str) -> str:
        from core.models.local import describe_local_dir
        from core.models.manifest import MANIFEST_NAME, ModelManifest
        from core.models.registry import resolve

        try:
            directory = resolve(name, self.settings.models_dir)
            manifest = (ModelManifest.load(directory) if (directory / MANIFEST_NAME).exists()
                        else describe_local_dir(directory))
        except (OSError, ValueError) as exc:
            return f"missing ({exc})"
        return manifest.short_id

    def _bank_revision(self) -> str:
        from core.bank.store import PhraseBank

        if not self.settings.bank_path.is_file():
            return ABSENT
        with PhraseBank(self.settings.bank_path) as bank:
            return str(bank.revision)

    @staticmethod
    def _artifact_ref(directory: Path | None) -> str:
        if directory is None:
            return ABSENT
        found = _read_artifact(Path(directory))
        if isinstance(found, ArtifactManifest):
            return found.ref
        return f"unreadable ({directory})"


def _entry(path: Path, manifest: ArtifactManifest, live: LiveRefs) -> ArtifactEntry:
    reasons = []
    for key, recorded in sorted(manifest.lineage.items()):
        now = live.get(key, recorded)
        if now is not None and now != recorded:
            reasons.append(f"{key}: built on {recorded}, the workspace now has {now}")
    return ArtifactEntry(str(path), manifest.kind, manifest.ref, manifest.created_at, dict(manifest.lineage),
                         bool(reasons), reasons, manifest.rebuild)


def _workspace_dirs(settings: Settings) -> Iterator[Path]:
    if settings.artifacts_dir.is_dir():
        yield from sorted(p for p in settings.artifacts_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _index_snapshots(settings: Settings) -> Iterator[Path]:
    if settings.indexes_dir.is_dir():
        for pointer in sorted(settings.indexes_dir.glob("*/CURRENT")):
            yield pointer.parent / pointer.read_text(encoding="utf-8").strip()


def _finetuned_encoders(settings: Settings) -> Iterator[tuple[Path, ArtifactManifest]]:
    from core.models.manifest import MANIFEST_NAME, ModelManifest

    if not Path(settings.models_dir).is_dir():
        return
    for path in sorted(Path(settings.models_dir).glob(f"*/{MANIFEST_NAME}")):
        try:
            manifest = ModelManifest.load(path.parent)
        except (OSError, ValueError, TypeError):
            continue  # not ours to judge: `repliq models list` reports broken cache entries
        if manifest.source_package == FINETUNE_PACKAGE and manifest.kind == "encoder":
            yield path.parent, manifest.to_artifact()


def list_artifacts(settings: Settings) -> list[ArtifactEntry]:
    """Artifacts under ``<home>/artifacts``, the live index snapshots, and encoders trained into the cache."""
    live = LiveRefs(settings)
    entries: list[ArtifactEntry] = []
    for directory in [*_workspace_dirs(settings), *_index_snapshots(settings)]:
        found = _read_artifact(directory)
        if isinstance(found, ArtifactManifest):
            entries.append(_entry(directory, found, live))
        elif found is not None:
            entries.append(found)
    entries += [_entry(path, manifest, live) for path, manifest in _finetuned_encoders(settings)]
    return entries


def format_table(entries: list[ArtifactEntry]) -> str:
    """One block per artifact: kind, identity, created, lineage, and for stale ones why and what to run."""
    if not entries:
        return "no artifacts in this workspace yet (see README: Ranking and RL, in order)"
    lines = []
    for e in entries:
        state = "STALE" if e.stale else "ok"
        lines.append(f"{e.kind:<18} {e.identity:<32} {e.created_at or '-':<26} {state:<6} {e.path}")
        lines += [f"    built on {key}: {value}" for key, value in sorted(e.lineage.items())]
        lines += [f"    stale: {reason}" for reason in e.reasons]
        if e.stale:
            lines.append(f"    run `{e.rebuild}`")
    return "\n".join(lines)

"""Model manifests: what a cached model is, where it came from and how to use it.

The manifest travels with the weights so that an index, a blender or a server can check it is
talking to exactly the model it was built for. Its format predates :mod:`core.artifacts` and is shared
with the packaged models ``repliq models prepare`` builds, so it stays as it is;
:meth:`ModelManifest.to_artifact` gives the common view (identity = weights hash, lineage = the base
model of a fine-tuned encoder).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.artifacts import ArtifactManifest
from core.atomic import atomic_write_json

MANIFEST_NAME = "repliq_manifest.json"


@dataclass
class ModelManifest:
    model_id: str
    kind: str  # "encoder" or "decoder"
    source_package: str
    source_version: str
    weights_sha256: str
    dim: int = 0
    query_prefix: str = ""
    passage_prefix: str = ""
    languages: list[str] = field(default_factory=list)
    license: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def save(self, model_dir: Path) -> None:
        atomic_write_json(Path(model_dir) / MANIFEST_NAME, asdict(self))

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"{model_dir} has no {MANIFEST_NAME}; run `repliq models prepare` "
                "(or point the config at a prepared model directory)"
            )
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    @property
    def short_id(self) -> str:
        """Identity used in other artifacts' manifests: name plus the first weights-hash digits."""
        return f"{self.model_id}@{self.weights_sha256[:12]}"

    def to_artifact(self) -> ArtifactManifest:
        """The encoder as an artifact; its ``ref`` is :attr:`short_id`, what indexes and blenders record."""
        if self.kind != "encoder":
            raise ValueError(f"{self.model_id} is a {self.kind}; only encoders are workspace artifacts")
        extra = self.extra
        base = extra.get("base")
        return ArtifactManifest(
            kind="encoder", name=self.model_id, identity=self.weights_sha256, config=dict(extra.get("training") or {}),
            data_sha256=str(extra.get("data_hash", "")), lineage={"base": str(base)} if base else {},
            versions=dict(extra.get("versions") or {}), metrics=dict(extra.get("metrics") or {}),
            created_at=str(extra.get("created_at", "")),
            details={"source_package": self.source_package, "source_version": self.source_version, "dim": self.dim})

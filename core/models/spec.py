"""ModelSpec: how one named packaged model is built into the cache.

Kept apart from the registry so spec modules (encoders, decoders) and the registry that collects
them do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.models.manifest import ModelManifest


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "encoder" or "decoder"
    source_package: str
    license: str
    languages: tuple[str, ...]
    description: str
    # Builds the model into an empty directory and returns its manifest (already saved there).
    build: Callable[[Path], ModelManifest]
    default: bool = False

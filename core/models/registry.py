"""The named models repliq knows how to build, and lookup of names or local paths.

A model is referred to by a cache name ("e5-small") or by a path to a local directory. Names are
built once by ``repliq models prepare`` into the model cache; paths are used as they are.
"""

from __future__ import annotations

from pathlib import Path

from core.models.manifest import MANIFEST_NAME
from core.models.spec import ModelSpec


class ModelNotPrepared(FileNotFoundError):
    """Raised when a named model is not in the cache; the message says what to run."""


def all_specs() -> dict[str, ModelSpec]:
    from core.models.decoders import DECODER_SPECS
    from core.models.encoders import ENCODER_SPECS

    return {spec.name: spec for spec in (*ENCODER_SPECS, *DECODER_SPECS)}


def resolve(name_or_path: str | Path, models_dir: Path) -> Path:
    """Directory of a named cached model or of a local model path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    specs = all_specs()
    name = str(name_or_path)
    trained = Path(models_dir) / name
    if name not in specs and (trained / MANIFEST_NAME).exists():
        return trained  # a model repliq trained into the cache, e.g. `repliq train retriever --name e5-small-ft`
    if name not in specs:
        raise ModelNotPrepared(
            f"unknown model {name!r}: use one of {', '.join(sorted(specs))}, a model trained into {models_dir} "
            "(`repliq train retriever`), or a path to a local model directory"
        )
    model_dir = Path(models_dir) / name
    if not (model_dir / MANIFEST_NAME).exists():
        raise ModelNotPrepared(
            f"model {name!r} is not prepared in {models_dir}; run `repliq models prepare {name}`"
        )
    return model_dir

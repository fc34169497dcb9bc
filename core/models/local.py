"""Facts about a model directory on disk: its weight files, their digest, its embedding size.

Separate from the cache so that model specs can use these without importing the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.atomic import sha256_file, sha256_json
from core.models.manifest import MANIFEST_NAME, ModelManifest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


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

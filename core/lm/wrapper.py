"""One decoder-LM wrapper for scoring and generation, whatever the model came from.

Three ways in: a packaged model from the cache (``from_cache``), any local Hugging Face causal-LM
directory (``from_dir``), or ``NullLM`` for retrieval-only deployments. Callers ask ``available``
instead of checking for ``None``, so the same pipeline code runs with or without a language model.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.models.local import weights_digest
from core.models.manifest import MANIFEST_NAME, ModelManifest

DTYPES = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "cuda")


class LMUnavailable(RuntimeError):
    """Raised when work that needs a language model is asked of ``NullLM``."""


@dataclass(frozen=True)
class LMOptions:
    # fp32 unless asked: exact scores are the safe library default. "auto" (the serving config's
    # default) is bf16 where the hardware computes it natively, else fp32 (see ``resolve_dtype``).
    # "int8" is dynamic quantization of the Linear layers (CPU only). Fast, but on gemma-3-270m it
    # multiplies perplexity by ~2.8 (activation outliers; see bench/bench_lm.py).
    dtype: str = "fp32"
    # torch intra-op threads. This is process-wide in torch: None leaves the current setting alone.
    threads: int | None = None
    # "auto" picks cuda when present, else cpu.
    device: str = "auto"

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown LM dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown LM device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"LM threads must be at least 1, got {self.threads}")


def _pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("LM device 'cuda' was requested but torch sees no GPU; use device 'cpu' or 'auto'")
    return requested


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run in hardware here: on a CPU without AVX512-BF16 or AMX, torch emulates
    them and bf16 scoring measured ~5x *slower* than fp32 (AMD EPYC, AVX2 only), while on a CPU with
    them it was ~2x faster (docs/benchmarks.md)."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def resolve_dtype(requested: str, device: str) -> str:
    """The precision actually loaded; ``auto`` becomes bf16 or fp32 by :func:`native_bf16`."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device) else "fp32"


class DecoderLM:
    """A loaded causal LM plus the token conventions scoring and generation rely on."""

    available = True

    def __init__(self, model: Any, tokenizer: Any, model_short_id: str, options: LMOptions,
                 languages: tuple[str, ...] = ()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.languages = languages
        self._model_short_id = model_short_id
        self.device = str(next(model.parameters()).device) if options.dtype != "int8" else "cpu"
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError(
                "the tokenizer has neither a BOS nor an EOS token, so the first word of a text cannot be "
                "scored; set bos_token in tokenizer_config.json"
            )
        self.bos_id: int = int(start)
        self.pad_id: int = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start)
        self.eos_ids: frozenset[int] = self._collect_eos(model, tokenizer)
        self.vocab_size: int = int(model.config.get_text_config().vocab_size)
        self.accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.source: Path | None = None  # the directory ``from_dir`` loaded, for ``spec``

    @staticmethod
    def _collect_eos(model: Any, tokenizer: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list | tuple):
                ids.update(int(i) for i in source)
        return frozenset(ids)

    @property
    def lm_id(self) -> str:
        """Identity stored next to every score: which weights, at which precision."""
        return f"{self._model_short_id}:{self.options.dtype}"

    @classmethod
    def from_dir(cls, path: str | Path, options: LMOptions | None = None) -> DecoderLM:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        options = options or LMOptions()
        options.validate()
        path = Path(path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json); give a directory written "
                "by save_pretrained or a packaged model name such as 'gemma-3-270m'"
            )
        device = _pick_device(options.device)
        # Resolved before anything is keyed on it: ``lm_id`` (and so every stored score) names the
        # precision really used, never "auto".
        options = replace(options, dtype=resolve_dtype(options.dtype, device))
        if options.dtype == "int8" and device != "cpu":
            raise ValueError("int8 dynamic quantization runs on CPU only; use dtype 'bf16' on a GPU")
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        short_id, languages = _identity(path)
        load_dtype = torch.bfloat16 if options.dtype == "bf16" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype)
        model.eval()
        if options.dtype == "int8":
            with warnings.catch_warnings():  # torch announces the eager API's future move to torchao
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            model.to(device)
        lm = cls(model, tokenizer, short_id, options, languages)
        lm.source = path
        return lm

    def spec(self) -> LMSpec:
        """How another process (a Ray actor) loads this same LM; its thread count is left to that process."""
        if self.source is None:
            raise ValueError("this LM was not loaded from a directory, so no other process can load it again")
        return LMSpec(str(self.source), replace(self.options, threads=None), self.lm_id)

    @classmethod
    def from_cache(cls, name: str, models_dir: Path, options: LMOptions | None = None) -> DecoderLM:
        from core.models.registry import resolve

        return cls.from_dir(resolve(name, models_dir), options)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens: callers place BOS themselves so every path agrees."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _identity(path: Path) -> tuple[str, tuple[str, ...]]:
    if (path / MANIFEST_NAME).exists():
        manifest = ModelManifest.load(path)
        return manifest.short_id, tuple(manifest.languages)
    # A directory without a manifest is named by its content, so its scores are never mixed up.
    return f"{path.resolve().name}@{weights_digest(path)[:12]}", ()


@dataclass(frozen=True)
class LMSpec:
    """An LM as another process loads it (a Ray actor), with the ``lm_id`` it must turn out to have."""

    path: str
    options: LMOptions
    lm_id: str

    @classmethod
    def of(cls, name: str, models_dir: Path, options: LMOptions) -> LMSpec:
        """The spec, and so the ``lm_id`` a load would have, without loading the weights."""
        from core.models.registry import resolve

        options.validate()
        path = Path(resolve(name, models_dir)).expanduser()
        options = replace(options, dtype=resolve_dtype(options.dtype, _pick_device(options.device)), threads=None)
        return cls(str(path), options, f"{_identity(path)[0]}:{options.dtype}")

    def load(self) -> DecoderLM:
        lm = DecoderLM.from_dir(self.path, self.options)
        if lm.lm_id != self.lm_id:
            raise RuntimeError(f"{self.path} loads as {lm.lm_id}, not {self.lm_id}: the model differs on this "
                               "worker; give every Ray node the same model cache (`repliq models prepare`)")
        return lm


class NullLM:
    """Stands in when no language model is configured (retrieval-only mode).

    Scoring functions given a ``NullLM`` return NaN scores with ``n_tokens == 0``: LightGBM treats
    NaN as a missing feature, so a blender keeps working without an LM. Jobs whose only product is
    LM output (bank scoring, generation) raise ``LMUnavailable`` instead.
    """

    available = False
    lm_id = "none"
    languages: tuple[str, ...] = ()

    def require(self, what: str) -> None:
        raise LMUnavailable(
            f"{what} needs a decoder language model, but none is configured (retrieval-only mode); "
            "prepare one with `repliq models prepare gemma-3-270m` and enable it in the config"
        )


AnyLM = DecoderLM | NullLM

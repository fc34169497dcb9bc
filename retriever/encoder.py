"""The bi-encoder: one sentence-transformers model plus the manifest that says how to use it.

Prefixes (e5's ``query: `` / ``passage: ``) live in the model's manifest and are applied only here,
so no caller can forget them or apply them twice, and an index built with one prefix convention can
never be silently queried with another (the manifest's identity is recorded in the index).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.models.manifest import MANIFEST_NAME, ModelManifest
from retriever.encoder_base import ManifestEncoder

if TYPE_CHECKING:
    from core.config import Settings
    from retriever.adapter import AdaptedEncoder
    from retriever.onnx_encoder import OnnxEncoder

Progress = Callable[[int, int], None]
# Texts per model call when reporting progress: big enough to keep length-sorted batching useful.
_CHUNK_BATCHES = 16


def pick_device(device: str) -> str:
    """``auto`` means CUDA when torch sees a GPU, else CPU (the GPU path is untested on these machines)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_manifest(model_dir: Path) -> ModelManifest:
    """The model's manifest; directories without one are described on the fly by the model cache."""
    if (Path(model_dir) / MANIFEST_NAME).exists():
        return ModelManifest.load(model_dir)
    from core.models.cache import describe_local_dir

    return describe_local_dir(Path(model_dir))


class Encoder(ManifestEncoder):
    """Encodes queries and passages into float32, L2-normalized rows.

    ``device="auto"`` picks CUDA when available, else CPU; only CPU is tested here. Calls are
    serialized by a lock because a fast tokenizer must not be used from two threads at once;
    concurrent servers should put a :class:`retriever.microbatch.MicroBatcher` in front instead.
    """

    def __init__(self, model_dir: Path | str, device: str = "auto", batch_size: int = 64,
                 num_threads: int | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"encoder batch_size must be positive, got {batch_size}")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"encoder directory {self.model_dir} does not exist; "
                                    "run `repliq models prepare` or fix encoder.name in the config")
        self._manifest = read_manifest(self.model_dir)
        if self._manifest.kind != "encoder":
            raise ValueError(f"{self.model_dir} holds a {self._manifest.kind!r} model, not an encoder; "
                             "point encoder.name at a sentence-transformers model")
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
        self._dim = int(self._model.get_embedding_dimension())
        if self._manifest.dim and self._manifest.dim != self._dim:
            raise ValueError(f"{self.model_dir}: manifest says dim {self._manifest.dim} but the model "
                             f"produces {self._dim}; rebuild it with `repliq models prepare`")
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, settings: Settings) -> Encoder | OnnxEncoder | AdaptedEncoder:
        """The configured encoder on the configured backend (see :func:`retriever.onnx_encoder.choose_backend`).

        Serving, index builds and jobs all come through here, so ``[encoder] backend`` reaches every one
        of them; training loads the torch model itself.
        """
        from core.models.registry import resolve
        from retriever.onnx_encoder import OnnxEncoder, choose_backend

        config = settings.encoder
        model_dir = resolve(config.name, settings.models_dir)
        threads = getattr(config, "num_threads", 0) or 0
        device = pick_device(config.device) if getattr(config, "backend", "auto") == "auto" else config.device
        if choose_backend(getattr(config, "backend", "auto"), model_dir, device) == "onnx":
            encoder = OnnxEncoder(model_dir, batch_size=config.batch_size, num_threads=threads)
        else:
            encoder = cls(model_dir, device=config.device, batch_size=config.batch_size, num_threads=threads or None)
        from retriever.adapter import with_configured_adapter

        return with_configured_adapter(encoder, config.adapter, settings.artifacts_dir / "adapter")

    @property
    def backend(self) -> str:
        return "torch"

    def _encode(self, texts: Sequence[str], prefix: str, progress: Progress | None) -> np.ndarray:
        prefixed = self.prefixed(texts, prefix)
        total = len(prefixed)
        out = np.empty((total, self._dim), dtype=np.float32)
        chunk = self.batch_size * _CHUNK_BATCHES if progress else max(total, 1)
        for start in range(0, total, chunk):
            part = prefixed[start:start + chunk]
            with self._lock:
                # prompt="" stops a model-config default prompt from being added on top of ours.
                rows = self._model.encode(part, prompt="", batch_size=self.batch_size, convert_to_numpy=True,
                                          show_progress_bar=False, normalize_embeddings=False)
            out[start:start + len(part)] = rows
            if progress:
                progress(start + len(part), total)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

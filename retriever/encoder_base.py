"""What every encoder backend shares: its model directory's manifest, the vector size, and its identity.

The identity is the *source model's* (``model_id@weights-hash``) for every backend, so an index built
with torch is read with the ONNX export of the same weights (their fidelity gate is what allows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.models.manifest import ModelManifest

Progress = Callable[[int, int], None]


class ManifestEncoder:
    """Facts read from ``self._manifest`` and ``self._dim``, which each backend sets when it loads."""

    _manifest: ModelManifest
    _dim: int

    @property
    def manifest(self) -> ModelManifest:
        return self._manifest

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        return self._manifest.short_id

    def encode_queries(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        return self._encode(texts, self._manifest.query_prefix, progress)

    def encode_passages(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        return self._encode(texts, self._manifest.passage_prefix, progress)

    def _encode(self, texts: Sequence[str], prefix: str, progress: Progress | None) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def prefixed(texts: Sequence[str], prefix: str) -> list[str]:
        """The texts with the model's prefix, after refusing what is not a list of strings (a bare string would
        otherwise be encoded letter by letter)."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        return [prefix + text for text in texts]

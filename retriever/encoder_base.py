"""What every encoder backend shares: its model directory's manifest, the vector size, and its identity.

The identity is the *source model's* (``model_id@weights-hash``) for every backend, so an index built
with torch is read with the ONNX export of the same weights (their fidelity gate is what allows it).
"""

from __future__ import annotations

from core.models.manifest import ModelManifest


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

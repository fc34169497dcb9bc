"""Packaged sentence encoders (filled in by the model-cache work)."""

from __future__ import annotations

from core.models.registry import ModelSpec

ENCODER_SPECS: list[ModelSpec] = []

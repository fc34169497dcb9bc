"""Packaged decoder LMs (filled in by the language-model work)."""

from __future__ import annotations

from core.models.registry import ModelSpec

DECODER_SPECS: list[ModelSpec] = []

"""Settings for a test workspace: the real model cache, a given home, an ephemeral server port."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.config import Settings, load_settings


def make_settings(home: Path, models_dir: Path, generation: str = "off", **server: object) -> Settings:
    """Generation is off unless asked for: loading the LM costs seconds most tests do not need."""
    settings = load_settings(environ={"REPLIQ_HOME": str(home), "REPLIQ_MODELS": str(models_dir)})
    return replace(settings, server=replace(settings.server, port=0, **server),
                   generation=replace(settings.generation, mode=generation))

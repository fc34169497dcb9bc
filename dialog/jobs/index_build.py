"""`repliq index build`: bring the bank index up to date (incremental unless told to rebuild)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from core.config import Settings
from core.job_configs import IndexBuildConfig
from dialog.jobs.common import open_bank
from retriever.bank_index import UpdateReport, build_index, update_index
from retriever.encoder import Encoder

Progress = Callable[[int, int], None]


def index_build(settings: Settings, config: IndexBuildConfig, progress: Progress | None = None) -> UpdateReport:
    """Build or update the index; returns what changed (the CLI prints a summary, or JSON)."""
    if config.encoder:
        settings = replace(settings, encoder=replace(settings.encoder, name=config.encoder))
    with open_bank(settings) as bank:
        encoder = Encoder.from_config(settings)
        if config.full:
            started = time.monotonic()
            manifest = build_index(bank, encoder, settings, progress=progress)
            return UpdateReport(manifest.total, 0, 0, 0, True, "--full", manifest, time.monotonic() - started)
        return update_index(bank, encoder, settings, progress=progress)

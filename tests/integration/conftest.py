"""A real workspace on the default encoder (e5-small) and the hand-written starter bank.

Built once per test session: the starter bank (706 phrases) encodes in seconds, while the full
default bank is exercised by `scripts/demo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import Settings

from workspace import make_settings


@pytest.fixture(scope="session")
def real_home(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.bank.default import starter_rows
    from core.bank.store import PhraseBank
    from core.models.cache import prepare
    from retriever.bank_index import build_index
    from retriever.encoder import Encoder

    prepare(["e5-small", "gemma-3-270m"], models_dir)
    home = tmp_path_factory.mktemp("real-home")
    settings = make_settings(home, models_dir)
    with PhraseBank(settings.bank_path) as bank:
        report = bank.import_phrases(starter_rows(), who="tests")
        assert report.ok, report.errors
        build_index(bank, Encoder.from_config(settings), settings)
    return home


@pytest.fixture(scope="session")
def real_server(real_home: Path, models_dir: Path) -> Iterator[tuple[Settings, int]]:
    from dialog.serving.assembly import build_pipeline
    from dialog.serving.server import start_server

    settings = make_settings(real_home, models_dir, generation="on-request")
    # A generous generation budget: CI machines are slow and shared; the deadline logic is what is tested.
    settings = replace(settings, generation=replace(settings.generation, budget_s=20.0))
    assembled = build_pipeline(settings)
    running = start_server(assembled.pipeline, settings.server, settings.retrieval.top_k)
    yield settings, running.port
    running.stop(grace=2.0)
    assembled.close()

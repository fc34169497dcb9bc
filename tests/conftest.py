"""Shared fixtures.

Real models live in one machine-wide cache (``REPLIQ_MODELS`` or the user cache directory) so the
slow conversion happens once per machine, not once per test run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from suite_env import require_shared_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from core.config import default_models_dir

    path = default_models_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace (REPLIQ_HOME) per test."""
    workspace = tmp_path / "home"
    workspace.mkdir()
    monkeypatch.setenv("REPLIQ_HOME", str(workspace))
    return workspace


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data(SHARED_DATA)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine run several times faster on one thread (no spin-waiting
    for a busy second core); the setting is process-wide, so it is restored for the other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures.

Real models live in one machine-wide cache (``REPLIQ_MODELS`` or the user cache directory) so the
slow conversion happens once per machine, not once per test run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

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


def running_in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """CI services set ``CI`` (GitHub Actions, GitLab and others use ``true``)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def require_shared_data(path: Path, environ: Mapping[str, str] | None = None) -> Path:
    """``path`` when it is there; otherwise a skip on a developer machine and a failure in CI, which always
    has the data beside the clone (a skip there would hide that the tests needing it never ran)."""
    if not path.is_dir():
        message = f"development data not found at {path} (expected beside the repository as ../shared/data)"
        if running_in_ci(environ):
            pytest.fail(message + "; CI must provide it", pytrace=False)
        pytest.skip(message)
    return path


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

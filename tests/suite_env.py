"""Where the suite runs: CI or a developer machine, and the shared development data it needs.

Kept out of conftest.py because the unit and integration folders each have a conftest module, and a test
importing "conftest" would get whichever was imported last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest


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

"""Guards on the test suite itself: a test that cannot run must say so loudly where it is expected to run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from suite_env import require_shared_data, running_in_ci

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


@pytest.mark.parametrize(("value", "ci"), [("true", True), ("1", True), ("TRUE", True), ("", False),
                                           ("false", False), ("0", False)])
def test_ci_is_recognised_from_the_environment(value: str, ci: bool) -> None:
    assert running_in_ci({"CI": value}) is ci
    assert running_in_ci({}) is False


def test_missing_development_data_fails_in_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    missing = tmp_path / "shared" / "data"
    with pytest.raises(pytest.fail.Exception, match=r"not found at .*data.*CI must provide it"):
        require_shared_data(missing, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="not found at"):
        require_shared_data(missing, {})
    missing.mkdir(parents=True)
    assert require_shared_data(missing, {"CI": "true"}) == missing


def test_every_integration_module_is_marked_real() -> None:
    """`-m "not real"` must leave out every test that loads the real models."""
    modules = sorted(INTEGRATION.glob("test_*_real.py"))
    assert modules
    unmarked = [m.name for m in modules
                if not re.search(r"^pytestmark = (\[.*)?pytest\.mark\.real", m.read_text(encoding="utf-8"), re.M)]
    assert unmarked == []

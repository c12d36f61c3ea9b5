"""Shared test setup: an isolated Jupyter data/runtime dir, and the integration mark."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: their full example counts in `make test` (the default profile, 100 a
# test unless it says otherwise); a tenth of them in `make unit` (--hypothesis-profile
# unit), the tier that runs in seconds on every change. tests.helpers.examples scales a
# test's own count by the profile's.
settings.register_profile("unit", max_examples=10, deadline=None)

# Kernelspecs and connection files made by tests go to a throwaway Jupyter
# home, never the user's; set before jupyter_core computes its paths.
_JUPYTER_HOME = Path(tempfile.mkdtemp(prefix="nbcontainer-tests-jupyter-"))
os.environ["JUPYTER_DATA_DIR"] = str(_JUPYTER_HOME / "data")
os.environ["JUPYTER_RUNTIME_DIR"] = str(_JUPYTER_HOME / "runtime")
os.environ["JUPYTER_CONFIG_DIR"] = str(_JUPYTER_HOME / "config")
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath) or "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    shutil.rmtree(_JUPYTER_HOME, ignore_errors=True)

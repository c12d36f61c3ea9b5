"""Unit fixtures: a ledger of the test's own and the scripted backend behind the seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from nbcontainer_kernel.backends import registry
from nbcontainer_kernel.remote.ledger import Ledger
from tests.fakes import ScriptedBackend

_B = TypeVar("_B", bound=ScriptedBackend)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger" / "runs.db")


def registered(name: str, fake: _B) -> Iterator[_B]:
    """`fake` as the backend `name` while a test runs."""
    registry.register(name, fake)
    yield fake
    registry.unregister(name)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    yield from registered("scripted", ScriptedBackend())

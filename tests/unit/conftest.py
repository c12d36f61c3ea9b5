"""Unit fixtures: a ledger of the test's own and the scripted backend behind the seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from nbcontainer_kernel.backends import registry
from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.kernel import pool
from nbcontainer_kernel.kernel import provisioner as provisioner_module
from nbcontainer_kernel.remote.ledger import Ledger
from tests.fakes import FAKE_KERNEL_IMAGE, FakeDocker, ScriptedBackend

_B = TypeVar("_B", bound=ScriptedBackend)


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """A ledger of the test's own, and a working directory of its own: a run snapshots
    the code under its working directory, which is otherwise this whole repository."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return Ledger(tmp_path / "ledger" / "runs.db")


def registered(name: str, fake: _B) -> Iterator[_B]:
    """`fake` as the backend `name` while a test runs."""
    registry.register(name, fake)
    yield fake
    registry.unregister(name)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    yield from registered("scripted", ScriptedBackend())


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocker]:
    """A fake Docker daemon behind the provisioner's engine, holding one kernel image
    (FAKE_KERNEL_IMAGE). Warm pools made on it are closed afterwards."""
    fake = FakeDocker(
        images={
            FAKE_KERNEL_IMAGE: {
                labels.ROLE: labels.ROLE_KERNEL_IMAGE,
                labels.IPYKERNEL: "7.0.0",
                labels.PYTHON: "3.11.7",
                labels.CURVE: "false",
            }
        }
    )
    engine = Engine(fake)
    monkeypatch.setattr(provisioner_module, "get_engine", lambda: engine)
    monkeypatch.setattr(provisioner_module, "_swept", True)  # the orphan sweep has its own tests
    yield fake
    pool.close_all()

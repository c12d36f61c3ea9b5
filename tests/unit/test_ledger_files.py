"""Where the ledger writes and what modes it sets: only its own (issue 24).

The ledger holds every run's signing key and results: its file is 0600 and directories
it makes are 0700. A folder it finds (a project folder, /tmp) keeps its mode whatever
way its path was given, and results then go into a private folder of the ledger's own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nbcontainer_kernel.remote.ledger import Ledger


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# How a user might name a ledger inside an existing project folder.
WAYS: list[tuple[str, Callable[[Path], str]]] = [
    ("absolute", lambda project: str(project / "runs.db")),
    ("relative", lambda project: "runs.db"),
    ("dot segments", lambda project: str(project / "sub" / ".." / "runs.db")),
    ("through a symlink", lambda project: str(project.parent / "alias" / "runs.db")),
    ("trailing dot", lambda project: str(project / "." / "runs.db")),
]


@pytest.mark.parametrize("mode", [0o755, 0o775, 0o1777])
@pytest.mark.parametrize(("way", "spell"), WAYS, ids=[w for w, _ in WAYS])
def test_an_existing_folder_keeps_its_mode_and_results_go_into_a_private_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: int,
    way: str,
    spell: Callable[[Path], str],
) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    project.chmod(mode)
    (tmp_path / "alias").symlink_to(project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", spell(project))
    for ledger in (Ledger(spell(project)), Ledger()):  # given, and from the environment
        run = ledger.create("x", "local")
        results = ledger.run_dir(run)
        results.mkdir()
        assert _mode(project) == mode, way
        assert _mode(project / "runs.db") == 0o600
        assert results.parent.resolve() == project / ".nbcontainer" / "runs"
        assert _mode(project / ".nbcontainer") == 0o700
        assert _mode(results.parent) == 0o700


def test_folders_the_ledger_makes_are_private_and_an_old_wide_file_is_narrowed(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "new" / "deeper" / "runs.db"
    ledger = Ledger(path)
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "deeper") == 0o700
    # Its own folder is private: results sit beside the file, as they always have.
    assert ledger.runs_dir == path.parent / "runs"
    wide = tmp_path / "wide.db"
    wide.touch(mode=0o644)
    wide.chmod(0o644)
    Ledger(wide)
    assert _mode(wide) == 0o600


def test_the_ledgers_write_ahead_log_is_as_private_as_its_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ledger = Ledger(tmp_path / "runs.db")
        ledger.create("x", "local")
        for suffix in ("-wal", "-shm"):
            side = tmp_path / f"runs.db{suffix}"
            if side.exists():
                assert _mode(side) == 0o600, suffix
    finally:
        os.umask(old)

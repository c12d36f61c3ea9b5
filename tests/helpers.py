"""Helpers shared by unit and integration tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nbcontainer_kernel.results import RunResult
from nbcontainer_kernel.snapshots import snapshot
from nbcontainer_kernel.trust import KEY_ENV, new_key


def run_runner(tmp_path: Path, ns: dict[str, Any], cell: str, args: list[str] | tuple[str, ...] = (),
               env: dict[str, str] | None = None, hyper: dict[str, Any] | None = None,
               key: str | None = None) -> tuple[subprocess.CompletedProcess[str], RunResult]:
    """Snapshot `ns` and `cell`, then run the in-container runner on the host (its paths moved
    by environment variables), signed with `key` (a new one by default)."""
    snap = snapshot(ns, cell, dest=tmp_path / "snap", cwd=tmp_path, include_dependencies=False)
    ml = tmp_path / "ml"
    if hyper is not None:
        (ml / "input" / "config").mkdir(parents=True)
        (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    key = key or new_key()
    run_env = {**os.environ, "NBCONTAINER_SNAPSHOT_DIR": str(snap.directory), "NBCONTAINER_ML_ROOT": str(ml),
               KEY_ENV: key, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "nbcontainer_kernel.runner.main", *args],
                          env=run_env, capture_output=True, text=True, cwd=tmp_path)
    return proc, RunResult(image="host", exit_code=proc.returncode, output_dir=ml, key=key)

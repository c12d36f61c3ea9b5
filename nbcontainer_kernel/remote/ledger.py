"""The run ledger: every run recorded in SQLite (WAL), so runs can be compared.

One row per run, written at every phase change, so a kernel that dies mid-run
loses nothing: `%remote_attach` finishes the record. Results live under the
run's directory (``<data dir>/runs/<run id>/``) before they are loaded into a
kernel. The ledger's path is ``NBCONTAINER_RUNS_DB`` or the user's data
directory (platformdirs).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import platformdirs

__all__ = ["Ledger", "default_path", "UnknownRun"]

from .. import config
from ..errors import UnknownRun

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    backend TEXT NOT NULL,
    image TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    phases TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    exit_code INTEGER,
    failure TEXT,
    result_dir TEXT,
    result_files TEXT NOT NULL DEFAULT '[]',
    outputs TEXT NOT NULL DEFAULT '[]',
    snapshot_digest TEXT,
    notebook TEXT,
    parent TEXT,
    job TEXT,
    run_key TEXT,
    verified TEXT,
    platform TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent);
CREATE TABLE IF NOT EXISTS metric_points (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    time REAL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS metric_points_run ON metric_points(run_id);
"""
_JSON = {"params", "metrics", "phases", "result_files", "outputs", "job", "platform"}
# Columns added after the first release: added to older ledgers when they are opened.
_ADDED_COLUMNS = {"run_key": "TEXT", "verified": "TEXT", "platform": "TEXT"}


def private_dir(path: Path) -> Path:
    """Make a directory and the parents it lacks, each 0700 (they hold run keys and
    results). A directory that exists already keeps its mode: it is not the ledger's."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: not ours to change
            continue
        directory.chmod(0o700)  # whatever the umask
    return path


def _is_private(path: Path) -> bool:
    return not path.stat().st_mode & 0o077


def default_path() -> Path:
    configured = config.runs_db()
    if configured is not None:
        return configured
    return Path(platformdirs.user_data_dir("nbcontainer")) / "runs.db"


class Ledger:
    """The ledger. Safe to share between threads; each call is one transaction."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(os.path.abspath(Path(path) if path else default_path()))
        # The ledger holds each run's signing key: only its owner may read it. Directories
        # it makes are 0700; one it finds (a project folder, /tmp) keeps its mode, and the
        # runs' results go into a private folder of the ledger's own inside it.
        private_dir(self.path.parent)
        self._runs_dir = (
            self.path.parent / "runs"
            if _is_private(self.path.parent)
            else self.path.parent / ".nbcontainer" / "runs"
        )
        self._lock = threading.Lock()
        old_umask = os.umask(0o077)
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=30, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old_umask)
        if self.path.stat().st_mode & 0o077:  # a file made before, or by a wider umask
            self.path.chmod(0o600)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for col, typ in _ADDED_COLUMNS.items():
            if col not in have:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")

    @property
    def runs_dir(self) -> Path:
        return self._runs_dir

    def run_dir(self, run_id: str) -> Path:
        """Where a run's outputs are collected (made private to the user)."""
        private_dir(self.runs_dir)
        return self.runs_dir / run_id

    # ----------------------------------------------------------------- write
    def create(
        self,
        name: str,
        backend: str,
        *,
        params: dict[str, Any] | None = None,
        parent: str | None = None,
        notebook: str | None = None,
        status: str = "SNAPSHOT",
    ) -> str:
        """A new run row with its own signing key; its id is NAME-N (N counts runs of that name)."""
        from ..trust import new_key

        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = (
                    self._db.execute(
                        "SELECT MAX(seq) FROM runs WHERE name = ?", (name,)
                    ).fetchone()[0]
                    or 0
                ) + 1
                run_id = f"{name}-{seq}"
                self._db.execute(
                    "INSERT INTO runs (id, name, seq, backend, params, status, parent, notebook, "
                    "created, updated, "
                    "result_dir, run_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        name,
                        seq,
                        backend,
                        json.dumps(params or {}, default=str),
                        status,
                        parent,
                        notebook,
                        now,
                        now,
                        str(self.run_dir(run_id)),
                        new_key(),
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return run_id

    def update(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols, values = [], []
        for k, v in fields.items():
            cols.append(f"{k} = ?")
            values.append(json.dumps(v, default=str) if k in _JSON else v)
        with self._lock:
            cur = self._db.execute(
                f"UPDATE runs SET {', '.join(cols)}, updated = ? WHERE id = ?",
                (*values, time.time(), run_id),
            )
        if cur.rowcount == 0:
            raise UnknownRun(run_id)

    def add_phase(self, run_id: str, phase: str, at: float | None = None) -> None:
        """Append (phase, timestamp) and make it the status, in one statement."""
        with self._lock:
            self._db.execute(
                "UPDATE runs SET phases = json_insert(phases, '$[#]', json_array(?, ?)), status = "
                "?, updated = ? "
                "WHERE id = ?",
                (phase, at or time.time(), phase, time.time(), run_id),
            )

    def set_metric_points(self, run_id: str, records: Iterable[dict[str, Any]]) -> None:
        """Every value a run logged (name, value, step, timestamp), in order; replaces what
        the ledger held for the run."""
        rows = []
        for seq, r in enumerate(records):
            value = r.get("value")
            rows.append(
                (
                    run_id,
                    str(r.get("name")),
                    int(r["step"]) if isinstance(r.get("step"), (int, float)) else None,
                    float(value) if isinstance(value, (int, float)) else None,
                    float(r["timestamp"]) if isinstance(r.get("timestamp"), (int, float)) else None,
                    seq,
                )
            )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM metric_points WHERE run_id = ?", (run_id,))
                self._db.executemany(
                    "INSERT INTO metric_points (run_id, name, step, value, time, seq) "
                    "VALUES (?,?,?,?,?,?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def metric_points(
        self, run_ids: Iterable[str]
    ) -> list[tuple[str, str, int | None, float | None, float | None]]:
        """(run id, name, step, value, time) of the runs, each run's in logged order."""
        ids = list(run_ids)
        if not ids:
            return []
        with self._lock:
            return list(
                self._db.execute(
                    "SELECT run_id, name, step, value, time FROM metric_points "
                    f"WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY run_id, seq",
                    ids,
                )
            )

    # ------------------------------------------------------------------ read
    def get(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        if row is None:
            raise UnknownRun(run_id)
        return self._decode(dict(zip(names, row, strict=True)))

    def find(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        parent: str | None = None,
        ids: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        for col, val in (("name", name), ("status", status), ("parent", parent)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val.upper() if col == "status" else val)
        if ids is not None:
            ids = list(ids)
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        with self._lock:
            cur = self._db.execute(sql + " ORDER BY created, seq", args)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [self._decode(dict(zip(names, r, strict=True))) for r in rows]

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        for k in _JSON:
            if row.get(k) is not None:
                row[k] = json.loads(row[k])
        return row

    @staticmethod
    def timings(row: dict[str, Any]) -> dict[str, float]:
        """Seconds spent in each phase, from the recorded phase timestamps."""
        out: dict[str, float] = {}
        phases = row.get("phases") or []
        for (name, t0), (_next, t1) in zip(phases, phases[1:], strict=False):
            out[name.lower()] = out.get(name.lower(), 0.0) + (t1 - t0)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

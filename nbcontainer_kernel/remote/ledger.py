"""The run ledger: every run recorded in SQLite (WAL), so runs can be compared.

One row per run, written at every phase change, so a kernel that dies mid-run
loses nothing: `%remote_attach` finishes the record. Results live under the
run's directory (``<data dir>/runs/<run id>/``) before they are loaded into a
kernel. The ledger's path is ``NBCONTAINER_RUNS_DB`` or the user's data
directory (platformdirs).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

__all__ = ["Ledger", "default_path", "UnknownRun"]

from .. import config
from ..runtime.errors import LedgerError, UnknownRun

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
    verdict TEXT,
    timed_out INTEGER NOT NULL DEFAULT 0,
    platform TEXT,
    kind TEXT NOT NULL DEFAULT 'cell',
    recorded TEXT NOT NULL DEFAULT '{}',
    schedule TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent);
CREATE INDEX IF NOT EXISTS runs_newest ON runs(created DESC, id DESC);
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
_JSON = {
    "params",
    "metrics",
    "phases",
    "result_files",
    "outputs",
    "job",
    "platform",
    "recorded",
}
#: What a run ran: a cell (%%remote_run) or a notebook (nbcontainer run, a schedule).
KINDS = ("cell", "notebook")
# Columns added after the first release: added to older ledgers when they are opened.
#: `verified` holds the verdict's words (which file was refused, and why); `verdict` its
#: kind (runtime.trust.Verdict) and `timed_out` whether --timeout stopped the run.
_ADDED_COLUMNS = {
    "run_key": "TEXT",
    "verified": "TEXT",
    "platform": "TEXT",
    "verdict": "TEXT",
    "timed_out": "INTEGER NOT NULL DEFAULT 0",
    # 5: notebook runs beside cell runs, what they recorded, the schedule that started one.
    "kind": "TEXT NOT NULL DEFAULT 'cell'",
    "recorded": "TEXT NOT NULL DEFAULT '{}'",
    "schedule": "TEXT",
}

#: Runs recorded before the verdict and the timeout had columns: both read from the words
#: those runs recorded (the only place they were then).
_FROM_VERSION_3 = (
    "UPDATE runs SET timed_out = 1 WHERE failure LIKE 'the run timed out after %'",
    "UPDATE runs SET verdict = CASE WHEN verified = 'signed' THEN 'signed' "
    "WHEN verified LIKE 'refused:%' THEN 'refused' "
    "WHEN verified LIKE 'not checked%' THEN 'not checked' END WHERE verified IS NOT NULL",
)

#: Seconds SQLite waits for another process's write to end, per statement.
BUSY_TIMEOUT = 30.0
#: Seconds a busy step is tried again (with backoff) before it fails.
RETRY_FOR = 120.0
# 6: the newest-first index the runs page and its API page through.
SCHEMA_VERSION = 6
PENDING_DIR = ".pending-ends"
T = TypeVar("T")
log = logging.getLogger(__name__)
_PHASE_SQL = (
    "UPDATE runs SET phases = json_insert(phases, '$[#]', json_array(?, ?)), status = ?, "
    "updated = ? WHERE id = ?"
)
_POINTS_SQL = (
    "INSERT INTO metric_points (run_id, name, step, value, time, seq) VALUES (?,?,?,?,?,?)"
)
_COLUMN = re.compile(r"^[a-z_]+$")
#: Columns a page of runs may be filtered by (Ledger.page).
_PAGE_FILTERS = ("name", "status", "backend", "kind", "parent", "schedule")


def _update_sql(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    cols, values = [], []
    for k, v in fields.items():
        if not _COLUMN.match(k):
            # A caller's mistake, never a user's: the names come from this package.
            raise LedgerError("", f"record field {k!r}", "it is not a column of the ledger")
        cols.append(f"{k} = ?")
        values.append(json.dumps(v, default=str) if k in _JSON else v)
    return f"UPDATE runs SET {', '.join(cols)}, updated = ? WHERE id = ?", values


def _metric_rows(run_id: str, records: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
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
    return rows


def _apply_end(
    db: sqlite3.Connection,
    run_id: str,
    fields: dict[str, Any],
    rows: list[tuple[Any, ...]] | None,
    end: tuple[Any, ...] | None,
) -> None:
    """A run's end, inside a write transaction: fields, metric points, terminal phase."""
    if fields:
        sql, values = _update_sql(fields)
        db.execute(sql, (*values, time.time(), run_id))
    if rows is not None:
        db.execute("DELETE FROM metric_points WHERE run_id = ?", (run_id,))
        db.executemany(_POINTS_SQL, rows)
    if end:
        db.execute(_PHASE_SQL, (end[0], end[1], end[0], time.time(), run_id))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    """The ledger. Safe to share between threads and processes: each call is one short
    transaction, a write takes the write lock up front (``BEGIN IMMEDIATE``, so no read
    has to become a write and fail busy), a busy database is waited for and retried with
    backoff, and what still fails is a :class:`LedgerError` saying which ledger, what
    happened and what to do."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(os.path.abspath(Path(path) if path else default_path()))
        # The ledger holds each run's signing key: only its owner may read it. Directories
        # it makes are 0700; one it finds (a project folder, /tmp) keeps its mode, and the
        # runs' results go into a private folder of the ledger's own inside it.
        try:
            private_dir(self.path.parent)
        except OSError as exc:
            raise LedgerError(str(self.path), "make its folder", _reason(exc)) from exc
        self._runs_dir = (
            self.path.parent / "runs"
            if _is_private(self.path.parent)
            else self.path.parent / ".nbcontainer" / "runs"
        )
        self._lock = threading.Lock()
        self._db = self._connect()
        self._prepare()
        self._replay_pending()

    # -------------------------------------------------------------- opening
    def _connect(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)  # the file (and its WAL) private from the start
        try:
            db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=BUSY_TIMEOUT, isolation_level=None
            )
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.Error as exc:
            raise LedgerError(str(self.path), "be opened", _reason(exc)) from exc
        finally:
            os.umask(old_umask)
        try:
            if self.path.stat().st_mode & 0o077:  # a file made before, or by a wider umask
                self.path.chmod(0o600)
        except OSError as exc:
            raise LedgerError(str(self.path), "be opened", _reason(exc)) from exc
        return db

    def _prepare(self) -> None:
        """WAL and the schema, as the file's maker sets them once: every later opener only
        reads that they are so (setting the journal mode takes the whole file, which
        another process's write would make fail)."""
        mode = self._retry("be opened", lambda: self._db.execute("PRAGMA journal_mode").fetchone())
        if str(mode[0]).lower() != "wal":
            self._retry(
                "switch to write-ahead logging",
                lambda: self._db.execute("PRAGMA journal_mode=WAL").fetchone(),
            )
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._retry("be opened", lambda: self._db.execute("PRAGMA user_version"))
        if version.fetchone()[0] < SCHEMA_VERSION:
            self._retry("prepare its tables", self._migrate)

    def _migrate(self) -> None:
        """Tables, indexes and added columns, in one exclusive step (again under the lock:
        another process may have done it meanwhile)."""
        db = self._db
        db.execute("BEGIN EXCLUSIVE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
                for col, typ in _ADDED_COLUMNS.items():
                    if col not in have:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {col} {typ}")
                if "verdict" not in have:
                    for statement in _FROM_VERSION_3:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------- transactions
    def _retry(self, doing: str, step: Callable[[], T]) -> T:
        """`step`, again (with jittered backoff) while the database is busy or locked, up to
        RETRY_FOR seconds; any other SQLite error, or still busy then, is a LedgerError."""
        deadline = time.monotonic() + RETRY_FOR
        attempt = 0
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise LedgerError(str(self.path), doing, _reason(exc)) from exc
            except sqlite3.Error as exc:
                raise LedgerError(str(self.path), doing, _reason(exc)) from exc
            attempt += 1
            time.sleep(min(1.0, 0.02 * 2 ** min(attempt, 6)) * (0.5 + random.random()))

    def _write(self, doing: str, step: Callable[[sqlite3.Connection], T]) -> T:
        """`step` in one write transaction that takes the write lock up front."""

        def transaction() -> T:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = step(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

        with self._lock:
            return self._retry(doing, transaction)

    def _read(self, doing: str, step: Callable[[sqlite3.Connection], T]) -> T:
        """`step` in one read transaction: one snapshot, however many statements."""

        def transaction() -> T:
            self._db.execute("BEGIN")
            try:
                return step(self._db)
            finally:
                self._db.execute("COMMIT")

        with self._lock:
            return self._retry(doing, transaction)

    # ------------------------------------------------------------- locations
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
        kind: str = "cell",
        schedule: str | None = None,
    ) -> str:
        """A new run row with its own signing key; its id is NAME-N (N counts runs of that
        name). LedgerError when it cannot be recorded: the run is then not started."""
        from ..runtime.trust import new_key

        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
        if kind not in KINDS:
            raise LedgerError("", f"run kind {kind!r}", f"a run is one of {', '.join(KINDS)}")
        key = new_key()
        params_text = json.dumps(params or {}, default=str)

        def insert(db: sqlite3.Connection) -> str:
            now = time.time()
            seq = (
                db.execute("SELECT MAX(seq) FROM runs WHERE name = ?", (name,)).fetchone()[0] or 0
            ) + 1
            run_id = f"{name}-{seq}"
            db.execute(
                "INSERT INTO runs (id, name, seq, backend, params, status, parent, notebook, "
                "created, updated, result_dir, run_key, kind, schedule) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    name,
                    seq,
                    backend,
                    params_text,
                    status,
                    parent,
                    notebook,
                    now,
                    now,
                    str(self.runs_dir / run_id),
                    key,
                    kind,
                    schedule,
                ),
            )
            return run_id

        return self._write(f"record a new run of {name}", insert)

    def update(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        sql, values = _update_sql(fields)

        def apply(db: sqlite3.Connection) -> int:
            return db.execute(sql, (*values, time.time(), run_id)).rowcount

        if self._write(f"record run {run_id}", apply) == 0:
            raise UnknownRun(run_id)

    def add_phase(self, run_id: str, phase: str, at: float | None = None) -> None:
        """Append (phase, timestamp) and make it the status, in one statement."""
        self._write(
            f"record run {run_id}'s phase {phase}",
            lambda db: db.execute(
                _PHASE_SQL, (phase, at or time.time(), phase, time.time(), run_id)
            ),
        )

    def finish(
        self,
        run_id: str,
        fields: dict[str, Any],
        metric_points: Iterable[dict[str, Any]] | None = None,
        end: tuple[str, float] | None = None,
    ) -> None:
        """A run's end in one transaction: its result fields, every metric point it logged,
        and its terminal phase, so a reader sees the run before or after, never between.
        When the ledger cannot take it, the end is kept beside the runs' outputs and
        recorded at the next chance (the next time a ledger opens): LedgerError."""
        rows = _metric_rows(run_id, metric_points) if metric_points is not None else None
        try:
            self._write(
                f"record the end of run {run_id}",
                lambda db: _apply_end(db, run_id, fields, rows, end),
            )
        except LedgerError:
            self._keep_pending(run_id, fields, rows, end)
            raise

    def _keep_pending(
        self,
        run_id: str,
        fields: dict[str, Any],
        rows: list[tuple[Any, ...]] | None,
        end: tuple[str, float] | None,
    ) -> None:
        pending = private_dir(self.runs_dir / PENDING_DIR)
        record = {"run_id": run_id, "fields": fields, "points": rows, "end": end}
        target = pending / f"{run_id}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, target)

    def _replay_pending(self) -> None:
        """Ends that could not be recorded when their runs ended (a full disk, a ledger
        that was locked too long): recorded now, then their files go."""
        pending = self.runs_dir / PENDING_DIR
        if not pending.is_dir():
            return
        for path in sorted(pending.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                run_id = str(record["run_id"])
                points = record.get("points")
                rows = [tuple(p) for p in points] if points is not None else None
                end = tuple(record["end"]) if record.get("end") else None
                fields = dict(record.get("fields") or {})
                self._write(
                    f"record the kept end of run {run_id}",
                    functools.partial(_apply_end, run_id=run_id, fields=fields, rows=rows, end=end),
                )
            except (OSError, ValueError, KeyError, TypeError, LedgerError) as exc:
                log.warning("nbcontainer: a kept run end (%s) is not recorded yet: %s", path, exc)
                continue
            path.unlink(missing_ok=True)

    def set_metric_points(self, run_id: str, records: Iterable[dict[str, Any]]) -> None:
        """Every value a run logged (name, value, step, timestamp), in order; replaces what
        the ledger held for the run. One transaction, however many points."""
        rows = _metric_rows(run_id, records)

        def apply(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM metric_points WHERE run_id = ?", (run_id,))
            db.executemany(_POINTS_SQL, rows)

        self._write(f"record run {run_id}'s metrics", apply)

    def metric_points(
        self, run_ids: Iterable[str]
    ) -> list[tuple[str, str, int | None, float | None, float | None]]:
        """(run id, name, step, value, time) of the runs, each run's in logged order."""
        ids = list(run_ids)
        if not ids:
            return []
        sql = (
            "SELECT run_id, name, step, value, time FROM metric_points "
            f"WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY run_id, seq"
        )
        return self._read("read metric points", lambda db: list(db.execute(sql, ids)))

    # ------------------------------------------------------------------ read
    def get(self, run_id: str) -> dict[str, Any]:
        def read(db: sqlite3.Connection) -> dict[str, Any] | None:
            cur = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
            return None if row is None else dict(zip(names, row, strict=True))

        found = self._read(f"read run {run_id}", read)
        if found is None:
            raise UnknownRun(run_id)
        return self._decode(found)

    def find(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        parent: str | None = None,
        ids: Iterable[str] | None = None,
        kind: str | None = None,
        schedule: str | None = None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """Runs by column values (all given must hold), oldest first; `last` keeps the
        newest K of them."""
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        filters = (
            ("name", name),
            ("status", status),
            ("parent", parent),
            ("kind", kind),
            ("schedule", schedule),
        )
        for col, val in filters:
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val.upper() if col == "status" else val)
        if ids is not None:
            ids = list(ids)
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids

        order = " ORDER BY created, seq"
        if last is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY created DESC, seq DESC LIMIT ?)"
            args.append(max(0, int(last)))

        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = db.execute(sql + order, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        return [self._decode(r) for r in self._read("list runs", read)]

    def page(
        self,
        *,
        filters: dict[str, str] | None = None,
        top_only: bool = False,
        since: float | None = None,
        search: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """One page of runs, newest first, filtered in SQL: `filters` by column value (name,
        status, backend, kind, parent, schedule), `top_only` leaves sweeps' children out,
        `since` keeps runs created then or later, `search` matches the id, name or
        parameters' text, and `after` is the (created, id) of the previous page's last row.
        Reads `limit` rows (+1 to tell whether more follow), never the whole ledger."""
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        for col, val in (filters or {}).items():
            if col not in _PAGE_FILTERS:
                raise LedgerError("", f"filter {col!r}", f"filters are {', '.join(_PAGE_FILTERS)}")
            sql += f" AND {col} = ?"
            args.append(val.upper() if col == "status" else val)
        if top_only:
            sql += " AND parent IS NULL"
        if since is not None:
            sql += " AND created >= ?"
            args.append(since)
        if search:
            like = "%" + re.sub(r"([%_\\])", r"\\\1", search) + "%"
            sql += " AND (id LIKE ? ESCAPE '\\' OR params LIKE ? ESCAPE '\\')"
            args += [like, like]
        if after is not None:
            sql += " AND (created < ? OR (created = ? AND id < ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        args.append(max(0, int(limit)))

        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        return [self._decode(r) for r in self._read("list runs", read)]

    def child_counts(self, parents: Iterable[str]) -> dict[str, dict[str, int]]:
        """Each parent's children counted by status: {parent: {status: count}}."""
        ids = list(parents)
        if not ids:
            return {}
        sql = (
            "SELECT parent, status, COUNT(*) FROM runs "
            f"WHERE parent IN ({','.join('?' * len(ids))}) GROUP BY parent, status"
        )
        out: dict[str, dict[str, int]] = {}
        for parent, status, count in self._read(
            "count children", lambda db: db.execute(sql, ids).fetchall()
        ):
            out.setdefault(parent, {})[status] = count
        return out

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

    @staticmethod
    def duration(row: Mapping[str, Any]) -> float | None:
        """Seconds from a run's first recorded phase to its last (None before a second)."""
        phases = row.get("phases") or []
        return float(phases[-1][1] - phases[0][1]) if len(phases) > 1 else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

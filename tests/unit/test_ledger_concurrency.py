"""Many processes on one ledger (issue 25): opening never fails because another process
uses it, no write is lost, and a reader never sees a run that ended without its results.

Real processes (``multiprocessing`` with spawn, each with its own SQLite connection), on
one file: what several kernels, the CLI and the runs page do. No daemon: the tier stays
fast; the same through real containerized kernels is tests/integration/test_many_kernels.py.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import LedgerError
from tests.helpers import examples, full_tier

# Processes at once (the parent's count: a spawned child reads only RUNS_EACH and STEPS).
WRITERS = 8 if full_tier() else 4
RUNS_EACH = 12
STEPS = 25
_ctx = multiprocessing.get_context("spawn")


def _writer(path: str, who: int, start: Any) -> None:
    """What a kernel's runs do to the ledger: open it (at the same moment as the others),
    create, phase after phase, then the end with its metric points in one step."""
    start.wait()
    ledger = Ledger(path)
    for i in range(RUNS_EACH):
        run = ledger.create(f"w{who}", "local", params={"i": i})
        for phase in ("BUILD", "SUBMITTED", "RUNNING", "COLLECTING"):
            ledger.add_phase(run, phase)
        points = [
            {"name": "loss", "value": 1.0 / (s + 1), "step": s, "timestamp": time.time()}
            for s in range(STEPS)
        ]
        ledger.finish(run, {"exit_code": 0, "metrics": {"loss": points[-1]["value"]}}, points,
                      ("SUCCEEDED", time.time()))  # fmt: skip
    ledger.close()


def _reader(path: str, start: Any, stop: Any, out: Any) -> None:
    """The runs page: read the whole table in one snapshot, again and again; count what
    it sees of a run that ended without its points (it never should)."""
    start.wait()
    ledger = Ledger(path)
    reads = torn = 0
    while not stop.is_set():
        db = sqlite3.connect(path, timeout=30)
        db.execute("BEGIN")
        ended = [r[0] for r in db.execute("SELECT id FROM runs WHERE status = 'SUCCEEDED'")]
        counts = dict(db.execute("SELECT run_id, COUNT(*) FROM metric_points GROUP BY run_id"))
        db.execute("COMMIT")
        db.close()
        torn += sum(1 for r in ended if counts.get(r) != STEPS)
        ledger.find()  # the ledger's own reader, under the same load
        reads += 1
    out.put((reads, torn))


def test_eight_writers_and_a_reader_lose_nothing_and_see_no_half_written_run(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "runs.db")
    start, stop = _ctx.Event(), _ctx.Event()
    out = _ctx.Queue()
    writers = [_ctx.Process(target=_writer, args=(path, w, start)) for w in range(WRITERS)]
    reader = _ctx.Process(target=_reader, args=(path, start, stop, out))
    for p in [*writers, reader]:
        p.start()
    start.set()  # every process opens the (new) ledger at once
    for p in writers:
        p.join(240)
        assert p.exitcode == 0, "a writer failed (see its traceback above)"
    stop.set()
    reads, torn = out.get(timeout=60)
    reader.join(60)
    assert reads > 0 and torn == 0, (reads, torn)
    ledger = Ledger(path)
    rows = ledger.find()
    assert len(rows) == WRITERS * RUNS_EACH
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    points = ledger.metric_points([r["id"] for r in rows])
    assert len(points) == WRITERS * RUNS_EACH * STEPS
    for r in rows:
        assert [p for p, _ in r["phases"]] == [
            "BUILD",
            "SUBMITTED",
            "RUNNING",
            "COLLECTING",
            "SUCCEEDED",
        ]


def _opener(path: str, start: Any) -> None:
    """A cell's way: open the ledger, record a run and its phases, close; again."""
    start.wait()
    for i in range(20):
        ledger = Ledger(path)
        run = ledger.create("o", "local", params={"i": i})
        ledger.add_phase(run, "RUNNING")
        ledger.update(run, exit_code=0)
        ledger.close()


def test_opening_a_new_ledger_from_many_processes_at_once_never_fails(tmp_path: Path) -> None:
    """The first open makes the file, its WAL mode and its tables; the others must wait for
    that, not fail on 'database is locked' (the failure a user saw in one cell of 60)."""
    for attempt in range(3 if full_tier() else 1):  # a race: more tries find it more often
        path = str(tmp_path / f"runs-{attempt}.db")
        start = _ctx.Event()
        procs = [_ctx.Process(target=_opener, args=(path, start)) for _ in range(WRITERS)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == WRITERS * 20


def test_a_ledger_that_cannot_be_written_says_so_and_the_end_is_kept(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs.db")
    run = ledger.create("x", "local")
    holder = sqlite3.connect(tmp_path / "runs.db", timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the file, for too long
    import nbcontainer_kernel.remote.ledger as module

    old = module.RETRY_FOR, module.BUSY_TIMEOUT
    module.RETRY_FOR = 0.5
    ledger._db.execute("PRAGMA busy_timeout = 100")
    try:
        try:
            ledger.finish(run, {"exit_code": 0}, [{"name": "m", "value": 1.0}], ("SUCCEEDED", 1.0))
        except LedgerError as exc:
            assert str(tmp_path / "runs.db") in str(exc) and "run the cell again" in str(exc)
        else:
            raise AssertionError("the write went through a held lock")
    finally:
        module.RETRY_FOR, module.BUSY_TIMEOUT = old
        holder.execute("ROLLBACK")
        holder.close()
    # The end was kept beside the outputs; the next ledger to open records it.
    again = Ledger(tmp_path / "runs.db")
    row = again.get(run)
    assert row["status"] == "SUCCEEDED" and row["exit_code"] == 0
    assert len(again.metric_points([run])) == 1
    assert not list((again.runs_dir / ".pending-ends").glob("*.json"))


def test_a_damaged_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database" * 100)
    try:
        Ledger(path)
    except LedgerError as exc:
        assert "move it aside" in str(exc) and str(path) in str(exc)
    else:
        raise AssertionError("a damaged ledger opened")


def _apply(path: str, who: int, ops: list[tuple[str, int]], start: Any) -> None:
    start.wait()
    ledger = Ledger(path)
    runs: list[str] = []
    for op, n in ops:
        if op == "create" or not runs:
            runs.append(ledger.create(f"p{who}", "local", params={"n": n}))
        elif op == "phase":
            ledger.add_phase(runs[n % len(runs)], f"P{n}")
        elif op == "update":
            ledger.update(runs[n % len(runs)], exit_code=n)
        else:
            run = runs[n % len(runs)]
            ledger.finish(run, {"exit_code": n}, [{"name": "m", "value": float(n)}] * (n % 4),
                          ("SUCCEEDED", float(n)))  # fmt: skip


def _model(ops: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """What each run of one process must hold afterwards, from its own ops alone."""
    runs: list[dict[str, Any]] = []
    for op, n in ops:
        if op == "create" or not runs:
            runs.append({"params": {"n": n}, "phases": [], "exit_code": None, "points": 0})
        elif op == "phase":
            runs[n % len(runs)]["phases"].append(f"P{n}")
        elif op == "update":
            runs[n % len(runs)]["exit_code"] = n
        else:
            run = runs[n % len(runs)]
            run.update(exit_code=n, points=n % 4)
            run["phases"].append("SUCCEEDED")
    return runs


_OPS = st.lists(
    st.tuples(st.sampled_from(["create", "phase", "update", "finish"]), st.integers(0, 20)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=examples(8), deadline=None)
@given(ops=st.lists(_OPS, min_size=3, max_size=3))
def test_interleaved_operations_of_three_processes_equal_each_ones_own(
    tmp_path_factory: Any, ops: list[list[tuple[str, int]]]
) -> None:
    path = str(tmp_path_factory.mktemp("interleaved") / "runs.db")
    start = _ctx.Event()
    procs = [_ctx.Process(target=_apply, args=(path, w, ops[w], start)) for w in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = Ledger(path)
    for w in range(3):
        rows = ledger.find(name=f"p{w}")
        expected = _model(ops[w])
        assert len(rows) == len(expected)
        for row, want in zip(rows, expected, strict=True):
            assert row["params"] == want["params"]
            assert [p for p, _ in row["phases"]] == want["phases"]
            assert row["exit_code"] == want["exit_code"]
            assert len(ledger.metric_points([row["id"]])) == want["points"]

"""The run ledger under many processes: writes per second with 1, 4 and 8 writer
processes on one file, and how long a reader's whole-table read takes while they write,
each as a ratio to one writer (measured in the same run).

A "write" is what a run does to the ledger: its row, four phases, and its end with 25
metric points in one transaction (six transactions in all).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nbcontainer_kernel.remote.ledger import Ledger

_ctx = multiprocessing.get_context("spawn")


def _writer(path: str, who: int, runs: int, start: Any, out: Any) -> None:
    ledger = Ledger(path)
    start.wait()
    t0 = time.perf_counter()
    for i in range(runs):
        run = ledger.create(f"b{who}", "local", params={"i": i})
        for phase in ("BUILD", "SUBMITTED", "RUNNING", "COLLECTING"):
            ledger.add_phase(run, phase)
        points = [{"name": "loss", "value": 1 / (s + 1), "step": s} for s in range(25)]
        ledger.finish(run, {"exit_code": 0}, points, ("SUCCEEDED", time.time()))
    out.put(time.perf_counter() - t0)


def _reader(path: str, start: Any, stop: Any, out: Any) -> None:
    from nbcontainer_kernel.remote.tables import runs_frame

    ledger = Ledger(path)
    start.wait()
    took = []
    while not stop.is_set():
        t0 = time.perf_counter()
        runs_frame(ledger)
        took.append(time.perf_counter() - t0)
        time.sleep(0.02)
    out.put(took)


def measure(writers: int, runs: int, seed_runs: int) -> tuple[float, float]:
    """(runs recorded per second by all writers, the reader's median read in ms)."""
    with tempfile.TemporaryDirectory(prefix="nbcontainer-bench-ledger-") as tmp:
        path = str(Path(tmp) / "runs.db")
        seed = Ledger(path)  # a table of some size for the reader
        for i in range(seed_runs):
            seed.finish(seed.create("seed", "local"), {"exit_code": 0}, None, ("SUCCEEDED", i))
        start, stop = _ctx.Event(), _ctx.Event()
        out, read_out = _ctx.Queue(), _ctx.Queue()
        procs = [
            _ctx.Process(target=_writer, args=(path, w, runs, start, out)) for w in range(writers)
        ]
        reader = _ctx.Process(target=_reader, args=(path, start, stop, read_out))
        for p in [*procs, reader]:
            p.start()
        time.sleep(0.5)  # every process has opened the ledger
        t0 = time.perf_counter()
        start.set()
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        stop.set()
        reads = read_out.get()
        reader.join()
        return writers * runs / wall, statistics.median(reads) * 1000 if reads else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=60, help="runs each writer records")
    p.add_argument("--seed", type=int, default=500, help="runs already in the ledger")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    results: dict[int, list[tuple[float, float]]] = {}
    for r in range(args.repeat):
        for writers in (1, 4, 8):
            results.setdefault(writers, []).append(measure(writers, args.runs, args.seed))
            print(f"  round {r + 1}/{args.repeat}: {writers} writer(s) done", file=sys.stderr)
    rate = {w: statistics.median(x[0] for x in v) for w, v in results.items()}
    read = {w: statistics.median(x[1] for x in v) for w, v in results.items()}
    print(f"run ledger, {args.runs} runs per writer, {args.seed} runs in the table; medians:")
    for w in (1, 4, 8):
        print(
            f"  {w} writer(s): {rate[w]:7.1f} runs/s ({rate[w] / rate[1]:.2f}x one writer's), "
            f"a reader's whole-table read {read[w]:6.1f} ms ({read[w] / read[1]:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

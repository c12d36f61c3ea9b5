"""End-to-end `%%remote_run --local` for a trivial cell with ~10 MB of state, vs the
same cell run in-process, in one run: median of --runs, broken down by phase (from
the run ledger's phase timestamps)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CELL = "total = float(state.sum())\nscaled = state[:10] * factor"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-"))
    os.environ["NBCONTAINER_BASE_IMAGE"] = args.base
    os.chdir(tmp)
    from _shell import bench_shell

    ip = bench_shell(tmp)
    ip.run_cell(
        "import numpy as np\nstate = np.random.default_rng(0).standard_normal(10 * 1024 * 1024 // "
        "8)\n"
        "factor = 2.0"
    )

    from nbcontainer_kernel.engine import Engine
    from nbcontainer_kernel.remote.ledger import Ledger

    engine = Engine.connect()
    ledger = Ledger(tmp / "runs.db")
    local = []
    for _ in range(args.runs):
        t = time.perf_counter()
        ip.run_cell(CELL)
        local.append(time.perf_counter() - t)

    devnull = open(os.devnull, "w")
    remote, phases = [], []
    for i in range(args.runs + 1):  # the first builds or finds the dependency layer: not counted
        saved, sys.stdout = sys.stdout, devnull
        try:
            t = time.perf_counter()
            res = ip.run_cell(f"%%remote_run --local --name bench\n{CELL}")
            elapsed = time.perf_counter() - t
        finally:
            sys.stdout = saved
        assert res.error_in_exec is None, res.error_in_exec
        row = ledger.get(f"bench-{i + 1}")
        engine.remove_image(row["image"], force=True)
        if i == 0:
            continue
        remote.append(elapsed)
        phases.append(Ledger.timings(row))
        print(f"  run {i}/{args.runs}: {elapsed:.2f} s", file=sys.stderr, flush=True)

    med_remote, med_local = statistics.median(remote), statistics.median(local)
    print(f"%%remote_run --local, trivial cell, 10 MB of state; median of {args.runs}:")
    for phase in phases[0]:
        print(
            f"  {phase:>10}: {statistics.median(p.get(phase, 0.0) for p in phases) * 1000:8.0f} ms"
        )
    print(
        f"  {'end to end':>10}: {med_remote * 1000:8.0f} ms  (min {min(remote) * 1000:.0f}, max "
        f"{max(remote) * 1000:.0f})"
    )
    print(f"same cell in-process: {med_local * 1000:.2f} ms; ratio {med_remote / med_local:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

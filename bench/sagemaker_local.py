"""What SageMaker's own local mode costs over ours: end-to-end time of a trivial cell with
`--local` vs `--backend sagemaker-local`, the same run image (`--rerun`), median of
--runs each, interleaved, broken down by phase (from the ledger's phase timestamps)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CELL = "scaled = [v * factor for v in values]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-"))
    os.environ["NBCONTAINER_BASE_IMAGE"] = args.base
    os.chdir(tmp)
    from _shell import bench_shell

    ip = bench_shell(tmp)
    ip.run_cell("values = list(range(1000))\nfactor = 2")

    from nbcontainer_kernel.docker.engine import Engine
    from nbcontainer_kernel.remote.ledger import Ledger

    engine = Engine.connect()
    ledger = Ledger(tmp / "runs.db")
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the bench's whole run

    def run(line: str) -> tuple[float, dict[str, float], str]:
        saved, sys.stdout = sys.stdout, devnull
        try:
            t = time.perf_counter()
            res = ip.run_cell(f"%%remote_run {line}\n{CELL}")
            elapsed = time.perf_counter() - t
        finally:
            sys.stdout = saved
        assert res.error_in_exec is None, res.error_in_exec
        row = ledger.find(name="bench")[-1]
        return elapsed, Ledger.timings(row), row["image"]

    _, _, image = run("--local --name bench")  # builds the image: not counted
    run("--backend sagemaker-local --rerun bench-1")  # imports sagemaker.core once: not counted
    times: dict[str, list[float]] = {"local": [], "sagemaker-local": []}
    phases: dict[str, list[dict[str, float]]] = {"local": [], "sagemaker-local": []}
    try:
        for i in range(args.runs):
            for backend, line in (
                ("local", "--local --rerun bench-1"),
                ("sagemaker-local", "--backend sagemaker-local --rerun bench-1"),
            ):
                elapsed, timings, _ = run(line)
                times[backend].append(elapsed)
                phases[backend].append(timings)
                print(f"  {backend} run {i + 1}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    finally:
        engine.remove_image(image, force=True)
    print(f"trivial cell, the same run image; median of {args.runs}:")
    for backend in times:
        med = statistics.median(times[backend])
        parts = ", ".join(
            f"{name} {statistics.median(t.get(name, 0.0) for t in phases[backend]) * 1000:.0f} ms"
            for name in phases[backend][0]
        )
        print(f"  {backend:>16}: {med * 1000:7.0f} ms end to end ({parts})")
    ratio = statistics.median(times["sagemaker-local"]) / statistics.median(times["local"])
    print(f"sagemaker-local / local: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

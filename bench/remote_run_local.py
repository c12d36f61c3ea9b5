"""End-to-end `%%remote_run --local` of a trivial cell with ~10 MB of state, in one run:
the warm path (the snapshot copied into a waiting runner container, no image built), the
build path (a run image per run: `LocalBackend.run_pool_size = 0`) and the same cell
in-process; medians of --runs, interleaved, each broken down by phase (from the run
ledger's phase timestamps).

With --sweep N, also a sweep of N children of a trivial cell through the warm pool
against a plain loop of `docker run` of the same runtime image (children per second).

With --guard IMAGE, instead: the same `%%remote_run --local` from inside two containerized
kernels of IMAGE, one reaching Docker through nbcontainer's guard (docker_access guarded)
and one through the daemon's own socket (raw), interleaved; the ratio is the guard's cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELL = "total = float(state.sum())\nscaled = state[:10] * factor"


def quietly(ip, code: str) -> float:  # noqa: ANN001 - an IPython shell
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    saved, sys.stdout = sys.stdout, devnull
    try:
        t = time.perf_counter()
        res = ip.run_cell(code)
        elapsed = time.perf_counter() - t
    finally:
        sys.stdout = saved
        devnull.close()
    assert res.error_in_exec is None, res.error_in_exec
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--sweep", type=int, default=0, metavar="N")
    p.add_argument("--guard", metavar="IMAGE", help="guarded vs raw kernels of this image")
    args = p.parse_args()
    if args.guard:
        return guard_vs_raw(args.guard, args.runs)
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

    from nbcontainer_kernel.docker import warm
    from nbcontainer_kernel.docker.engine import Engine
    from nbcontainer_kernel.remote.ledger import Ledger

    engine = Engine.connect()
    ledger = Ledger(tmp / "runs.db")
    local = [quietly(ip, CELL) for _ in range(args.runs)]

    paths = {"warm": 1, "build": 0}
    totals: dict[str, list[float]] = {k: [] for k in paths}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
    n = 0
    try:
        for i in range(args.runs + 1):  # the first of each makes its layers: not counted
            for path, size in paths.items():
                ip.run_line_magic("config", f"LocalBackend.run_pool_size = {size}")
                if path == "warm":
                    for pool in warm.pools():
                        pool.fill()
                        pool.wait_ready(60)
                elapsed = quietly(ip, f"%%remote_run --local --name bench\n{CELL}")
                n += 1
                row = ledger.get(f"bench-{n}")
                if row["image"]:
                    engine.remove_image(row["image"], force=True)
                if i == 0:
                    continue
                totals[path].append(elapsed)
                phases[path].append(Ledger.timings(row))
                print(f"  {path} {i}/{args.runs}: {elapsed:.3f} s", file=sys.stderr, flush=True)
    finally:
        warm.close_all()

    med_local = statistics.median(local)
    print(f"%%remote_run --local, trivial cell, 10 MB of state; median of {args.runs}:")
    for path in paths:
        med = statistics.median(totals[path])
        print(f"  {path} path:")
        for phase in phases[path][0]:
            ms = statistics.median(p.get(phase, 0.0) for p in phases[path]) * 1000
            print(f"    {phase:>10}: {ms:8.0f} ms")
        print(
            f"    {'end to end':>10}: {med * 1000:8.0f} ms  (min {min(totals[path]) * 1000:.0f}, "
            f"max {max(totals[path]) * 1000:.0f})"
        )
    warm_med, build_med = (statistics.median(totals[k]) for k in ("warm", "build"))
    print(f"warm path / build path: {warm_med / build_med:.2f}")
    print(f"same cell in-process: {med_local * 1000:.2f} ms")

    if args.sweep:
        sweep(ip, engine, ledger, args.sweep)
    return 0


def sweep(ip, engine, ledger, children: int) -> None:  # noqa: ANN001
    """A sweep of `children` trivial children through the warm pool (two at once, on two
    cores), against plain loops of `docker run`: of the run image of the same snapshot
    (each child's work, without this project's orchestration: no results collected, no
    ledger), and of `python -c pass` in it (a floor for any container)."""
    import json as json_mod

    from nbcontainer_kernel.docker import warm
    from nbcontainer_kernel.images.runs import build_run_image
    from nbcontainer_kernel.runtime.trust import KEY_ENV, new_key
    from nbcontainer_kernel.snapshots import Snapshot

    ip.run_line_magic("config", "LocalBackend.run_pool_size = 1")
    values = ",".join(str(v) for v in range(children))
    t = time.perf_counter()
    quietly(ip, f"%%remote_run --local --name sw --sweep k={values} --max-parallel 2\ny = k * 2")
    pooled = time.perf_counter() - t
    warm.close_all()
    kept = ledger.run_dir("sw-1") / "snapshot"  # the sweep's parent keeps its snapshot
    image = build_run_image(Snapshot.load(kept), engine=engine).tag
    loops = {}
    for label, extra in (("run image", []), ("python -c pass", ["--entrypoint", "python3"])):
        t = time.perf_counter()
        for k in range(children):
            params = json_mod.dumps({"k": k})
            command = ["-c", "pass"] if extra else []
            subprocess.run(
                ["docker", "run", "--rm", "--init", "-e", f"{KEY_ENV}={new_key()}"]
                + ["-e", f"NBCONTAINER_PARAMS={params}", *extra, image, *command],
                check=True,
                capture_output=True,
            )
        loops[label] = time.perf_counter() - t
    engine.remove_image(image, force=True)
    print(
        f"sweep of {children} children (--max-parallel 2): {children / pooled:.2f} children/s "
        f"({pooled:.1f} s)"
    )
    for label, took in loops.items():
        print(
            f"  a loop of `docker run --rm` ({label}): {children / took:.2f} /s ({took:.1f} s); "
            f"sweep / loop {took / pooled:.2f}"
        )


# Run in each kernel: one %%remote_run --local, timed inside the kernel, once its runner
# pool waits ready (as it does between a user's cells).
TIMED_IN_KERNEL = """
from nbcontainer_kernel import warm as _warm
for _p in _warm.pools():
    _p.fill(); _p.wait_ready(60)
import time as _t
_t0 = _t.perf_counter()
get_ipython().run_cell_magic("remote_run", "--local --name guardbench", {cell!r})
print("ELAPSED", _t.perf_counter() - _t0)
"""


def guard_vs_raw(image: str, runs: int) -> int:
    """`%%remote_run --local` from a guarded kernel and from a raw one, interleaved."""
    from jupyter_client import KernelManager

    from nbcontainer_kernel.kernel import kernelspec, pool

    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-"))
    os.chdir(tmp)
    os.environ["JUPYTER_PATH"] = str(tmp / "share" / "jupyter")
    cell = "total = len(state)\nscaled = factor * 2"
    kernels = {}
    try:
        for access in ("guarded", "raw"):
            name = f"bench-{access}"
            kernelspec.install(
                image,
                name,
                options={"docker_access": access, "mount_ledger": False},
                env={"NBCONTAINER_RUNS_DB": str(tmp / f"{access}.db")},
                user=False,
                prefix=str(tmp),
            )
            km = KernelManager(kernel_name=name)
            km.start_kernel(cwd=str(tmp))
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            kernels[access] = (km, kc)
            setup = "import os\nstate = os.urandom(10 * 1024 * 1024)\nfactor = 2.0"
            kc.execute_interactive(setup, timeout=60, output_hook=lambda m: None)
        samples: dict[str, list[float]] = {k: [] for k in kernels}
        for i in range(runs + 1):  # the first makes the runtime layer: not counted
            order = list(kernels.items())
            for access, (_, kc) in order if i % 2 else order[::-1]:  # neither always first
                out: list[str] = []

                def hook(msg: dict, out: list[str] = out) -> None:
                    if msg["msg_type"] == "stream":
                        out.append(msg["content"]["text"])

                reply = kc.execute_interactive(
                    TIMED_IN_KERNEL.format(cell=cell), timeout=600, output_hook=hook
                )
                assert reply["content"]["status"] == "ok", "".join(out)
                elapsed = float("".join(out).rsplit("ELAPSED", 1)[1].split()[0])
                if i:
                    samples[access].append(elapsed)
                print(f"  {access} {i}/{runs}: {elapsed:.3f} s", file=sys.stderr, flush=True)
    finally:
        for km, kc in kernels.values():
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        pool.close_all()
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"%%remote_run --local from a containerized kernel; median of {runs}, interleaved:")
    for access, value in med.items():
        print(f"  {access:>8}: {value * 1000:7.0f} ms  (min {min(samples[access]) * 1000:.0f})")
    print(f"guarded / raw: {med['guarded'] / med['raw']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A sweep on AWS Batch as ONE array job, against the same sweep as N separate jobs
(the way Metaflow's @batch submits a foreach), on the AWS test bed
(scripts/aws_testbed.py: moto in server mode, Debian's docker-registry), in one run:

* API calls made and seconds to submit: one array job vs N submit_job calls;
* API calls made while waiting, per operation (one shared status view, never one call
  per child per poll);
* per-child wall time of the whole sweep on Batch (moto runs every child in Docker
  here) against `--local` of the same sweep;
* bytes pushed by run 1 (a fresh registry: every layer) and run 2 (new variables, same
  dependencies: the snapshot layer alone).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _count_calls(backend, counts: collections.Counter) -> None:  # noqa: ANN001
    for service in ("batch", "logs", "s3"):
        backend._client(service).meta.events.register(
            f"before-call.{service}",
            lambda model, **_: counts.update([f"{model.service_model.service_name}.{model.name}"]),
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--children", type=int, default=100)
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    args = p.parse_args()
    n = args.children
    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-batch-"))
    from _shell import testbed

    with testbed(tmp, args.base):
        return _bench(n, tmp)


def _bench(n: int, tmp: Path) -> int:
    from _shell import bench_shell

    from nbcontainer_kernel.backends.base import RunSpec
    from nbcontainer_kernel.backends.registry import get_backend
    from nbcontainer_kernel.images.runs import remove_run_images_of
    from nbcontainer_kernel.remote.ledger import Ledger

    ip = bench_shell(tmp)
    ip.run_cell("import numpy as np\nstate = np.arange(1000.0)")
    ledger = Ledger(tmp / "runs.db")
    backend: Any = get_backend("batch")  # a BatchBackend: its push and client
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the bench's whole run

    def quiet(cell: str) -> float:
        saved, sys.stdout = sys.stdout, devnull
        try:
            t = time.perf_counter()
            res = ip.run_cell(cell)
            return time.perf_counter() - t
        finally:
            sys.stdout = saved
            assert res.error_in_exec is None, res.error_in_exec

    # Run 1 and run 2: bytes pushed.
    quiet("%%remote_run --backend batch --name push\ntotal = float(state.sum())")
    first = backend.last_push
    ip.run_cell("more = np.ones(10)")
    quiet("%%remote_run --backend batch --name push\ntotal = float(state.sum() + more.sum())")
    second = backend.last_push

    values = ",".join(str(i) for i in range(n))
    cell = f"%%remote_run --backend batch --name arr --sweep i={values}\ny = float(state[i])"
    counts: collections.Counter[str] = collections.Counter()
    _count_calls(backend, counts)
    submit_time = {}
    real_submit = backend.submit_sweep

    def timed_submit(parent, specs):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            return real_submit(parent, specs)
        finally:
            submit_time["array"] = time.perf_counter() - t

    backend.submit_sweep = timed_submit
    batch_wall = quiet(cell)
    array_calls = dict(counts)
    local_wall = quiet(
        f"%%remote_run --local --name loc --sweep i={values} --max-parallel 4\ny = float(state[i])"
    )

    # N separate jobs of the same image, the way a per-child submitter does it.
    image = ledger.find(name="arr")[0]["image"]
    counts.clear()
    t = time.perf_counter()
    settings = backend.settings()  # as the shell configured it (bench_shell)
    separate = [
        backend.submit(RunSpec(f"sep-{i}", image, name="sep", params={"i": i}, settings=settings))
        for i in range(n)
    ]
    submit_time["separate"] = time.perf_counter() - t
    separate_calls = dict(counts)
    batch = backend.batch
    ids = [job.handle["job_id"] for job in separate]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:  # let moto finish them (containers) before stopping
        states = [
            j["status"]
            for k in range(0, n, 100)
            for j in batch.describe_jobs(jobs=ids[k : k + 100])["jobs"]
        ]
        if all(s in ("SUCCEEDED", "FAILED") for s in states):
            break
        time.sleep(2)

    def total(calls: dict[str, int], prefix: str = "") -> int:
        return sum(v for k, v in calls.items() if k.startswith(prefix))

    print(f"sweep of {n} children on the test bed (moto runs every child in Docker)")
    print(
        f"  submit, one array job:  {total(array_calls, 'batch.SubmitJob')} SubmitJob call(s), "
        f"{submit_time['array'] * 1000:.0f} ms"
    )
    print(
        f"  submit, {n} separate jobs: {total(separate_calls, 'batch.SubmitJob')} SubmitJob calls, "
        f"{submit_time['separate'] * 1000:.0f} ms "
        f"(ratio {submit_time['separate'] / submit_time['array']:.1f}x)"
    )
    print(f"  API calls for the whole array sweep: {total(array_calls)}")
    for op, k in sorted(array_calls.items()):
        print(f"    {op:32s} {k}")
    print(
        f"  wall: batch {batch_wall:.1f} s ({batch_wall / n * 1000:.0f} ms/child), "
        f"--local (4 at once) {local_wall:.1f} s ({local_wall / n * 1000:.0f} ms/child), "
        f"ratio {batch_wall / local_wall:.2f}"
    )
    print(
        f"  push run 1: {first.pushed} layers pushed, {first.existing} already there, "
        f"{first.bytes_sent / 1e6:.1f} MB; run 2: {second.pushed} pushed, {second.existing} "
        f"already there, {second.bytes_sent / 1e6:.2f} MB"
    )
    remove_run_images_of(ledger.find())  # the run images made here go
    return 0


if __name__ == "__main__":
    sys.exit(main())

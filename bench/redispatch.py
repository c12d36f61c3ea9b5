"""Warm re-dispatch vs a naive rebuild, for a trivial cell with ~10 MB of state, in one run.

Warm: snapshot -> build run image (dependency layer cached) -> run -> results,
median of --runs, broken down by phase. Naive: what one does without this
project: a `docker build` that pip-installs the same dependencies (the exact
pins of our dependency layer, from the package index, no cache) and papermill,
then `docker run` papermill on a notebook holding the cell; median of --naive-runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
from nbformat.v4 import new_code_cell, new_notebook

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.images.runs import build_run_image
from nbcontainer_kernel.remote.local_run import run_image
from nbcontainer_kernel.snapshots import snapshot

CELL = "total = float(state.sum())\nscaled = state[:10] * factor"


def warm_once(engine: Engine, base: str, ns: dict, workdir: Path) -> tuple[dict[str, float], str]:
    phases = {}
    t = time.perf_counter()
    snap = snapshot(ns, CELL, cwd=workdir, env={})
    phases["snapshot"] = time.perf_counter() - t
    t = time.perf_counter()
    image = build_run_image(snap, base=base, engine=engine)
    phases["build"] = time.perf_counter() - t
    snap.cleanup()
    t = time.perf_counter()
    res = run_image(image.tag, output_dir=workdir / "out", engine=engine)
    phases["run"] = time.perf_counter() - t
    t = time.perf_counter()
    values = res.results
    phases["results"] = time.perf_counter() - t
    assert res.exit_code == 0 and abs(values["total"] - float(ns["state"].sum())) < 1e-6, (
        res.failure
    )
    engine.remove_image(image.tag, force=True)
    return phases, image.deps_image


NAIVE_DOCKERFILE = """\
FROM {base}
# pip trusts the system CA bundle (the base has the host's), as the project's builds do.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY . /work
RUN python3 -m venv /venv \\
 && /venv/bin/pip install -q --no-cache-dir -r /work/requirements.txt papermill
WORKDIR /work
CMD ["/venv/bin/papermill", "cell.ipynb", "out.ipynb"]
"""


def naive_once(engine: Engine, base: str, requirements: str, run_no: int) -> float:
    nb = new_notebook(
        cells=[
            new_code_cell(
                "import numpy as np\nstate = np.random.default_rng(0).standard_normal(10 * 1024 * "
                "1024 // 8)\n"
                f"factor = 2.0\n# run {run_no}\n" + CELL
            )
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in {
            "Dockerfile": NAIVE_DOCKERFILE.format(base=base),
            "requirements.txt": requirements,
            "cell.ipynb": nbformat.writes(nb),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    ctx.seek(0)
    tag = "nbcontainer-bench/naive:latest"
    t = time.perf_counter()
    engine.build(ctx, tag)
    subprocess.run(["docker", "run", "--rm", tag], check=True, capture_output=True)
    elapsed = time.perf_counter() - t
    engine.remove_image(tag, force=True)
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--naive-runs", type=int, default=3)
    args = p.parse_args()
    engine = Engine.connect()
    ns = {"state": np.random.default_rng(0).standard_normal(10 * 1024 * 1024 // 8), "factor": 2.0}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _, deps = warm_once(
            engine, args.base, ns, workdir
        )  # warm-up: builds or reuses the dependency layer
        samples = []
        for i in range(args.runs):
            phases, _ = warm_once(engine, args.base, ns, workdir)
            samples.append(phases)
            print(
                f"  warm {i + 1}/{args.runs}: {sum(phases.values()):.2f} s",
                file=sys.stderr,
                flush=True,
            )
    freeze = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "/opt/nbcontainer/venv/bin/python",
            deps,
            "-m",
            "pip",
            "list",
            "--format=freeze",
            "--local",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    freeze = "\n".join(ln for ln in freeze.splitlines() if "==" in ln and " " not in ln) + "\n"
    naive = []
    for i in range(args.naive_runs):
        naive.append(naive_once(engine, args.base, freeze, i))
        print(f"  naive {i + 1}/{args.naive_runs}: {naive[-1]:.1f} s", file=sys.stderr, flush=True)

    total = statistics.median(sum(s.values()) for s in samples)
    print(
        f"warm re-dispatch, median of {args.runs} (10 MB of state, {len(freeze.splitlines())} "
        "pinned packages):"
    )
    for phase in samples[0]:
        print(f"  {phase:>9}: {statistics.median(s[phase] for s in samples) * 1000:8.0f} ms")
    print(f"  {'total':>9}: {total * 1000:8.0f} ms")
    nmed = statistics.median(naive)
    print(
        f"naive rebuild (docker build + pip install + papermill), median of {args.naive_runs}: "
        f"{nmed:.1f} s"
    )
    print(f"speed-up: {nmed / total:.0f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel start latency: a warm-pool claim, a cold container start and a local kernel, in one run.

Each sample is the time from KernelManager.start_kernel() to the first
kernel_info reply on the shell channel (what a client waits for before it
can run code), and beside it the time to jupyter_client's wait_for_ready()
(which also waits for 0.2 s of IOPub silence). Medians over --runs starts,
interleaved (local, warm, cold, local, ...) so that the machine's drift hits
every kind alike, after one warm-up start of each that is not counted.

* local: jupyter_client's LocalProvisioner running ipykernel on the host.
* pool warm: the nbcontainer kernelspec with pool_size 1; before each sample
  the bench waits until the pool holds a ready container (as a server does
  between kernel starts that are not within a second of each other).
* pool cold: the same kernelspec options with pool_size 0: a container made
  and started for the kernel (what a start costs when the pool is empty).
* gateway_provisioners (--peer): its DockerProvisioner (bench/peer_gateway.py).
* remote warm / remote cold (--docker-host URL, or --testbed for the project's own remote
  host test bed): the same two on another machine's Docker, reached by SSH; the kernel's
  channels forwarded by its own SSH connection, its working directory (a small notebook
  folder, as every kind here starts in) seeded into a volume there.

Ratios are against the local kernel's median from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from nbcontainer_kernel.kernel import kernelspec, pool

TESTBED = Path(__file__).resolve().parents[1] / "scripts" / "dockerhost_testbed.py"


def time_start(kernel_name: str, cwd: str) -> tuple[float, float]:
    """(seconds to the first kernel_info reply, seconds to wait_for_ready)."""
    km = KernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        first = None
        deadline = t0 + 120
        while first is None:
            msg_id = kc.kernel_info()
            while time.perf_counter() < deadline:
                try:
                    reply = kc.get_shell_msg(timeout=0.5)
                except queue.Empty:
                    break  # ask again (a request sent before the kernel listened)
                if reply["parent_header"].get("msg_id") == msg_id:
                    first = time.perf_counter() - t0
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{kernel_name}: no kernel_info reply in 120 s")
        kc.wait_for_ready(timeout=120)
        return first, time.perf_counter() - t0
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def warm_pool_ready(timeout: float = 60) -> None:
    for p in pool.pools():
        p.fill()
        if not p.wait_ready(timeout):
            raise RuntimeError("the warm pool did not become ready")


def remote_kernels(args: argparse.Namespace, prefix: str) -> dict[str, str]:
    """The remote host's two kernelspecs (--docker-host, or the test bed with --testbed)."""
    testbed = Path(prefix) / "testbed"
    if args.testbed:
        out = subprocess.run(
            [sys.executable, str(TESTBED), "start", "--state", str(testbed)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        env = dict(line.split("=", 1) for line in out.stdout.splitlines())
        args.docker_host = env["NBCONTAINER_TESTBED_DOCKER_HOST"]
        args.ssh_config = env["NBCONTAINER_TESTBED_SSH_CONFIG"]
    if args.docker_host:
        remote = {"docker_host": args.docker_host, "ssh_config": args.ssh_config}
        for name, size in (("bench-remote-warm", 1), ("bench-remote-cold", 0)):
            options = {"pool_size": size, **{k: v for k, v in remote.items() if v}}
            kernelspec.install(
                args.image, name, options=options, user=False, prefix=prefix, check_image=False
            )
        return {"remote warm": "bench-remote-warm", "remote cold": "bench-remote-cold"}
    return {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="nbcontainer/python:3.11", help="the kernel image")
    p.add_argument("--local", default="python3", help="the local ipykernel kernelspec")
    p.add_argument(
        "--peer", default=None, help="a gateway_provisioners docker kernelspec, if installed"
    )
    p.add_argument("--docker-host", help="also start kernels on this Docker host (ssh://...)")
    p.add_argument("--ssh-config", help="with --docker-host: an OpenSSH client config")
    p.add_argument(
        "--testbed",
        action="store_true",
        help="start the remote host test bed (scripts/dockerhost_testbed.py) and use it",
    )
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    # Kernelspecs of this bench's own, under a prefix of its own on JUPYTER_PATH (the user's
    # kernelspecs, the peer's among them, stay visible).
    prefix = tempfile.mkdtemp(prefix="nbcontainer-bench-")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (os.path.join(prefix, "share", "jupyter"), os.environ.get("JUPYTER_PATH")) if p
    )
    common = {"docker_access": "none", "mount_ledger": False}
    for name, size in (("bench-warm", 1), ("bench-cold", 0)):
        kernelspec.install(
            args.image, name, options={**common, "pool_size": size}, user=False, prefix=prefix
        )
    kernels = {"local": args.local, "pool warm": "bench-warm", "pool cold": "bench-cold"}
    kernels.update(remote_kernels(args, prefix))
    notebook_dir = Path(prefix) / "notebook"  # what a notebook's folder holds, small
    notebook_dir.mkdir()
    (notebook_dir / "analysis.ipynb").write_text("{}")
    (notebook_dir / "helpers.py").write_text("def f(x):\n    return 2 * x\n")
    if args.peer:
        if args.peer not in KernelSpecManager().find_kernel_specs():
            print(
                f"peer kernelspec {args.peer!r} is not installed; run bench/peer_gateway.py first",
                file=sys.stderr,
            )
            return 1
        kernels["gateway_provisioners"] = args.peer
        os.environ.setdefault("KERNEL_USERNAME", "bench")  # the peer refuses to start without it

    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in kernels}
    try:
        for i in range(args.runs + 1):  # the first round warms caches and is not counted
            for label, name in kernels.items():
                if label in ("pool warm", "remote warm"):
                    warm_pool_ready()
                got = time_start(name, str(notebook_dir))
                if i:
                    samples[label].append(got)
                print(
                    f"  {label:>22} run {i:>2}/{args.runs}: {got[0] * 1000:7.1f} ms "
                    f"(ready {got[1] * 1000:7.1f} ms)" + ("  warm-up" if not i else ""),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        pool.close_all()
        for name in ("bench-warm", "bench-cold") + (
            ("bench-remote-warm", "bench-remote-cold") if args.docker_host else ()
        ):
            kernelspec.remove(name)
        if args.testbed:
            subprocess.run(
                [sys.executable, str(TESTBED), "stop", "--state", str(Path(prefix) / "testbed")]
            )

    results = {}
    for label, got in samples.items():  # type: ignore[assignment]
        first = [g[0] * 1000 for g in got]
        ready = [g[1] * 1000 for g in got]
        results[label] = {
            "kernelspec": kernels[label],
            "median_ms": statistics.median(first),
            "min_ms": min(first),
            "max_ms": max(first),
            "ready_median_ms": statistics.median(ready),
            "runs": len(got),
        }
    base = results["local"]["median_ms"]
    ready_base = results["local"]["ready_median_ms"]
    print(f"\nkernel start -> first kernel_info reply, median of {args.runs} (min..max):")
    for label, r in results.items():
        r["ratio_vs_local"] = r["median_ms"] / base
        r["ready_ratio_vs_local"] = r["ready_median_ms"] / ready_base
        print(
            f"  {label:>22}: {r['median_ms']:7.1f} ms ({r['min_ms']:.1f}..{r['max_ms']:.1f})"
            f"  ratio vs local {r['ratio_vs_local']:.2f}   | wait_for_ready "
            f"{r['ready_median_ms']:7.1f} ms, ratio {r['ready_ratio_vs_local']:.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

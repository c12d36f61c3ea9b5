"""Kernel start latency: containerized (nbcontainer-docker) vs a local kernel, in one run.

For each provisioner, the time from KernelManager.start_kernel() to the
first kernel_info reply, median over --runs starts (after one warm-up start
that is not counted), then the ratio of medians against jupyter_client's
LocalProvisioner running ipykernel on the host. With --peer, the same for
gateway_provisioners' DockerProvisioner (see bench/peer_gateway.py for how
its kernelspec and image are made).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager


def time_start(kernel_name: str) -> float:
    km = KernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        return time.perf_counter() - t0
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def measure(kernel_name: str, runs: int) -> list[float]:
    time_start(kernel_name)  # warm-up: page cache, image layers, imports
    samples = []
    for i in range(runs):
        samples.append(time_start(kernel_name))
        print(
            f"  {kernel_name:>24} run {i + 1:>2}/{runs}: {samples[-1] * 1000:7.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="py311-docker", help="the nbcontainer kernelspec")
    p.add_argument("--local", default="python3", help="the local ipykernel kernelspec")
    p.add_argument(
        "--peer", default=None, help="a gateway_provisioners docker kernelspec, if installed"
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="KERNELSPEC",
        help="another kernelspec to measure in the same run (repeatable)",
    )
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    available = KernelSpecManager().find_kernel_specs()
    kernels = {"local": args.local, "nbcontainer": args.kernel}
    kernels.update({name: name for name in args.also})
    if args.peer:
        if args.peer not in available:
            print(
                f"peer kernelspec {args.peer!r} is not installed; run bench/peer_gateway.py first",
                file=sys.stderr,
            )
            return 1
        kernels["gateway_provisioners"] = args.peer
        os.environ.setdefault("KERNEL_USERNAME", "bench")  # the peer refuses to start without it
    results = {}
    for label, name in kernels.items():
        samples = measure(name, args.runs)
        results[label] = {
            "kernelspec": name,
            "median_ms": statistics.median(samples) * 1000,
            "min_ms": min(samples) * 1000,
            "max_ms": max(samples) * 1000,
            "runs": len(samples),
        }
    base = results["local"]["median_ms"]
    print(f"\nkernel start -> first kernel_info reply, median of {args.runs} (min..max):")
    for label, r in results.items():
        ratio = r["median_ms"] / base
        r["ratio_vs_local"] = ratio
        print(
            f"  {label:>22}: {r['median_ms']:7.1f} ms ({r['min_ms']:.1f}..{r['max_ms']:.1f})"
            f"  ratio vs local {ratio:.2f}  (min {r['min_ms'] / base:.2f}, max "
            f"{r['max_ms'] / base:.2f})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

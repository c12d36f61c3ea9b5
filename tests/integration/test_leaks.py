"""Nothing leaks: start/stop cycles, and orphans of a SIGKILLed owner are swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_core.paths import jupyter_runtime_dir

from nbcontainer_kernel.docker import orphans
from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import docker_provisioner, inspected, run_gc

from .conftest import own_containers


def test_twenty_start_stop_cycles_leave_nothing_behind(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-cycles", pool_size=0)  # with a pool: test_kernel_pool.py
    runtime = Path(jupyter_runtime_dir())
    before = set(runtime.glob("kernel-*.json")) if runtime.exists() else set()
    seen = set()
    for _ in range(20):
        km = KernelManager(kernel_name=name)
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        seen.add(docker_provisioner(km).container_id)
        kc.stop_channels()
        km.shutdown_kernel()
    assert len(seen) == 20
    assert own_containers(engine) == []
    assert all(engine.inspect(cid) is None for cid in seen)
    after = set(runtime.glob("kernel-*.json")) if runtime.exists() else set()
    assert after <= before, f"connection files left behind: {after - before}"


OWNER_SCRIPT = textwrap.dedent("""
    import sys, time
    from jupyter_client import KernelManager
    km = KernelManager(kernel_name=sys.argv[1])
    km.start_kernel()
    print(km.provisioner.container_id, flush=True)
    time.sleep(600)
""")


def _start_owner(name: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, name],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.stdout is not None
    container_id = proc.stdout.readline().strip()
    assert container_id, "the owner process did not start a kernel"
    return proc, container_id


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_gc_removes_the_container_of_a_sigkilled_owner(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-orphan")
    proc, cid = _start_owner(name)
    try:
        # While the owner lives, gc leaves its kernel alone.
        out = run_gc()
        assert cid[:12] not in out and inspected(engine, cid)["State"]["Running"]
    finally:
        _kill9(proc)
    assert inspected(engine, cid)["State"]["Running"], "SIGKILL leaves the container running"
    out = run_gc()
    assert "removed 1 orphaned container(s)" in out or engine.inspect(cid) is None
    assert engine.inspect(cid) is None


def test_next_provisioner_start_sweeps_orphans(engine: Engine, make_kernelspec) -> None:
    name = make_kernelspec("nbc-orphan2")
    proc, cid = _start_owner(name)
    _kill9(proc)
    assert engine.inspect(cid) is not None
    # A fresh process (a restarted server) starts a kernel: its provisioner sweeps first.
    proc2, cid2 = _start_owner(name)
    try:
        deadline = time.monotonic() + 10
        while engine.inspect(cid) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.inspect(cid) is None
        assert inspected(engine, cid2)["State"]["Running"]
    finally:
        _kill9(proc2)
        engine.remove(cid2)
        orphans.sweep(engine)  # proc2's warm pool, if it made one by then

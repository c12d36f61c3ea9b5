"""The warm kernel pool on a real daemon, through jupyter_client's KernelManager: a claimed
kernel works end to end, claims never share a container, nothing a pool makes outlives its
owner (shutdown, 50 cycles, kill -9 then gc), and a waiting container holds no keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager, KernelManager

from nbcontainer_kernel.docker import labels, orphans
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.guard.server import DIR_PREFIX
from nbcontainer_kernel.kernel import pool
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.contract import KERNEL_CONNECTION_DIR
from tests.helpers import (
    docker_provisioner,
    inspected,
    interrupt_and_reply,
    run,
    run_gc,
    start_busy_loop,
    started,
    stdout_of,
)

from .conftest import own_containers


def _ready_pool() -> pool.KernelPool:
    [p] = pool.pools()
    p.fill()
    assert p.wait_ready(60), "the pool's container did not become ready"
    return p


def _pool_after_a_cold_start(name: str, cwd: Path) -> pool.KernelPool:
    """The first kernel of a shape starts cold (and is shut down); its pool, filled."""
    with started(name, cwd=str(cwd)) as (km, _kc):
        assert docker_provisioner(km).container_name != f"nbcontainer-kernel-{km.kernel_id}"
    return _ready_pool()


def _waiting(engine: Engine, owner_pid: int | None = None) -> list[str]:
    """Pool containers still waiting (a claimed one takes its kernel's name)."""
    found = engine.containers({labels.ROLE: labels.ROLE_KERNEL_POOL})
    return [
        c.id
        for c in found
        if not c.name.startswith("nbcontainer-kernel-")
        and (owner_pid is None or c.labels.get(labels.OWNER_PID) == str(owner_pid))
    ]


def test_a_claimed_kernel_executes_interrupts_restarts_and_shuts_down(
    engine: Engine, make_kernelspec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the server's root: every notebook under it shares a pool
    name = make_kernelspec("nbc-pool", env={"NBC_SPEC_VALUE": "from-the-spec"})
    notebook_dir = tmp_path / "project" / "notebooks"
    notebook_dir.mkdir(parents=True)
    (notebook_dir / "data.txt").write_text("beside the notebook")
    _pool_after_a_cold_start(name, tmp_path)
    with started(name, cwd=str(notebook_dir)) as (km, kc):
        cid = docker_provisioner(km).container_id
        assert docker_provisioner(km).container_name == f"nbcontainer-kernel-{km.kernel_id}"
        assert inspected(engine, cid)["Name"] == f"/nbcontainer-kernel-{km.kernel_id}"
        content, outputs = run(
            kc,
            "import os\nprint(os.getcwd(), open('data.txt').read(), os.environ['NBC_SPEC_VALUE'], "
            "os.environ['NBCONTAINER_KERNEL_ID'], os.path.exists(os.environ["
            "'NBCONTAINER_CONNECTION_FILE']), sep='|')",
        )
        assert content["status"] == "ok", outputs
        assert stdout_of(outputs).strip().split("|") == [
            str(notebook_dir),
            "beside the notebook",
            "from-the-spec",
            km.kernel_id,
            "False",  # read, then removed by the extension
        ]
        msg_id = start_busy_loop(kc)
        assert interrupt_and_reply(km, kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert docker_provisioner(km).container_id != cid and engine.inspect(cid) is None
        content, outputs = run(kc, "print(41 + 1)")
        assert stdout_of(outputs) == "42\n"
        restarted = docker_provisioner(km).container_id
    assert engine.inspect(restarted) is None


def test_a_waiting_container_holds_no_connection_file_or_kernel_environment(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-pool-keys", env={"NBC_SECRET_TOKEN": "abc123"})
    p = _pool_after_a_cold_start(name, tmp_path)
    [warm] = p.waiting()
    assert engine.get_archive(warm.container_id, KERNEL_CONNECTION_DIR) is None
    env = "\n".join((engine.inspect(warm.container_id) or {})["Config"]["Env"])
    assert "abc123" not in env and "NBCONTAINER_KERNEL_ID" not in env


def test_two_kernels_started_at_once_get_two_containers(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-pool-two")
    _pool_after_a_cold_start(name, tmp_path)

    async def both() -> list[str]:
        kms = [AsyncKernelManager(kernel_name=name) for _ in range(2)]
        await asyncio.gather(*(km.start_kernel(cwd=str(tmp_path)) for km in kms))
        try:
            for km in kms:
                kc = km.client()
                kc.start_channels()
                await kc.wait_for_ready(timeout=60)
                kc.stop_channels()
            return [docker_provisioner(km).container_id for km in kms]
        finally:
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms))

    ids = asyncio.run(both())
    assert len(set(ids)) == 2 and all(engine.inspect(c) is None for c in ids)


def test_fifty_start_stop_cycles_leave_only_the_pool_and_closing_leaves_nothing(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-pool-cycles")
    seen, claimed = set(), 0
    for i in range(50):
        if i % 10 == 5:
            _ready_pool()  # some starts find a ready container, others an empty pool
        km = KernelManager(kernel_name=name)
        km.start_kernel(cwd=str(tmp_path))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        seen.add(docker_provisioner(km).container_id)
        claimed += docker_provisioner(km).container_name == f"nbcontainer-kernel-{km.kernel_id}"
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert len(seen) == 50 and claimed >= 5
    assert all(engine.inspect(cid) is None for cid in seen)
    left = {c.id for c in own_containers(engine)}
    assert left == set(_waiting(engine, os.getpid())) and len(left) <= 1
    pool.close_all()
    assert own_containers(engine) == []


def test_pool_size_zero_starts_every_kernel_in_a_new_container(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-pool-off", pool_size=0)
    for _ in range(2):
        with started(name, cwd=str(tmp_path)) as (km, kc):
            assert stdout_of(run(kc, "print('ok')")[1]) == "ok\n"
            assert docker_provisioner(km).container_name != f"nbcontainer-kernel-{km.kernel_id}"
    time.sleep(1.5)  # past the refill delay: still nothing made
    assert pool.pools() == [] and own_containers(engine) == []


OWNER_SCRIPT = textwrap.dedent("""
    import sys
    from jupyter_client import KernelManager
    from nbcontainer_kernel.kernel import pool
    km = KernelManager(kernel_name=sys.argv[1])
    km.start_kernel(cwd=sys.argv[2])
    [p] = pool.pools()
    p.fill()
    assert p.wait_ready(60)
    print(km.provisioner.container_id, flush=True)
    sys.stdin.read()
""")


def test_kill_9_of_the_server_then_gc_leaves_no_pool_container(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-pool-kill9")
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, name, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    kernel = proc.stdout.readline().strip()
    waiting = _waiting(engine, proc.pid)
    try:
        assert kernel and len(waiting) == 1
        # While its owner lives, a pool container is nobody's orphan.
        assert waiting[0] not in {o.container_id for o in orphans.find_orphans(engine)}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stdin.close()
    assert inspected(engine, waiting[0])["State"]["Running"], "kill -9 leaves the pool behind"
    guard_dirs = list(Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{proc.pid}-*"))
    assert guard_dirs, "the killed server's kernel had a Docker guard socket"
    out = run_gc()
    assert engine.inspect(waiting[0]) is None and engine.inspect(kernel) is None, out
    assert _waiting(engine, proc.pid) == []
    assert not any(d.exists() for d in guard_dirs), out
    assert "removed the Docker guard socket" in out


def test_remote_run_from_a_claimed_kernel_commits_its_container(
    engine: Engine, make_kernelspec, tmp_path: Path, new_images: None, ledger: Ledger
) -> None:
    name = make_kernelspec("nbc-pool-remote")
    _pool_after_a_cold_start(name, tmp_path)
    with started(name, cwd=str(tmp_path)) as (km, kc):
        assert docker_provisioner(km).container_name == f"nbcontainer-kernel-{km.kernel_id}"
        assert run(kc, "x = 20")[0]["status"] == "ok"
        content, outputs = run(kc, "%%remote_run --local --name pooled\ny = x + 22", timeout=300)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        assert stdout_of(run(kc, "print(y)")[1]) == "42\n"
        made_by_kernel = {labels.OWNER_CONTAINER: docker_provisioner(km).container_id[:12]}
        # The refill is made off the run's path: wait for it (a loaded machine is slow).
        deadline = time.monotonic() + 60
        while not engine.containers(made_by_kernel) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.containers(made_by_kernel), "the kernel keeps a warm runner waiting"
    # Shut down with now=True: the kernel is killed, its own exit never runs.
    assert ledger.get("pooled-1")["status"] == "SUCCEEDED"
    assert engine.containers(made_by_kernel) == [], "what the kernel made goes with it"

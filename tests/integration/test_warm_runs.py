"""`%%remote_run --local` without a build, on a real daemon: the snapshot is copied into a
waiting runner container of its runtime image. It runs on the files its run image would
hold, makes no image, keeps no key in any container's configuration, fails as the build
path does, runs sweeps, and leaves nothing behind."""

from __future__ import annotations

import json
import time

import pytest

from nbcontainer_kernel.docker import labels, warm
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import RemoteExecutionError

from .conftest import own_containers

# What the runner sees of its own files: every file under the snapshot and the runtime,
# with its owner, mode, size and digest.
LIST_FILES = """\
import hashlib, os
seen = {}
for top in ('/opt/nbcontainer/snapshot', '/opt/nbcontainer/runtime', '/opt/nbcontainer/venv/bin'):
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != '__pycache__']
        for f in sorted(files) + sorted(dirs):
            p = os.path.join(d, f)
            st = os.lstat(p)
            digest = hashlib.sha256(open(p, 'rb').read()).hexdigest() if os.path.isfile(p) else ''
            seen[p] = (st.st_uid, st.st_gid, oct(st.st_mode), st.st_size if digest else 0, digest)
"""


def _run_images(engine: Engine) -> set[str]:
    return {i.id for i in engine.images({labels.ROLE: labels.ROLE_RUN_IMAGE})}


def test_a_warm_run_sees_the_files_its_run_image_holds_and_makes_no_image(
    ip, ledger: Ledger, engine: Engine
) -> None:
    before = _run_images(engine)
    ip.run_cell("%config LocalBackend.run_pool_size = 1")
    res = ip.run_cell(f"%%remote_run --local --name files\n{LIST_FILES}")
    assert res.error_in_exec is None, res.error_in_exec
    warm_seen = ip.user_ns["seen"]
    assert ledger.get("files-1")["image"] == "" and _run_images(engine) == before
    assert any(p.startswith("/opt/nbcontainer/snapshot/") for p in warm_seen)
    # The same snapshot, run from the run image that --rerun makes of it.
    ip.run_cell("%config LocalBackend.run_pool_size = 0")
    res = ip.run_cell("%%remote_run --local --rerun files-1\n# the same snapshot")
    assert res.error_in_exec is None, res.error_in_exec
    built = ledger.get("files-2")
    assert built["image"] and built["snapshot_digest"] == ledger.get("files-1")["snapshot_digest"]
    assert ip.user_ns["seen"] == warm_seen


def test_no_container_configuration_holds_the_run_key(ip, ledger: Ledger, engine: Engine) -> None:
    ip.run_cell("%config LocalBackend.run_pool_size = 1")
    res = ip.run_cell(
        "%%remote_run --local --name key\nimport os\nkeys = sorted(os.environ)",
        store_history=False,
    )
    assert res.error_in_exec is None, res.error_in_exec
    key = ledger.get("key-1")["run_key"]
    assert "NBCONTAINER_RUN_KEY" not in ip.user_ns["keys"]
    assert "NBCONTAINER_EXIT_MARK" not in ip.user_ns["keys"]
    for pool in warm.pools():
        for w in pool.waiting():
            info = engine.inspect(w.container_id) or {}
            assert key not in json.dumps(info)


def test_a_failing_cell_fails_with_its_traceback_and_keeps_its_outputs(ip, ledger: Ledger) -> None:
    ip.run_cell("%config LocalBackend.run_pool_size = 1")
    res = ip.run_cell(
        "%%remote_run --local --name bad\npartial = 7\nraise ValueError('no good ' + str(partial))"
    )
    assert isinstance(res.error_in_exec, RemoteExecutionError)
    assert "ValueError: no good 7" in str(res.error_in_exec)
    row = ledger.get("bad-1")
    assert row["status"] == "FAILED" and row["exit_code"] == 1
    assert (ledger.run_dir("bad-1") / "output" / "failure").is_file()


def test_a_sweep_runs_every_child_through_the_warm_pool(ip, ledger: Ledger, engine: Engine) -> None:
    before = _run_images(engine)
    ip.run_cell("%config LocalBackend.run_pool_size = 2")
    res = ip.run_cell(
        "%%remote_run --local --name sw --sweep k=1,2,3,4,5 --max-parallel 3\ny = k * 10"
    )
    assert res.error_in_exec is None, res.error_in_exec
    frame = ip.user_ns["y"]
    assert sorted(frame["y"]) == [10, 20, 30, 40, 50]
    assert all(ledger.get(f"sw-{i}")["status"] == "SUCCEEDED" for i in range(1, 7))
    assert _run_images(engine) == before

    # The sweep's extra runner containers go once it ends: back to run_pool_size (2).
    def waiting() -> list[str]:
        pool_role = labels.ROLE_RUN_POOL
        return [c.name for c in own_containers(engine) if c.labels.get(labels.ROLE) == pool_role]

    deadline = time.monotonic() + 10
    while len(waiting()) > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(waiting()) <= 2, waiting()
    time.sleep(1.5)  # a refill after the sweep keeps to the size too
    assert len(waiting()) <= 2, waiting()


@pytest.mark.parametrize("pool_size", [1, 0])
def test_runs_leave_no_container_once_the_kernel_is_gone(
    ip, engine: Engine, pool_size: int
) -> None:
    ip.run_cell(f"%config LocalBackend.run_pool_size = {pool_size}")
    for _ in range(3):
        res = ip.run_cell("%%remote_run --local --name leak\nz = 1")
        assert res.error_in_exec is None, res.error_in_exec
    warm.close_all()  # what the kernel's exit does
    assert own_containers(engine) == []


def test_a_runner_that_finished_before_its_wake_up_signal_is_a_finished_run(
    ip, ledger: Ledger, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the order seen on a loaded machine: the waiter finds its claim, runs the cell
    and exits before SIGWINCH arrives. The run succeeds with its outputs (it was read as a
    dead waiter and removed, outputs and all)."""
    from nbcontainer_kernel.docker.engine import Engine as EngineClass

    real_signal = EngineClass.signal
    late: list[str] = []

    def signal_after_the_work(self: EngineClass, ident: str, signum: int | str) -> bool:
        if signum == "SIGWINCH":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info = self.inspect(ident) or {}
                if not (info.get("State") or {}).get("Running"):
                    late.append(ident)
                    break
                time.sleep(0.1)
        return real_signal(self, ident, signum)

    monkeypatch.setattr(EngineClass, "signal", signal_after_the_work)
    ip.run_cell("%config LocalBackend.run_pool_size = 1")
    res = ip.run_cell("%%remote_run --local --name fast\nanswer = 6 * 7")
    assert res.error_in_exec is None, res.error_in_exec
    assert late, "the signal came before the container ended: the order was not forced"
    assert ip.user_ns["answer"] == 42
    row = ledger.get("fast-1")
    assert row["status"] == "SUCCEEDED" and row["verified"] == "signed"

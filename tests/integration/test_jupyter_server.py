"""A real JupyterLab server runs the kernelspec: launcher listing, execution over
its websocket, shutdown, and recovery after the server is killed with SIGKILL."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import inspected, run_gc
from tests.lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    server = Lab(tmp_path)
    yield server
    server.stop()


def _kernel_containers(engine: Engine, kernel_id: str) -> list:
    return labels.kernel_containers(engine, kernel_id)


def test_lab_lists_starts_runs_and_stops_the_containerized_kernel(
    engine: Engine, make_kernelspec, lab: Lab
) -> None:
    name = make_kernelspec("nbc-lab")
    specs = lab.get("/api/kernelspecs").json()["kernelspecs"]
    assert specs[name]["spec"]["display_name"] == f"test {name}"  # what the launcher shows

    kernel = lab.post("/api/kernels", {"name": name}).json()
    containers = _kernel_containers(engine, kernel["id"])
    assert len(containers) == 1
    assert containers[0].labels[labels.OWNER_PID] == str(lab.proc.pid)
    out = lab.execute(
        kernel["id"],
        "import os, socket\nprint(os.environ['NBCONTAINER_IMAGE'], socket.gethostname())",
    )
    image, host = out.split()
    assert image == "nbcontainer/python:3.11" and containers[0].id.startswith(host)

    assert lab.delete(f"/api/kernels/{kernel['id']}").status_code == 204
    assert _kernel_containers(engine, kernel["id"]) == []


def test_sigkilled_server_leaves_a_container_that_gc_removes(
    engine: Engine, make_kernelspec, lab: Lab
) -> None:
    name = make_kernelspec("nbc-lab-kill")
    kernel = lab.post("/api/kernels", {"name": name}).json()
    [container] = _kernel_containers(engine, kernel["id"])
    lab.proc.send_signal(signal.SIGKILL)
    lab.proc.wait(timeout=10)
    assert inspected(engine, container.id)["State"]["Running"]
    out = run_gc()
    assert container.name in out
    assert engine.inspect(container.id) is None

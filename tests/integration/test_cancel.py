"""The panel's Cancel while the cell waits, in a containerized kernel driven by
jupyter_client: the click is the same comm message a browser sends. (The browser itself
clicks it in tests/e2e.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import run

SLOW = "import time\nfor i in range(60):\n    print('tick', i, flush=True)\n    time.sleep(1)"


def _cancel_button(kc: Any, msg_id: str, timeout: float = 180) -> str:
    """The comm id of the Cancel button of the panel that the cell `msg_id` displays."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["msg_type"] == "comm_open" and msg["parent_header"].get("msg_id") == msg_id:
            state = msg["content"]["data"].get("state", {})
            if state.get("_model_name") == "ButtonModel" and state.get("description") == "Cancel":
                return msg["content"]["comm_id"]
    raise AssertionError("the panel's Cancel button never appeared")


def _click(kc: Any, comm_id: str) -> None:
    msg = kc.session.msg(
        "comm_msg",
        {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
    )
    kc.shell_channel.send(msg)


def _wait_running(engine: Engine, ledger: Ledger, run_ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = {r["id"]: r["status"] for r in ledger.find()}
        if all(statuses.get(r) == "RUNNING" for r in run_ids):
            return
        time.sleep(0.2)
    raise AssertionError(f"not all running: {statuses}")


def _reply(kc: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _cancel_while_waiting(
    engine: Engine, make_kernelspec, ledger: Ledger, tmp_path: Path, line: str, running: list[str]
) -> tuple[float, dict[str, Any]]:
    km = KernelManager(kernel_name=make_kernelspec("nbc-cancel"))
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        assert run(kc, "%config RemoteRun.progress = 'widget'")[0]["status"] == "ok"
        msg_id = kc.execute(f"%%remote_run --local {line}\n{SLOW}")
        button = _cancel_button(kc, msg_id)
        _wait_running(engine, ledger, running)
        clicked = time.monotonic()
        _click(kc, button)
        reply = _reply(kc, msg_id, timeout=60)
        took = time.monotonic() - clicked
        print(
            f"[figure] Cancel of {' '.join(running)}: the cell ended {took:.2f} s after the click"
        )
        return took, reply
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_cancel_stops_a_running_cell_within_seconds(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    took, reply = _cancel_while_waiting(
        engine, make_kernelspec, ledger, tmp_path, "--name cx", ["cx-1"]
    )
    assert took < 5, f"the cell ended {took:.1f} s after the click"
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "RunCancelled"
    assert len(reply["content"]["traceback"]) == 1, "one short line, not a traceback"
    row = ledger.get("cx-1")
    assert row["status"] == "CANCELLED" and row["failure"] == "cancelled"
    assert run_containers(engine, "cx-1") == []


def test_cancel_stops_every_child_of_a_sweep(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    took, reply = _cancel_while_waiting(
        engine,
        make_kernelspec,
        ledger,
        tmp_path,
        "--name cs --sweep n=1,2,3 --max-parallel 3",
        ["cs-2", "cs-3", "cs-4"],
    )
    assert took < 5, f"the cell ended {took:.1f} s after the click"
    assert reply["content"]["ename"] == "RunCancelled"
    assert {r["id"]: r["status"] for r in ledger.find(name="cs")} == {
        "cs-1": "CANCELLED",
        "cs-2": "CANCELLED",
        "cs-3": "CANCELLED",
        "cs-4": "CANCELLED",
    }
    for child in ("cs-2", "cs-3", "cs-4"):
        assert run_containers(engine, child) == []

"""Helpers shared by unit and integration tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager

from nbcontainer_kernel.remote.results import RunResult
from nbcontainer_kernel.runtime.trust import KEY_ENV, new_key
from nbcontainer_kernel.snapshots import snapshot


def run_runner(
    tmp_path: Path,
    ns: dict[str, Any],
    cell: str,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    hyper: dict[str, Any] | None = None,
    key: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], RunResult]:
    """Snapshot `ns` and `cell`, then run the in-container runner on the host (its paths moved
    by environment variables), signed with `key` (a new one by default)."""
    snap = snapshot(ns, cell, dest=tmp_path / "snap", cwd=tmp_path, include_dependencies=False)
    ml = tmp_path / "ml"
    if hyper is not None:
        (ml / "input" / "config").mkdir(parents=True)
        (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    key = key or new_key()
    run_env = {
        **os.environ,
        "NBCONTAINER_SNAPSHOT_DIR": str(snap.directory),
        "NBCONTAINER_ML_ROOT": str(ml),
        KEY_ENV: key,
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "nbcontainer_kernel.runtime.main", *args],
        env=run_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    return proc, RunResult(image="host", exit_code=proc.returncode, output_dir=ml, key=key)


def run(kc, code: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    outputs: list[dict] = []
    reply = kc.execute_interactive(
        code, timeout=timeout, output_hook=lambda msg: outputs.append(msg)
    )
    return reply["content"], outputs


def start_busy_loop(kc, timeout: float = 60) -> str:
    """Execute a busy loop and return its msg_id once the loop runs (its marker came on
    iopub): an interrupt sent then lands in the cell, not in the kernel's own code on a
    machine slow to start the cell (a fixed sleep before the interrupt raced it).

    Sent with stop_on_error off: the interrupt's error must not abort the test's next
    request (ipykernel 7 aborts what reaches its shell thread before its own "stop
    aborting" message, which a quick next request can beat)."""
    msg_id = kc.execute("print('looping', flush=True)\nwhile True: pass", stop_on_error=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and "looping" in msg["content"]["text"]
        ):
            return msg_id
    raise TimeoutError("the busy loop did not start")


def interrupt_and_reply(km, kc, msg_id: str, timeout: float = 60) -> dict:
    """Interrupt the kernel; return the shell reply to `msg_id`."""
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return reply


@contextlib.contextmanager
def started(kernel_name: str, **start_kw: Any) -> Iterator[tuple[KernelManager, Any]]:
    """A started kernel and a ready client; shut down (and its container removed) afterwards."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(**start_kw)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def result_contents(model_dir: Path) -> dict[str, Any]:
    """A run's result files as comparable contents: each Arrow file's table (schema with its
    metadata, and values: a run whose outputs cross a network compresses them, so its bytes
    differ while its table does not), every other file's SHA-256. The manifest (it names the
    run and its key) and metrics.json (it holds when each metric was logged) are left out."""
    import hashlib

    import pyarrow.ipc as ipc

    out: dict[str, Any] = {}
    for p in sorted(model_dir.iterdir()):
        if not p.is_file() or p.name in ("results.json", "metrics.json"):
            continue
        if p.suffix == ".arrow":
            with ipc.open_file(str(p)) as reader:
                table = reader.read_all()
            out[p.name] = (table.schema.to_string(show_schema_metadata=True), table.to_pydict())
        else:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_gc() -> str:
    """`nbcontainer gc` in a process of its own (as a user runs it); its output."""
    return subprocess.run(
        [sys.executable, "-m", "nbcontainer_kernel.cli", "gc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def stdout_of(outputs: list[dict]) -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def execute_notebook(nb: Any, cwd: Path, kernel_name: str | None = None, timeout: int = 600) -> Any:
    """Execute `nb` in place with nbclient, as a reader's Jupyter would, in directory `cwd`
    (the kernelspec `kernel_name`, or the notebook's own)."""
    from nbclient import NotebookClient

    kwargs: dict[str, Any] = {"kernel_name": kernel_name} if kernel_name else {}
    NotebookClient(
        nb,
        timeout=timeout,
        startup_timeout=60,
        resources={"metadata": {"path": str(cwd)}},
        **kwargs,
    ).execute()
    return nb


def record_calls(backend_name: str, service: str, operation: str) -> list[dict[str, Any]]:
    """The requests the backend's `service` client sends to `operation`, as they are sent
    (after botocore checked them against the service model)."""
    from nbcontainer_kernel.backends.registry import get_backend

    backend: Any = get_backend(backend_name)
    # Clients made under an earlier test's environment would be made again by the run's
    # configure (and the hook lost with them): make them for this environment now.
    backend._clients.refresh()
    made: list[dict[str, Any]] = []
    backend._client(service).meta.events.register(
        f"provide-client-params.{service}.{operation}",
        lambda params, **_: made.append(json.loads(json.dumps(params, default=str))),
    )
    return made


def save_executed(nb: Any, name: str) -> None:
    """With NBCONTAINER_SAVE_EXECUTED=1, keep an example's executed copy in
    examples/executed/ (what the README links to)."""
    if os.environ.get("NBCONTAINER_SAVE_EXECUTED"):
        import nbformat

        target = Path(__file__).resolve().parents[1] / "examples" / "executed"
        target.mkdir(exist_ok=True)
        nbformat.write(nb, target / name)


def full_tier() -> bool:
    """Whether the tests run at full scale (`make test`), not the quick unit tier."""
    from hypothesis import settings

    return settings.default.max_examples >= 100


def examples(full: int) -> int:
    """A property test's example count: `full` in the default profile (100 examples),
    scaled down with the profile (`make unit` runs a tenth)."""
    from hypothesis import settings

    return max(1, full * settings.default.max_examples // 100)


def docker_provisioner(km: Any) -> Any:
    """A kernel manager's provisioner, which the tests' kernelspecs make ours (jupyter_client
    types it as the base class, or None before a start)."""
    from nbcontainer_kernel.kernel.provisioner import DockerProvisioner

    assert isinstance(km.provisioner, DockerProvisioner), km.provisioner
    return km.provisioner


def inspected(engine: Any, ident: str | None) -> dict[str, Any]:
    """What the daemon says of a container the test expects to exist."""
    info = engine.inspect(ident or "")
    assert info is not None, f"container {ident} is gone"
    return dict(info)


def new_notebook(**kw: Any) -> Any:
    """nbformat's, imported when a test makes one (nbformat's validation imports take a
    second, which every parallel worker would pay at collection)."""
    from nbformat.v4 import new_notebook as make

    return make(**kw)


def new_code_cell(source: str = "", **kw: Any) -> Any:
    from nbformat.v4 import new_code_cell as make

    return make(source, **kw)


def ipython_shell() -> Any:
    """IPython's one test shell of this process, started on first use (IPython.testing
    imports matplotlib: a cost every parallel worker would pay at collection)."""
    from IPython.testing import globalipapp

    globalipapp.start_ipython()  # once per process; later calls do nothing
    return globalipapp.get_ipython()

"""Cancel while the cell waits in a kernel with ipykernel 6, which delivers comm messages
only between cells: the magic pumps the kernel's pending messages while it waits
(jupyter-ui-poll). A real ipykernel 6 kernel, in a virtualenv of its own that is made once
and kept like the cached images, runs on the host; the run is the rerun of an image an
earlier run made, so nothing is built for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest
from jupyter_client import KernelManager

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import run

from .test_cancel import _cancel_button, _click, _reply, _wait_running

ROOT = Path(__file__).resolve().parents[2]
IPYKERNEL6 = [
    "ipykernel==6.29.5",
    "ipywidgets>=8",
    "jupyter-ui-poll>=1.0",
    "docker>=7",
    "platformdirs>=3",
    "psutil>=5.9",
    "cloudpickle>=2.2",
]


@pytest.fixture(scope="session")
def ipykernel6_python() -> Path:
    """A virtualenv with ipykernel 6 and this package (editable, so it is this checkout)."""
    venv = Path(platformdirs.user_cache_dir("nbcontainer")) / "test-ipykernel6"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.json"
    wanted = {"requirements": IPYKERNEL6, "package": str(ROOT)}
    if not (python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *IPYKERNEL6], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
        stamp.write_text(json.dumps(wanted))
    return python


@pytest.fixture
def ipykernel6_kernel(ipykernel6_python: Path, tmp_path: Path) -> Iterator[str]:
    data = tmp_path / "jupyter"
    spec = data / "kernels" / "py-ipykernel6"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(ipykernel6_python),
                    "-m",
                    "ipykernel_launcher",
                    "--ext=nbcontainer_kernel",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "ipykernel 6",
                "language": "python",
            }
        )
    )
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(data)
    yield "py-ipykernel6"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def test_cancel_reaches_an_ipykernel6_kernel_while_it_waits(
    engine: Engine, ip, ledger: Ledger, ipykernel6_kernel: str
) -> None:
    ip.user_ns["seconds"] = 1
    made = ip.run_cell(
        "%%remote_run --local --name six\nimport time\nfor i in range(seconds):\n"
        "    print('tick', i, flush=True)\n    time.sleep(1)"
    )
    assert made.error_in_exec is None, made.error_in_exec
    km = KernelManager(kernel_name=ipykernel6_kernel)
    km.start_kernel(env={**os.environ, "NBCONTAINER_RUNS_DB": str(ledger.path)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        version = run(kc, "import ipykernel; print(ipykernel.__version__)")[1]
        assert "6.29.5" in "".join(o["content"].get("text", "") for o in version)
        assert run(kc, "%config RemoteRun.progress = 'widget'")[0]["status"] == "ok"
        msg_id = kc.execute("%%remote_run --local --rerun six-1 -p seconds=60\n# 60 s this time")
        button = _cancel_button(kc, msg_id)
        _wait_running(engine, ledger, ["six-2"])
        clicked = time.monotonic()
        _click(kc, button)
        reply = _reply(kc, msg_id, timeout=60)
        took = time.monotonic() - clicked
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert took < 5, f"the cell ended {took:.1f} s after the click"
    assert reply["content"]["ename"] == "RunCancelled"
    assert ledger.get("six-2")["status"] == "CANCELLED"
    assert run_containers(engine, "six-2") == []

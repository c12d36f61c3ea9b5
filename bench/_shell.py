"""The benches' IPython shell (the extension loaded, a ledger of the bench's own under
`tmp`, progress as text, which the benches hide) and the AWS test bed they run against."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def testbed(tmp: Path, base: str) -> Iterator[None]:
    """The test bed started under `tmp` (its environment put in os.environ, `base` the run
    images' base, `tmp` the working directory), stopped at the end."""
    script = str(ROOT / "scripts" / "aws-testbed.sh")
    state = tmp / "testbed"
    out = subprocess.run(
        [script, "start", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)},
    )
    os.environ.update(dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line))
    os.environ["NBCONTAINER_BASE_IMAGE"] = base
    os.chdir(tmp)
    try:
        yield
    finally:
        subprocess.run([script, "stop", "--state", str(state)], check=False)


def bench_shell(tmp: Path) -> Any:
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcontainer_kernel")
    ip.run_line_magic("config", f"RemoteRun.ledger_path = {str(tmp / 'runs.db')!r}")
    ip.run_line_magic("config", "RemoteRun.progress = 'text'")
    return ip

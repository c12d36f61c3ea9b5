"""The benches' IPython shell: the extension loaded, a ledger of the bench's own under
`tmp`, progress as text (the benches hide it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_shell(tmp: Path) -> Any:
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcontainer_kernel")
    ip.run_line_magic("config", f"RemoteRun.ledger_path = {str(tmp / 'runs.db')!r}")
    ip.run_line_magic("config", "RemoteRun.progress = 'text'")
    return ip

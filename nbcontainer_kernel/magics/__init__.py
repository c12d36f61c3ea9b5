"""IPython magics: %%remote_run, %remote_runs, %remote_compare, %remote_result,
%remote_logs, %remote_attach, %remote_cancel; %nbcontainer_pull."""

from typing import Any

from .remote_run import RemoteRun
from .workdir import WorkdirMagics

__all__ = ["RemoteRun", "WorkdirMagics", "load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics; in a kernel that delivers comm messages while a cell awaits,
    ``%%remote_run`` cells wait that way, so the panel's Cancel works during the run."""
    from . import waiting

    ipython.register_magics(RemoteRun)
    ipython.register_magics(WorkdirMagics)
    waiting.register(ipython)

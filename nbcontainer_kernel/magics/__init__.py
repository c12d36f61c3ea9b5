"""IPython magics: %%remote_run, %remote_runs, %remote_compare, %remote_result,
%remote_logs, %remote_attach, %remote_cancel."""

from .remote_run import RemoteRun

__all__ = ["RemoteRun", "load_ipython_extension"]


def load_ipython_extension(ipython) -> None:  # noqa: ANN001 - IPython's hook
    ipython.register_magics(RemoteRun)

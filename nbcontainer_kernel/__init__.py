"""nbcontainer-kernel: Jupyter kernels in Docker containers, and runs of a kernel's
cells and notebooks in images made from its state.

Importing the package stays cheap and needs nothing but the standard library:
the same package is the in-container runtime of kernel and run images, where
docker-py may not be installed. The API below is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "log_metric",
    "record",
    "snapshot",
    "build_run_image",
    "run_image",
    "Snapshot",
    "RunResult",
    "RemoteExecutionError",
    "runs_frame",
    "metrics_frame",
    "compare_frame",
]

_LAZY = {
    "log_metric": ("nbcontainer_kernel.runtime.metrics", "log_metric"),
    "record": ("nbcontainer_kernel.runtime.recorded", "record"),
    "snapshot": ("nbcontainer_kernel.snapshots", "snapshot"),
    "Snapshot": ("nbcontainer_kernel.snapshots", "Snapshot"),
    "build_run_image": ("nbcontainer_kernel.images.runs", "build_run_image"),
    "run_image": ("nbcontainer_kernel.remote.local_run", "run_image"),
    "RunResult": ("nbcontainer_kernel.remote.results", "RunResult"),
    "RemoteExecutionError": ("nbcontainer_kernel.runtime.errors", "RemoteExecutionError"),
    "runs_frame": ("nbcontainer_kernel.remote.tables", "runs_frame"),
    "metrics_frame": ("nbcontainer_kernel.remote.tables", "metrics_frame"),
    "compare_frame": ("nbcontainer_kernel.remote.tables", "compare_frame"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nbcontainer_kernel' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext nbcontainer_kernel` registers %%remote_run and its friends.

    In a containerized kernel it also removes the kernel's connection file,
    read at start and never needed again, so its keys are in no later commit.
    """
    import contextlib
    import os

    from .config import in_container_kernel
    from .magics import load_ipython_extension as load

    conn = os.environ.get("NBCONTAINER_CONNECTION_FILE")  # set by the provisioner
    if conn and in_container_kernel():
        from .images.package_index import prepare_pip

        # Already gone, or not ours to remove: the commit check refuses it then.
        with contextlib.suppress(OSError):
            os.unlink(conn)
        prepare_pip(ipython)
    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter server extension: the runs API and pages under /nbcontainer/."""
    return [{"module": "nbcontainer_kernel.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension (`jupyter labextension develop` links it)."""
    return [{"src": "labextension", "dest": "nbcontainer-kernel"}]

"""Label names put on every container and image nbcontainer makes, and the
owner identity that lets a sweep tell a live kernel from an orphan.

An owner is a process on a host. A pid alone can be reused after the process
dies, so the identity also holds the process's start time.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.snapshot import now_iso as now_iso  # one format for every timestamp written

if TYPE_CHECKING:
    from .engine import Engine

PREFIX = "io.nbcontainer."
ROLE = PREFIX + "role"
KERNEL_ID = PREFIX + "kernel-id"
OWNER_HOST = PREFIX + "owner-host"
OWNER_PID = PREFIX + "owner-pid"
OWNER_STARTED = PREFIX + "owner-started"
OWNER_USER = PREFIX + "owner-user"
# Set when the owner runs inside a containerized kernel: its pid means nothing on the
# host, so the owner is alive exactly as long as that container exists.
OWNER_CONTAINER = PREFIX + "owner-container"
CREATED = PREFIX + "created"
DETACHED = PREFIX + "detached"  # a --no-wait run: it may outlive its kernel
RUN_ID = PREFIX + "run-id"
VERSION = PREFIX + "version"

# Image facts.
PYTHON = PREFIX + "python"
IPYKERNEL = PREFIX + "ipykernel"
CURVE = PREFIX + "curve"
INPUTS = PREFIX + "inputs"  # digest of what decides a kernel image's content
BASE = PREFIX + "base"
BASE_ID = PREFIX + "base-id"
DEPS_KEY = PREFIX + "deps-key"
SNAPSHOT_DIGEST = PREFIX + "snapshot-digest"
SOURCE_NOTEBOOK = PREFIX + "source-notebook"
PARAMETERS = PREFIX + "parameters"
MODE = PREFIX + "mode"
COMMITTED_FROM = PREFIX + "committed-from"
POOL_SHAPE = PREFIX + "pool-shape"  # a warm pool container's launch shape (kernel/pool.py)

# Roles (values of ROLE).
ROLE_KERNEL = "kernel"
ROLE_KERNEL_POOL = "kernel-pool"  # waiting in a warm pool; a kernel once claimed (renamed)
ROLE_KERNEL_IMAGE = "kernel-image"
ROLE_PROBE = "probe"
ROLE_RUN = "run"
ROLE_DEPS_IMAGE = "deps-image"
ROLE_RUN_IMAGE = "run-image"
ROLE_RUNTIME_IMAGE = "runtime-image"  # a dependency layer + this package + the runner
ROLE_RUN_POOL = "run-pool"  # waiting in a warm pool; a --local run once claimed (renamed)

OCI_CREATED = "org.opencontainers.image.created"
OCI_TITLE = "org.opencontainers.image.title"
OCI_SOURCE = "org.opencontainers.image.source"
OCI_VERSION = "org.opencontainers.image.version"
OCI_BASE_NAME = "org.opencontainers.image.base.name"

SOURCE_URL = "https://github.com/nbcontainer/nbcontainer-kernel"


@dataclass(frozen=True)
class Owner:
    """A process that owns containers: host name, pid and process start time."""

    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()))

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Owner | None:
        try:
            return cls(labels[OWNER_HOST], int(labels[OWNER_PID]), labels.get(OWNER_STARTED, ""))
        except (KeyError, ValueError):
            return None

    def labels(self) -> dict[str, str]:
        return {
            OWNER_HOST: self.host,
            OWNER_PID: str(self.pid),
            OWNER_STARTED: self.started,
            OWNER_USER: user(),
        }

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """True when this owner's process still runs (only answerable on its own host)."""
        if not self.is_local():
            return True  # cannot tell from here: never treat another host's kernels as orphans
        import psutil

        try:
            return _start_time(self.pid) == self.started or not self.started
        except psutil.NoSuchProcess:
            return False


def _start_time(pid: int) -> str:
    # psutil is imported here: this module is also imported inside run images.
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.AccessDenied:
        return ""


def user() -> str:
    """The user this process runs as (a uid when there is no passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (e.g. an arbitrary uid in a container)
        return str(os.getuid())


def container_labels(role: str, **extra: str) -> dict[str, str]:
    """Labels for a container this process makes (owner, role, created, version)."""
    from .. import __version__

    labels = {ROLE: role, CREATED: now_iso(), VERSION: __version__}
    labels.update(Owner.current().labels())
    from ..config import in_container_kernel

    if in_container_kernel():
        labels[OWNER_CONTAINER] = socket.gethostname()  # Docker sets it to the container id
    labels.update({PREFIX + k.replace("_", "-"): v for k, v in extra.items()})
    return labels


# ------------------------------------------------- finding a kernel's container
def kernel_container_name(kernel_id: str) -> str:
    """The name a claimed pool container takes: gc, `docker ps` and re-attach find it by it."""
    return f"nbcontainer-kernel-{kernel_id}"


def kernel_containers(engine: Engine, kernel_id: str, all: bool = True) -> list[Any]:
    """A kernel's container: one started cold carries the kernel's id in a label, one
    claimed from the pool (made before its kernel existed) in its name."""
    by_label = engine.containers({KERNEL_ID: kernel_id}, all=all)
    if by_label:
        return by_label
    claimed = engine.container(kernel_container_name(kernel_id))
    if claimed is None or (not all and claimed.status != "running"):
        return []
    return [claimed]

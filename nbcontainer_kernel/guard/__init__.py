"""A Docker API guard for containerized kernels (``docker_access = guarded``).

:mod:`.policy` decides what a kernel may ask of the daemon; :mod:`.server` serves the
socket kernels see as /var/run/docker.sock and forwards what the policy allows.
"""

from .policy import GUARD_KERNEL, Grant, Refused
from .server import DockerGuard, current_guard, process_guard, remove_stale

__all__ = [
    "GUARD_KERNEL",
    "DockerGuard",
    "Grant",
    "Refused",
    "current_guard",
    "process_guard",
    "remove_stale",
]

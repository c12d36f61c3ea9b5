"""The guard's vocabulary: what a kernel is granted, what the daemon tells about it, and
how a refusal is said. Shared by the policy's parts (:mod:`.policy`, :mod:`.create`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..docker import labels

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "GUARD_KERNEL",
    "LOCAL_LOG_DRIVERS",
    "MAX_JSON_BODY",
    "SAFE_CAPABILITIES",
    "Grant",
    "Live",
    "Lookups",
    "Refused",
]

#: The label the guard puts on every container and image a kernel makes through it.
GUARD_KERNEL = labels.PREFIX + "guard-kernel"
#: Capabilities a guarded kernel's containers keep (Docker's defaults less MKNOD,
#: NET_RAW, SYS_CHROOT, AUDIT_WRITE, SETFCAP, SETPCAP and FSETID). They matter only to
#: a container whose user is root, which is the case only when the kernel's own is.
SAFE_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "NET_BIND_SERVICE",
    "SETGID",
    "SETUID",
)
#: Containers a guarded kernel may have at once (created or running), unless its
#: kernelspec's guard_max_containers says otherwise.
DEFAULT_MAX_CONTAINERS = 16
#: Log drivers that write on this host only (the others send logs over the network).
LOCAL_LOG_DRIVERS = ("", "json-file", "local", "none")

# Larger create, commit or exec bodies are refused rather than held in memory.
MAX_JSON_BODY = 1 << 20


class Refused(Exception):
    """A request the guard does not forward: HTTP `status`, and why."""

    def __init__(self, what: str, reason: str, status: int = 403) -> None:
        self.what, self.reason, self.status = what, reason, status
        super().__init__(f"nbcontainer's Docker guard refused {what}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.reason, self.status))

    def body(self) -> bytes:
        return json.dumps({"message": str(self)}).encode()


@dataclass(frozen=True)
class Grant:
    """What one kernel's container may do through the guard (made by the provisioner)."""

    kernel_id: str
    container_id: str  # the kernel's own container (full id)
    mounts: tuple[tuple[str, bool], ...] = ()  # host sources the kernel has, read-only?
    memory: int | None = None  # bytes: all its containers together
    nano_cpus: int | None = None  # likewise
    gpus: str | None = None  # the kernelspec's gpus option ('all', '2', 'device=0,1')
    user: str = "0:0"  # the kernel's own uid:gid: every container it makes runs as it
    max_containers: int = DEFAULT_MAX_CONTAINERS

    def forced_labels(self) -> dict[str, str]:
        """Labels every container and image made through the guard carries."""
        return {GUARD_KERNEL: self.kernel_id, labels.OWNER_CONTAINER: self.container_id[:12]}

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        return int(uid), int(gid or uid)


@dataclass(frozen=True)
class Live:
    """One of a kernel's containers that holds resources (created, running, paused)."""

    container_id: str
    name: str
    state: str
    memory: int
    nano_cpus: int


@dataclass
class Lookups:
    """The daemon facts a decision needs (the guard answers them from the daemon)."""

    container: Callable[[str], dict[str, Any] | None]  # inspect, None when there is none
    image: Callable[[str], dict[str, Any] | None]
    exec_ids: set[str] = field(default_factory=set)  # exec instances this kernel made
    owned: set[str] = field(default_factory=set)  # full ids of containers it made (a cache)
    live: Callable[[], list[Live]] = list  # the kernel's containers that hold resources

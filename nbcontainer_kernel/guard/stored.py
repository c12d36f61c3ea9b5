"""What the daemon understood: a second line of defence after every create.

The guard writes each create afresh from a model (:mod:`.canonical`), so the daemon
should store exactly what the policy allowed. These checks read what it did store
(``GET /containers/{id}/json``, ``GET /exec/{id}/json``, the committed image) and name
the first field outside the policy, for a parser difference nobody foresaw: the guard
then removes what was made and answers 403. Pure functions over inspect answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .create import capability_name, nano_cpus
from .grants import GUARD_KERNEL, LOCAL_LOG_DRIVERS, SAFE_CAPABILITIES, Grant

__all__ = ["container_outside", "exec_outside", "image_outside", "volume_outside"]


_cap = capability_name


def container_outside(info: dict[str, Any], grant: Grant, *, cgroup_v1: bool = False) -> str:
    """The first thing the daemon stored for a new container that the policy does not
    allow ('' when all is within it)."""
    config = info.get("Config") or {}
    host = info.get("HostConfig") or {}
    checks: tuple[Callable[[], str], ...] = (
        lambda: _identity(config, grant),
        lambda: _host_fields(host),
        lambda: _namespaces(host, cgroup_v1),
        lambda: _privileges(host),
        lambda: _outside_world(host, grant),
        lambda: _mounts(info.get("Mounts") or [], grant),
        lambda: _limits(host, grant),
    )
    return next((found for found in (check() for check in checks) if found), "")


#: HostConfig fields a guarded kernel's container leaves unset (empty, zero or false).
_UNSET_FIELDS = (
    "Privileged",
    "PublishAllPorts",
    "OomKillDisable",
    "Devices",
    "DeviceCgroupRules",
    "Sysctls",
    "VolumesFrom",
    "Links",
    "GroupAdd",
    "Ulimits",
    "Capabilities",
    "StorageOpt",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CgroupParent",
    "VolumeDriver",
    "Cgroup",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "KernelMemory",
    "KernelMemoryTCP",
)


def _identity(config: dict[str, Any], grant: Grant) -> str:
    """The kernel's own user, its forced labels, no ONBUILD."""
    uid, gid = grant.uid_gid
    if config.get("User") != f"{uid}:{gid}":
        return f"Config.User is {config.get('User')!r}, not the kernel's {uid}:{gid}"
    found = config.get("Labels") or {}
    for key, value in grant.forced_labels().items():
        if found.get(key) != value:
            return f"Config.Labels[{key!r}] is {found.get(key)!r}"
    return "Config.OnBuild is set" if config.get("OnBuild") else ""


def _host_fields(host: dict[str, Any]) -> str:
    for name in _UNSET_FIELDS:
        if host.get(name):
            value = "true" if host[name] is True else repr(host[name])
            return f"HostConfig.{name} is {value}"
    if int(host.get("OomScoreAdj") or 0) < 0:
        return "HostConfig.OomScoreAdj is negative"
    if host.get("Runtime") not in (None, "", "runc"):
        return f"HostConfig.Runtime is {host['Runtime']!r}"
    return ""


def _namespaces(host: dict[str, Any], cgroup_v1: bool) -> str:
    if host.get("NetworkMode") not in ("", "default", "bridge", "none"):
        return f"HostConfig.NetworkMode is {host.get('NetworkMode')!r}"
    allowed_modes = {
        "PidMode": {""},
        "UTSMode": {""},
        "UsernsMode": {""},
        "IpcMode": {"", "private", "shareable", "none"},
        # cgroup v1 has no cgroup namespace of its own: the daemon stores 'host' for all.
        "CgroupnsMode": {"", "private", "host"} if cgroup_v1 else {"", "private"},
    }
    for name, allowed in allowed_modes.items():
        if (host.get(name) or "") not in allowed:
            return f"HostConfig.{name} is {host.get(name)!r}"
    return ""


def _privileges(host: dict[str, Any]) -> str:
    security = host.get("SecurityOpt") or []
    if not any(str(o).startswith("no-new-privileges") for o in security):
        return "HostConfig.SecurityOpt lacks no-new-privileges"
    if [o for o in security if not str(o).startswith("no-new-privileges")]:
        return f"HostConfig.SecurityOpt is {security!r}"
    if "ALL" not in {_cap(c) for c in host.get("CapDrop") or []}:
        return f"HostConfig.CapDrop is {host.get('CapDrop')!r}, not ALL"
    beyond = {_cap(c) for c in host.get("CapAdd") or []} - set(SAFE_CAPABILITIES)
    if beyond:
        return f"HostConfig.CapAdd has {sorted(beyond)[0]}"
    if not host.get("MaskedPaths") or not host.get("ReadonlyPaths"):
        return "HostConfig.MaskedPaths or ReadonlyPaths is empty (/proc unmasked)"
    return ""


def _outside_world(host: dict[str, Any], grant: Grant) -> str:
    """Logs, restarts, published ports and devices: what reaches beyond the container."""
    if ((host.get("LogConfig") or {}).get("Type") or "") not in LOCAL_LOG_DRIVERS:
        return f"HostConfig.LogConfig.Type is {host['LogConfig']['Type']!r}"
    if ((host.get("RestartPolicy") or {}).get("Name") or "") not in ("", "no"):
        return f"HostConfig.RestartPolicy.Name is {host['RestartPolicy']['Name']!r}"
    for port, bindings in (host.get("PortBindings") or {}).items():
        for b in bindings or []:
            if (b or {}).get("HostIp") not in ("127.0.0.1", "::1"):
                return f"HostConfig.PortBindings[{port!r}].HostIp is {(b or {}).get('HostIp')!r}"
    if host.get("DeviceRequests") and not grant.gpus:
        return "HostConfig.DeviceRequests is set"
    return ""


def _mounts(stored: list[dict[str, Any]], grant: Grant) -> str:
    """Binds of the kernel's own mounts only (never writable where the kernel's is not),
    local volumes and tmpfs."""
    mounts = {os.path.realpath(m): ro for m, ro in grant.mounts}
    for i, mount in enumerate(stored):
        kind = mount.get("Type")
        if kind == "bind":
            source = mount.get("Source") or ""
            if source not in mounts:
                return f"Mounts[{i}] binds {source}, not one of the kernel's own mounts"
            if mounts[source] and mount.get("RW"):
                return f"Mounts[{i}] binds {source} writable; the kernel has it read-only"
            if (mount.get("Propagation") or "") not in ("", "private", "rprivate"):
                return f"Mounts[{i}].Propagation is {mount.get('Propagation')!r}"
        elif kind == "volume":
            if (mount.get("Driver") or "local") != "local":
                return f"Mounts[{i}] is a volume of driver {mount.get('Driver')!r}"
        elif kind != "tmpfs":
            return f"Mounts[{i}] is of type {kind!r}"
    return ""


def _limits(host: dict[str, Any], grant: Grant) -> str:
    if grant.memory and not 0 < int(host.get("Memory") or 0) <= grant.memory:
        return f"HostConfig.Memory is {host.get('Memory')}, beyond the kernel's {grant.memory}"
    if grant.nano_cpus:
        nano = nano_cpus(host)
        if not 0 < nano <= grant.nano_cpus:
            return f"HostConfig.NanoCpus is {nano}, beyond the kernel's {grant.nano_cpus}"
    return ""


def volume_outside(info: dict[str, Any]) -> str:
    """An anonymous volume a new container got: the local driver with no options."""
    if (info.get("Driver") or "local") != "local":
        return f"volume {info.get('Name', '')[:12]} has the driver {info.get('Driver')!r}"
    if info.get("Options"):
        return f"volume {info.get('Name', '')[:12]} has driver options {info['Options']!r}"
    return ""


def exec_outside(info: dict[str, Any], grant: Grant) -> str:
    """The first thing the daemon stored for a new exec instance outside the policy."""
    process = info.get("ProcessConfig") or {}
    if process.get("privileged"):
        return "the exec is privileged"
    uid, gid = grant.uid_gid
    if process.get("user") not in (f"{uid}:{gid}",):
        return f"the exec's user is {process.get('user')!r}, not the kernel's {uid}:{gid}"
    return ""


def image_outside(info: dict[str, Any], grant: Grant) -> str:
    """A committed image: the kernel's labels, no build triggers."""
    config = info.get("Config") or {}
    found = config.get("Labels") or {}
    if found.get(GUARD_KERNEL) != grant.kernel_id:
        return f"the image's Config.Labels[{GUARD_KERNEL!r}] is {found.get(GUARD_KERNEL)!r}"
    if config.get("OnBuild"):
        return "the image has ONBUILD triggers"
    return ""

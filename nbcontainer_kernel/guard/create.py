"""A container create, checked and rewritten with the safe defaults every container a
guarded kernel makes gets (see :mod:`.policy` for the whole set of rules)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

from .grants import LOCAL_LOG_DRIVERS, SAFE_CAPABILITIES, Grant, Live, Lookups, Refused

__all__ = ["capability_name", "check_create", "check_exec", "check_totals", "nano_cpus"]

_LOG_OPTIONS = {"max-size", "max-file", "compress", "mode", "max-buffer-size"}
_MIN_MEMORY = 6 << 20  # the daemon's own minimum
_MIN_NANO_CPUS = 10_000_000  # 0.01 CPU


def check_exec(body: dict[str, Any], grant: Grant) -> dict[str, Any]:
    what = "POST /containers/{id}/exec"
    if body.get("Privileged"):
        raise Refused(what, "Privileged is true")
    body.pop("Container", None)  # the path names the container (resolved to its full id)
    body["User"] = _user(body.get("User", ""), grant, what, "User")
    body["Privileged"] = False
    return body


def _user(asked: str, grant: Grant, what: str, name: str) -> str:
    """The kernel's own uid:gid; a request may name it (or its uid alone), nothing else."""
    uid, gid = grant.uid_gid
    if asked in ("", grant.user, f"{uid}:{gid}", str(uid)):
        return f"{uid}:{gid}"
    raise Refused(
        what,
        f"{name} is {asked[:40]!r}: a guarded kernel's containers run as the kernel's own "
        f"user ({uid}:{gid})",
    )


# The host configuration fields a container may have as asked (types checked by the model).
_HOST_FREE = {
    "AutoRemove",
    "BlkioWeight",
    "ConsoleSize",
    "ContainerIDFile",
    "CpuShares",
    "CpusetCpus",
    "CpusetMems",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "Init",
    "MemoryReservation",
    "MemorySwappiness",
    "PidsLimit",
    "ReadonlyRootfs",
    "ShmSize",
    "Tmpfs",
}
# Fields checked one by one below; any other field is refused when it is set.
_HOST_CHECKED = {
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "CpuQuota",
    "CpuPeriod",
    "Binds",
    "Mounts",
    "PortBindings",
    "DeviceRequests",
    "NetworkMode",
    "IpcMode",
    "CgroupnsMode",
    "PidMode",
    "UTSMode",
    "UsernsMode",
    "SecurityOpt",
    "CapAdd",
    "CapDrop",
    "LogConfig",
    "RestartPolicy",
    "OomScoreAdj",
    "Runtime",
    "Isolation",
}
_NETWORKS = {"", "default", "bridge", "none"}
_MODES = {
    "IpcMode": {"", "private", "shareable", "none"},
    "CgroupnsMode": {"", "private"},
    "PidMode": {""},
    "UTSMode": {""},
    "UsernsMode": {""},
}
_NO_NEW_PRIVILEGES = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
_REFUSED_WHY = {
    "Privileged": "is true: a guarded kernel's containers run unprivileged",
    "PublishAllPorts": "is true: ports are published on 127.0.0.1 only, one by one",
    "OomKillDisable": "is true: not allowed for a guarded kernel's containers",
    "MaskedPaths": "is set: containers keep Docker's defaults",
    "ReadonlyPaths": "is set: containers keep Docker's defaults",
    "Capabilities": "is set: capabilities are the guard's",
}


def check_create(body: dict[str, Any], grant: Grant, look: Lookups | None = None) -> dict[str, Any]:
    """A canonical create body, checked, with the safe defaults forced; Refused naming
    the first field that is not allowed. `body` is the model's decoding (canonical keys)."""
    what = "POST /containers/create"

    def refuse(name: str, why: str) -> Refused:
        return Refused(what, f"{name} {why}")

    if body.get("OnBuild"):
        raise refuse("OnBuild", "is set: a guarded kernel's containers carry no build triggers")
    out = dict(body)
    out["User"] = _user(body.get("User", ""), grant, what, "User")
    host: dict[str, Any] = dict(body.get("HostConfig") or {})
    _refuse_host_fields(host, refuse)
    _force_privileges(host, refuse)
    if host.get("DeviceRequests"):
        _check_gpus("HostConfig.DeviceRequests", host["DeviceRequests"], grant, refuse)
    host["Binds"] = [
        _check_bind_string(f"HostConfig.Binds[{i}]", b, grant, refuse)
        for i, b in enumerate(host.get("Binds") or [])
    ]
    host["Mounts"] = [
        _check_mount(f"HostConfig.Mounts[{i}]", m, grant, refuse)
        for i, m in enumerate(host.get("Mounts") or [])
    ]
    if "PortBindings" in host:
        host["PortBindings"] = _check_ports("HostConfig.PortBindings", host["PortBindings"], refuse)
    _check_endpoints(body.get("NetworkingConfig") or {}, refuse)
    _limit_resources(host, grant, look, refuse)
    out["HostConfig"] = {k: v for k, v in host.items() if not (k in ("Binds", "Mounts") and not v)}
    out["Labels"] = {**(body.get("Labels") or {}), **grant.forced_labels()}
    return out


def _refuse_host_fields(host: dict[str, Any], refuse: Callable[[str, str], Refused]) -> None:
    """HostConfig fields a guarded kernel may not set, or set only to the defaults."""
    for name in ("MaskedPaths", "ReadonlyPaths"):  # even empty: that unmasks /proc
        if name in host:
            raise refuse(f"HostConfig.{name}", _REFUSED_WHY[name])
    for name, value in host.items():
        if name in _HOST_FREE or name in _HOST_CHECKED or _unset(value):
            continue
        why = _REFUSED_WHY.get(name, "is set: not allowed for a guarded kernel's containers")
        raise refuse(f"HostConfig.{name}", why)
    if int(host.get("OomScoreAdj") or 0) < 0:
        raise refuse("HostConfig.OomScoreAdj", "is negative")
    if host.get("Runtime") not in (None, "", "runc"):
        raise refuse("HostConfig.Runtime", f"is {host['Runtime']!r}: only runc")
    if host.get("Isolation") not in (None, "", "default"):
        raise refuse("HostConfig.Isolation", f"is {host['Isolation']!r}")
    network = host.get("NetworkMode", "")
    if network not in _NETWORKS:
        raise refuse(
            "HostConfig.NetworkMode",
            f"is {network!r}: a guarded kernel's containers use the default bridge (or none)",
        )
    for name, allowed in _MODES.items():
        value = host.get(name, "")
        if value not in allowed:
            raise refuse(f"HostConfig.{name}", f"is {value!r}: containers get their own namespaces")


def _force_privileges(host: dict[str, Any], refuse: Callable[[str, str], Refused]) -> None:
    """The safe defaults, forced: no-new-privileges, capabilities dropped but the few,
    a log driver on this host, restart policy no."""
    bad_opts = [o for o in host.get("SecurityOpt") or [] if o not in _NO_NEW_PRIVILEGES]
    if bad_opts:
        raise refuse("HostConfig.SecurityOpt", f"has {bad_opts[0]!r}: only no-new-privileges")
    host["SecurityOpt"] = ["no-new-privileges"]
    host["CapDrop"], host["CapAdd"] = ["ALL"], _capabilities(host, refuse)
    host["LogConfig"] = _log_config(host.get("LogConfig") or {}, refuse)
    restart = (host.get("RestartPolicy") or {}).get("Name", "")
    if restart not in ("", "no"):
        raise refuse(
            "HostConfig.RestartPolicy.Name",
            f"is {restart!r}: a guarded kernel's containers end with it (restart policy no)",
        )
    host["RestartPolicy"] = {"Name": "no"}


def _unset(value: Any) -> bool:
    """Docker's own default: nothing asked for (False is 0 is unset too)."""
    return value is None or value is False or value == 0 or value in ("", [], {})


def _capabilities(host: dict[str, Any], refuse: Callable[..., Refused]) -> list[str]:
    """What the container keeps: the safe set, less what the request drops, plus what it
    adds from the safe set (nothing outside it)."""

    added = {capability_name(c) for c in host.get("CapAdd") or []}
    dropped = {capability_name(c) for c in host.get("CapDrop") or []}
    beyond = sorted(added - set(SAFE_CAPABILITIES))
    if beyond:
        raise refuse(
            "HostConfig.CapAdd",
            f"has {beyond[0]}: a guarded kernel's containers may keep only "
            f"{', '.join(SAFE_CAPABILITIES)}",
        )
    base = set() if "ALL" in dropped else set(SAFE_CAPABILITIES)
    return sorted((base - dropped) | added)


def capability_name(cap: str) -> str:
    """A capability as the policy names it: upper case, without ``CAP_``."""
    cap = cap.upper()
    return cap[4:] if cap.startswith("CAP_") else cap


def _log_config(config: dict[str, Any], refuse: Callable[..., Refused]) -> dict[str, Any]:
    kind = config.get("Type", "")
    if kind not in LOCAL_LOG_DRIVERS:
        raise refuse(
            "HostConfig.LogConfig.Type",
            f"is {kind!r}: logs stay on this host ({', '.join(d for d in LOCAL_LOG_DRIVERS if d)})",
        )
    options = config.get("Config") or {}
    extra = sorted(set(options) - _LOG_OPTIONS)
    if extra:
        raise refuse(f"HostConfig.LogConfig.Config[{extra[0]!r}]", "is not a local log option")
    return {"Type": kind, "Config": dict(options)}


def _check_gpus(
    name: str, requests: list[dict[str, Any]], grant: Grant, refuse: Callable[..., Refused]
) -> None:
    """GPUs no beyond the kernel's own: 'all' allows any; a count, that many at most (any
    ids); device ids, those only."""
    if not grant.gpus:
        raise refuse(name, "asks for GPUs, and this kernel's kernelspec grants none")
    for i, request in enumerate(requests):
        if request.get("Driver", "") not in ("", "nvidia"):
            raise refuse(f"{name}[{i}].Driver", f"is {request['Driver']!r}")
        if request.get("Options"):
            raise refuse(f"{name}[{i}].Options", "is set: GPUs are given as they are")
        if any(c != ["gpu"] and c != ["gpu", "utility"] for c in request.get("Capabilities") or []):
            raise refuse(f"{name}[{i}].Capabilities", "asks for more than GPUs")
    from ..docker.options import parse_gpus

    count, ids = parse_gpus(grant.gpus)
    if count == -1:
        return
    asked_count = sum(int(r.get("Count") or 0) for r in requests)
    asked_ids = {str(i) for r in requests for i in r.get("DeviceIDs") or []}
    if ids:
        if asked_count or not asked_ids <= set(ids):
            raise refuse(name, f"asks for GPUs beyond the kernel's own (device={','.join(ids)})")
    elif asked_count < 0 or asked_count > count or (asked_ids and len(asked_ids) > count):
        raise refuse(name, f"asks for more GPUs than the kernel's {count}")


_PORT_KEY = re.compile(r"^\d{1,5}(?:-\d{1,5})?(?:/(?:tcp|udp|sctp))?$")
_HOST_PORT = re.compile(r"^(?:\d{1,5}(?:-\d{1,5})?)?$")
_LOOPBACK = {"127.0.0.1", "::1"}


def _check_ports(
    name: str, bindings: dict[str, Any], refuse: Callable[..., Refused]
) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for port, hosts in bindings.items():
        if not _PORT_KEY.match(port):
            raise refuse(f"{name}[{port[:20]!r}]", "is not a port")
        out[port] = []
        for h in hosts or [{}]:
            ip, host_port = h.get("HostIp", ""), h.get("HostPort", "")
            if ip not in _LOOPBACK:
                raise refuse(
                    f"{name}[{port!r}].HostIp",
                    f"is {ip or 'empty (every interface)'!r}: ports are published on "
                    "127.0.0.1 only",
                )
            if not _HOST_PORT.match(host_port):
                raise refuse(f"{name}[{port!r}].HostPort", f"is {host_port[:20]!r}")
            out[port].append({"HostIp": ip, "HostPort": host_port})
    return out


def _check_endpoints(networking: dict[str, Any], refuse: Callable[..., Refused]) -> None:
    for net, settings in (networking.get("EndpointsConfig") or {}).items():
        if net not in ("bridge", "default"):
            raise refuse(
                f"NetworkingConfig.EndpointsConfig[{net[:40]!r}]",
                "joins a network: a guarded kernel's containers use the default bridge",
            )
        extra = [k for k, v in settings.items() if not _unset(v) and k not in ("Aliases",)]
        if extra:
            raise refuse(f"NetworkingConfig.EndpointsConfig[{net!r}].{extra[0]}", "is set")


def _source(name: str, source: str, grant: Grant, refuse: Callable[..., Refused]) -> bool:
    """A bind source: one of the kernel's own mounts, spelled as its resolved path (no
    symlink, no ``..``, nothing below it: a path below one is the kernel's to change, and
    a symlink swapped in after this check would make the daemon bind where it points).
    Returns whether the kernel has it read-only."""
    if not source.startswith("/"):
        raise refuse(name, f"names the volume {source[:60]!r}: only anonymous volumes are allowed")
    try:
        real = os.path.realpath(source)
    except ValueError:  # a NUL or a lone surrogate: no host path at all
        real = ""
    if real != source or posixpath.normpath(source) != source:
        raise refuse(
            name,
            f"binds {source[:120]}, which is not a resolved path (a symlink, '..' or a "
            "trailing '/' in it): give the path itself",
        )
    for allowed, read_only in grant.mounts:
        if source == os.path.realpath(allowed):
            return read_only
    raise refuse(
        name,
        f"binds {source[:120]}, which is not one of this kernel's own mounts "
        f"({', '.join(m for m, _ in grant.mounts) or 'it has none'})",
    )


def _target(name: str, target: str, refuse: Callable[..., Refused]) -> str:
    if not target.startswith("/") or ":" in target or "\x00" in target:
        raise refuse(name, f"has the target {target[:60]!r}: an absolute path without ':'")
    return target


def _check_bind_string(name: str, bind: str, grant: Grant, refuse: Callable[..., Refused]) -> str:
    """``SRC:DST[:OPTIONS]`` (or ``DST`` alone, an anonymous volume), written afresh."""
    fields = bind.split(":")
    if len(fields) == 1:
        return _target(name, fields[0], refuse)
    if len(fields) > 3:
        raise refuse(name, f"is {bind[:80]!r}: SRC:DST[:ro|rw] only")
    source, target = fields[0], _target(name, fields[1], refuse)
    options = set(fields[2].split(",")) if len(fields) == 3 else set()
    extra = options - {"ro", "rw", "private", "rprivate", ""}
    if extra:
        raise refuse(name, f"has the option {sorted(extra)[0]!r}: ro or rw only")
    read_only = _source(name, source, grant, refuse) or "ro" in options
    return f"{source}:{target}" + (":ro" if read_only else "")


def _check_mount(
    name: str, mount: dict[str, Any], grant: Grant, refuse: Callable[..., Refused]
) -> dict[str, Any]:
    kind = mount.get("Type", "volume")
    target = _target(f"{name}.Target", mount.get("Target", ""), refuse)
    read_only = bool(mount.get("ReadOnly"))
    if kind == "tmpfs":
        if mount.get("Source"):
            raise refuse(f"{name}.Source", "is set for a tmpfs")
        out = {"Type": "tmpfs", "Target": target, "ReadOnly": read_only}
        if mount.get("TmpfsOptions"):
            out["TmpfsOptions"] = mount["TmpfsOptions"]
        return out
    if kind == "volume":
        if mount.get("Source"):
            raise refuse(f"{name}.Source", "names a volume: only anonymous volumes are allowed")
        options = mount.get("VolumeOptions") or {}
        driver = options.get("DriverConfig") or {}
        if driver.get("Name", "") not in ("", "local") or driver.get("Options"):
            # `local` with type=none,o=bind,device=/etc is a bind of any host path.
            raise refuse(
                f"{name}.VolumeOptions.DriverConfig",
                "is set: anonymous volumes use the local driver with no options",
            )
        if options.get("Subpath"):
            raise refuse(f"{name}.VolumeOptions.Subpath", "is set")
        out = {"Type": "volume", "Target": target, "ReadOnly": read_only}
        if options.get("NoCopy") or options.get("Labels"):
            out["VolumeOptions"] = {
                k: options[k] for k in ("NoCopy", "Labels") if options.get(k) is not None
            }
        return out
    if kind != "bind":
        raise refuse(f"{name}.Type", f"is {kind[:20]!r}: bind, volume or tmpfs only")
    bind_options = mount.get("BindOptions") or {}
    propagation = bind_options.get("Propagation", "")
    if propagation not in ("", "private", "rprivate"):
        raise refuse(
            f"{name}.BindOptions.Propagation", f"is {propagation!r}: mounts do not propagate"
        )
    for option in ("CreateMountpoint", "ReadOnlyNonRecursive"):
        if bind_options.get(option):
            raise refuse(f"{name}.BindOptions.{option}", "is set")
    source = mount.get("Source", "")
    read_only = _source(f"{name}.Source", source, grant, refuse) or read_only
    out = {"Type": "bind", "Source": source, "Target": target, "ReadOnly": read_only}
    if bind_options.get("NonRecursive") or bind_options.get("ReadOnlyForceRecursive"):
        out["BindOptions"] = {
            k: True for k in ("NonRecursive", "ReadOnlyForceRecursive") if bind_options.get(k)
        }
    return out


def nano_cpus(host: dict[str, Any]) -> int:
    nano = int(host.get("NanoCpus") or 0)
    quota, period = int(host.get("CpuQuota") or 0), int(host.get("CpuPeriod") or 0)
    if quota > 0:
        nano = max(nano, int(quota * 1e9 / (period or 100_000)))
    return nano


def _limit_resources(
    host: dict[str, Any], grant: Grant, look: Lookups | None, refuse: Callable[..., Refused]
) -> None:
    """Within what the kernel's other containers leave of its own memory and CPU (none
    asked: what is left), and no more containers than its limit."""
    live = look.live() if look is not None else []
    if len(live) >= grant.max_containers:
        raise refuse(
            "the kernel's containers",
            f"number {len(live)}, its limit (guard_max_containers {grant.max_containers}); "
            f"running: {_listing(live)}. Remove some, or raise guard_max_containers in the "
            "kernelspec",
        )
    if grant.memory:
        used = sum(c.memory or grant.memory for c in live)
        left = grant.memory - used
        memory = int(host.get("Memory") or 0) or left
        if memory > left or memory < _MIN_MEMORY:
            raise refuse(
                "HostConfig.Memory",
                f"is {memory}: the kernel's {grant.memory} bytes less its containers' "
                f"{used} leave {max(left, 0)}; running: {_listing(live)}",
            )
        swap = int(host.get("MemorySwap") or 0)
        if swap and (swap < 0 or swap > memory):
            raise refuse("HostConfig.MemorySwap", f"is {swap}, more than the memory it has")
        host["Memory"], host["MemorySwap"] = memory, memory
    if grant.nano_cpus:
        used = sum(c.nano_cpus or grant.nano_cpus for c in live)
        left = grant.nano_cpus - used
        nano = nano_cpus(host) or left
        if nano > left or nano < _MIN_NANO_CPUS:
            raise refuse(
                "HostConfig.NanoCpus",
                f"is {nano}: the kernel's {grant.nano_cpus} less its containers' {used} "
                f"leave {max(left, 0)}; running: {_listing(live)}",
            )
        host.pop("CpuQuota", None)
        host.pop("CpuPeriod", None)
        host["NanoCpus"] = nano


def _listing(live: list[Live]) -> str:
    if not live:
        return "none"
    return ", ".join(
        f"{c.name or c.container_id[:12]} ({c.state}"
        + (f", {c.memory >> 20} MiB" if c.memory else "")
        + (f", {c.nano_cpus / 1e9:g} CPUs" if c.nano_cpus else "")
        + ")"
        for c in live[:8]
    ) + (f" and {len(live) - 8} more" if len(live) > 8 else "")


def check_totals(grant: Grant, look: Lookups, what: str, starting: str) -> None:
    """A start or restart: the kernel's other live containers and this one within its
    totals (a container that exited and is started again holds resources again)."""
    live = look.live()
    if any(c.container_id == starting for c in live):
        return  # counted already (created, or running: a restart)
    if len(live) >= grant.max_containers:
        raise Refused(
            what,
            f"the kernel has {len(live)} containers, its limit (guard_max_containers "
            f"{grant.max_containers}); running: {_listing(live)}",
        )
    if not (grant.memory or grant.nano_cpus):
        return
    host = (look.container(starting) or {}).get("HostConfig") or {}
    if grant.memory and sum(c.memory for c in live) + int(host.get("Memory") or 0) > grant.memory:
        raise Refused(what, f"the kernel's memory is held by: {_listing(live)}")
    if grant.nano_cpus and sum(c.nano_cpus for c in live) + nano_cpus(host) > grant.nano_cpus:
        raise Refused(what, f"the kernel's CPUs are held by: {_listing(live)}")

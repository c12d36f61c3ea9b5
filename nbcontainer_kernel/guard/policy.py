"""What a guarded kernel may ask of the Docker daemon: one decision per request.

The guard (:mod:`.server`) parses a request and calls :func:`decide`, which returns
an :class:`Action` (forward it, perhaps with its path, query or JSON body rewritten,
perhaps filtering the JSON answer) or raises :class:`Refused`. Nothing here does
I/O except through the :class:`Lookups` it is given, so every rule is tested without
a daemon (tests/unit/test_guard_policy.py).

The rules, and why:

* Containers: created only with a safe host configuration (``check_create``); every
  container operation only on containers this kernel created through the guard (the
  label :data:`GUARD_KERNEL` names the kernel; the guard sets it and no request can),
  plus inspect, diff, read-archive and commit of the kernel's own container.
* Images: builds from a context stream with the same limits; reads (inspect, list) of
  any image, since a build can use any local image ``FROM`` anyway, so refusing reads
  protects nothing; remove, tag and push only of images this kernel made; no name may
  be moved off an image another owner made (that would change what its builds use).
* Everything else (volumes, networks, plugins, swarm, pulls, events) is refused.

A refusal names the field at fault and is sent as HTTP 403 with a JSON ``message``,
which docker-py raises as an ``APIError`` carrying it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .. import labels

__all__ = [
    "GUARD_KERNEL",
    "Action",
    "Grant",
    "Lookups",
    "Refused",
    "check_build",
    "check_create",
    "decide",
]

#: The label the guard puts on every container and image a kernel makes through it.
GUARD_KERNEL = labels.PREFIX + "guard-kernel"

# Larger create or commit bodies are refused rather than held in memory.
MAX_JSON_BODY = 1 << 20


class Refused(Exception):
    """A request the guard does not forward: HTTP `status`, and why."""

    body_consumed = False  # set by the guard when the request's body was read already

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
    memory: int | None = None  # bytes
    nano_cpus: int | None = None
    gpus: str | None = None  # the kernelspec's gpus option ('all', '2', 'device=0,1')

    def forced_labels(self) -> dict[str, str]:
        """Labels every container and image made through the guard carries."""
        return {GUARD_KERNEL: self.kernel_id, labels.OWNER_CONTAINER: self.container_id[:12]}


@dataclass
class Lookups:
    """The daemon facts a decision needs (the guard answers them from the daemon)."""

    container: Callable[[str], dict[str, Any] | None]  # inspect, None when there is none
    image: Callable[[str], dict[str, Any] | None]
    exec_ids: set[str] = field(default_factory=set)  # exec instances this kernel made
    owned: set[str] = field(default_factory=set)  # full ids of containers it made (a cache)


@dataclass
class Action:
    """How to forward an allowed request."""

    path: str
    query: list[tuple[str, str]]
    body: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # rewrites a JSON body
    answer: Callable[[Any], Any] | None = None  # rewrites (or reads) a JSON answer
    hijack: bool = False  # attach or exec start: bytes flow both ways afterwards


# ----------------------------------------------------------------------------- routing
_VERSION = re.compile(r"^/v(\d+)(?:\.(\d+))?(?=/)")
# Older API versions let a start request carry a host configuration (privileges and all)
# that no create check saw; docker-py and the docker CLI speak far newer ones.
MIN_API = (1, 24)
_ALWAYS = {("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/version"), ("GET", "/info")}
# Operations on a container this kernel made.
_OWN_CONTAINER_OPS = {
    ("GET", "json"),
    ("POST", "start"),
    ("POST", "wait"),
    ("GET", "logs"),
    ("POST", "stop"),
    ("POST", "kill"),
    ("POST", "restart"),
    ("POST", "rename"),
    ("GET", "archive"),
    ("HEAD", "archive"),
    ("PUT", "archive"),
    ("GET", "changes"),
    ("POST", "attach"),
    ("POST", "resize"),
    ("GET", "top"),
    ("GET", "stats"),
    ("POST", "exec"),
    ("DELETE", ""),
}
# ... and on the kernel's own container: what %%remote_run's commit of the kernel reads.
_KERNEL_CONTAINER_OPS = {
    ("GET", "json"),
    ("GET", "changes"),
    ("GET", "archive"),
    ("HEAD", "archive"),
}
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")


def decide(
    method: str,
    target_path: str,
    query: list[tuple[str, str]],
    grant: Grant,
    look: Lookups,
) -> Action:
    """The action for one request, or Refused. `target_path` may carry an API version."""
    path = _VERSION.sub("", target_path)
    what = f"{method} {path}"
    version = _VERSION.match(target_path)
    if version and (int(version.group(1)), int(version.group(2) or 0)) < MIN_API:
        raise Refused(what, f"API versions before {'.'.join(map(str, MIN_API))} are not served")
    if (method, path) in _ALWAYS:
        return Action(target_path, query)
    # Decided on the path as the daemon will read it (decoded), so that no escaped slash
    # or dot segment can make one endpoint look like another.
    parts = unquote(path).strip("/").split("/")
    if any(p in (".", "..") or "\x00" in p for p in parts):
        raise Refused(what, "the path has a dot segment or a NUL", 400)
    prefix = target_path[: len(target_path) - len(path)]

    if parts[0] == "containers":
        if parts[1:] == ["create"] and method == "POST":
            return Action(
                target_path,
                query,
                body=lambda b: check_create(b, grant),
                answer=lambda a: _note_id(a, look.owned),
            )
        if parts[1:] == ["json"] and method == "GET":
            return Action(target_path, query, answer=lambda a: _own_containers(a, grant))
        if len(parts) in (2, 3) and parts[1] != "prune":
            op = parts[2] if len(parts) == 3 else ""
            full_id = _container_ref(parts[1], grant, look, method, op, what)
            rewritten = f"{prefix}/containers/{full_id}" + (f"/{op}" if op else "")
            if op == "exec":
                return Action(
                    rewritten, query, body=_check_exec, answer=lambda a: _note_id(a, look.exec_ids)
                )
            return Action(rewritten, query, hijack=op == "attach")
        raise Refused(what, "this container operation is not available to a guarded kernel")

    if parts[0] == "exec" and len(parts) == 3:
        if parts[1] not in look.exec_ids:
            raise Refused(what, f"exec {parts[1][:12]} was not made by this kernel")
        if (method, parts[2]) in {("POST", "start"), ("POST", "resize"), ("GET", "json")}:
            return Action(target_path, query, hijack=parts[2] == "start")
        raise Refused(what, "this exec operation is not available to a guarded kernel")

    if parts == ["build"] and method == "POST":
        return Action(target_path, check_build(query, grant, look))

    if parts == ["commit"] and method == "POST":
        return Action(target_path, _check_commit(query, grant, look), body=_commit_body(grant))

    if parts[0] == "images":
        if parts[1:] == ["json"] and method == "GET":
            return Action(target_path, query)
        if len(parts) >= 3 and parts[-1] in ("json", "tag", "push"):
            ref = "/".join(parts[1:-1])
            if parts[-1] == "json" and method == "GET":
                return Action(target_path, query)
            if method == "POST" and parts[-1] == "push":
                tag = dict(query).get("tag")
                if not tag:  # a push without a tag pushes every tag of the repository
                    raise Refused(what, "tag is missing: a guarded kernel pushes one tag")
                _own_image(f"{ref}:{tag}", grant, look, what)
                return Action(target_path, query)
            if method == "POST":
                _own_image(ref, grant, look, what)
                if parts[-1] == "tag":
                    _may_take_name(_name_of(query), grant, look, what, "repo")
                return Action(target_path, query)
        if method == "DELETE" and len(parts) >= 2:
            _own_image("/".join(parts[1:]), grant, look, what)
            return Action(target_path, query)
        if parts[1:] == ["create"]:
            raise Refused(what, "pulling images is not available to a guarded kernel")
    raise Refused(what, "this endpoint is not available to a guarded kernel")


# -------------------------------------------------------------------------- containers
def _container_ref(ref: str, grant: Grant, look: Lookups, method: str, op: str, what: str) -> str:
    """The full id of container `ref` when this request may touch it (else Refused).
    The path is rewritten to that id, so a name that changes after this check cannot
    redirect the request to another container."""
    if _FULL_ID.match(ref) and ref == grant.container_id:
        if (method, op) in _KERNEL_CONTAINER_OPS:
            return ref
        raise Refused(what, "a kernel may read and commit its own container, not change it")
    if ref in look.owned:
        info: dict[str, Any] | None = {
            "Id": ref,
            "Config": {"Labels": {GUARD_KERNEL: grant.kernel_id}},
        }
    else:
        info = look.container(ref)
    if info is None:
        raise Refused(what, f"no such container: {ref}", status=404)
    full_id = str(info.get("Id") or "")
    if full_id == grant.container_id:
        return _container_ref(full_id, grant, look, method, op, what)
    if _owner(info) != grant.kernel_id:
        raise Refused(what, f"container {ref} was not created by this kernel")
    if (method, op) not in _OWN_CONTAINER_OPS:
        raise Refused(what, "this container operation is not available to a guarded kernel")
    return full_id


def _own_containers(listing: Any, grant: Grant) -> Any:
    """A container listing cut to this kernel's containers and its own."""
    if not isinstance(listing, list):
        return listing
    return [
        c
        for c in listing
        if isinstance(c, dict)
        and (
            (c.get("Labels") or {}).get(GUARD_KERNEL) == grant.kernel_id
            or c.get("Id") == grant.container_id
        )
    ]


def _check_exec(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("Privileged"):
        raise Refused("POST /containers/{id}/exec", "Privileged is true")
    return body


def _note_id(answer: Any, ids: set[str]) -> Any:
    """Remember the id a create answered with (ids never change, so this is a safe cache)."""
    if isinstance(answer, dict) and isinstance(answer.get("Id"), str):
        ids.add(answer["Id"])
    return answer


# The host configuration a created container may have. Each entry checks one field
# (and may rewrite it); a field not listed is refused when it is set to anything.
_HOST_FIELDS_FREE = {
    "AutoRemove",
    "Annotations",
    "CapDrop",
    "ConsoleSize",
    "ContainerIDFile",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "Init",
    "LogConfig",
    "PidsLimit",
    "ReadonlyRootfs",
    "RestartPolicy",
    "ShmSize",
    "Tmpfs",
    "CpuShares",
    "BlkioWeight",
    "MemoryReservation",
    "MemorySwappiness",
    "KernelMemory",
    "OomScoreAdj",
}
_HOST_MODES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")
# Resource fields: checked against the kernel's own limits (_limit_resources).
_LIMITS = ("Memory", "MemorySwap", "NanoCpus", "CpuQuota", "CpuPeriod", "CpusetCpus")
_SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_create(body: dict[str, Any], grant: Grant) -> dict[str, Any]:
    """A container configuration, checked and with the kernel's labels and limits set;
    Refused naming the first field that is not allowed (or not of Docker's types)."""
    try:
        return _check_create(body, grant)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise Refused(
            "POST /containers/create", f"a field has a value of the wrong type ({exc})", 400
        ) from None


def _check_create(body: dict[str, Any], grant: Grant) -> dict[str, Any]:
    what = "POST /containers/create"

    def refuse(name: str, why: str) -> Refused:
        return Refused(what, f"{name} {why}")

    host = dict(body.get("HostConfig") or {})
    for name in ("MaskedPaths", "ReadonlyPaths"):  # even empty: that unmasks /proc
        if host.get(name) is not None:
            raise refuse(f"HostConfig.{name}", "is set: containers keep Docker's defaults")
    for name, value in host.items():
        if name in _HOST_FIELDS_FREE or name in _LIMITS or _unset(value):
            continue
        if (name, value) == ("Runtime", "runc"):
            continue
        full = f"HostConfig.{name}"
        if name == "Privileged":
            raise refuse(full, "is true: a guarded kernel's containers run unprivileged")
        if name in ("OomKillDisable", "PublishAllPorts"):
            raise refuse(full, "is true: not allowed for a guarded kernel's containers")
        if name in ("CapAdd", "Devices", "DeviceCgroupRules", "Sysctls", "Ulimits"):
            raise refuse(full, "is set: a guarded kernel's containers get Docker's defaults")
        if name == "DeviceRequests":
            _check_gpus(full, value, grant, refuse)
        elif name in _HOST_MODES:
            _check_mode(full, str(value), refuse)
        elif name == "Binds":
            for bind in value:
                _check_bind_string(f"{full}[{bind!r}]", str(bind), grant, refuse)
        elif name == "Mounts":
            for i, mount in enumerate(value):
                _check_mount(f"{full}[{i}]", mount, grant, refuse)
        elif name == "PortBindings":
            _check_ports(full, value, refuse)
        elif name == "SecurityOpt":
            bad = [o for o in value if o not in _SAFE_SECURITY_OPTS]
            if bad:
                raise refuse(full, f"has {bad[0]!r}: only no-new-privileges is allowed")
        else:
            raise refuse(full, "is not allowed for a guarded kernel's containers")
    if isinstance(host.get("OomScoreAdj"), int) and host["OomScoreAdj"] < 0:
        raise refuse("HostConfig.OomScoreAdj", "is negative")
    _limit_resources(host, grant, refuse)
    for net in (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}:
        if net == "host":
            raise refuse("NetworkingConfig.EndpointsConfig.host", "joins the host's network")
    out = dict(body)
    out["HostConfig"] = host
    out["Labels"] = {**(body.get("Labels") or {}), **grant.forced_labels()}
    return out


def _unset(value: Any) -> bool:
    """Docker's own default: nothing asked for (False is 0 is unset too)."""
    return value is None or value == 0 or value in ("", "default") or value == [] or value == {}


def _check_mode(name: str, value: str, refuse: Callable[..., Refused]) -> None:
    if value == "host":
        raise refuse(name, "is 'host': a guarded kernel's containers get their own namespaces")
    if value.startswith("container:"):
        raise refuse(name, f"is {value!r}: joining another container is not allowed")


def _check_gpus(
    name: str, requests: list[dict[str, Any]], grant: Grant, refuse: Callable[..., Refused]
) -> None:
    """GPUs no beyond the kernel's own: 'all' allows any; a count, that many at most (any
    ids); device ids, those only."""
    if not grant.gpus:
        raise refuse(name, "asks for GPUs, and this kernel's kernelspec grants none")
    from ..kernel.options import parse_gpus

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


def _check_ports(name: str, bindings: dict[str, Any], refuse: Callable[..., Refused]) -> None:
    for port, hosts in bindings.items():
        for h in hosts or [{}]:
            ip = (h or {}).get("HostIp") or ""
            if ip not in _LOOPBACK:
                raise refuse(
                    f"{name}[{port!r}].HostIp",
                    f"is {ip or 'empty (every interface)'!r}: ports are published on "
                    "127.0.0.1 only",
                )


def _allowed_source(source: str, grant: Grant) -> tuple[bool, bool] | None:
    """(allowed, must be read-only) for a bind source, or None when it is not one of the
    kernel's own mounts. Only a kernel's mount sources themselves, resolved on the host:
    a path below one is the kernel's to change (a symlink swapped in after this check
    would make Docker bind whatever it points to)."""
    try:
        real = os.path.realpath(source)
    except ValueError:  # a NUL or a lone surrogate: no host path at all
        return None
    for allowed, read_only in grant.mounts:
        if real == os.path.realpath(allowed):
            return True, read_only
    return None


def _check_bind_string(name: str, bind: str, grant: Grant, refuse: Callable[..., Refused]) -> None:
    source, _, rest = bind.partition(":")
    options = rest.split(":")[1].split(",") if rest.count(":") >= 1 else []
    _check_source(name, source, "ro" in options, grant, refuse)


def _check_mount(
    name: str, mount: dict[str, Any], grant: Grant, refuse: Callable[..., Refused]
) -> None:
    kind = (mount.get("Type") or "volume").lower()
    if kind == "tmpfs":
        return
    if kind == "volume":
        if mount.get("Source"):
            raise refuse(f"{name}.Source", "names a volume: only anonymous volumes are allowed")
        return
    if kind != "bind":
        raise refuse(f"{name}.Type", f"is {kind!r}: not allowed for a guarded kernel")
    propagation = (mount.get("BindOptions") or {}).get("Propagation") or ""
    if propagation and propagation not in ("private", "rprivate"):
        raise refuse(f"{name}.BindOptions.Propagation", f"is {propagation!r}")
    _check_source(
        f"{name}.Source", str(mount.get("Source") or ""), bool(mount.get("ReadOnly")), grant, refuse
    )


def _check_source(
    name: str, source: str, read_only: bool, grant: Grant, refuse: Callable[..., Refused]
) -> None:
    if not source.startswith("/"):
        raise refuse(name, f"names the volume {source!r}: only anonymous volumes are allowed")
    found = _allowed_source(source, grant)
    if found is None:
        raise refuse(
            name,
            f"binds {source}, which is not one of this kernel's own mounts "
            f"({', '.join(m for m, _ in grant.mounts) or 'it has none'})",
        )
    if found[1] and not read_only:
        raise refuse(name, f"binds {source} writable; the kernel has it read-only")


def _limit_resources(host: dict[str, Any], grant: Grant, refuse: Callable[..., Refused]) -> None:
    """No more memory or CPU than the kernel has; set when the request asks for none."""
    if grant.memory:
        memory = int(host.get("Memory") or 0)
        if memory > grant.memory:
            raise refuse("HostConfig.Memory", f"is {memory}, more than the kernel's {grant.memory}")
        host["Memory"] = memory or grant.memory
        swap = int(host.get("MemorySwap") or 0)
        if swap < 0 or swap > grant.memory:
            raise refuse("HostConfig.MemorySwap", f"is {swap}, more than the kernel's memory")
        host["MemorySwap"] = swap or host["Memory"]
    if grant.nano_cpus:
        nano = int(host.get("NanoCpus") or 0)
        quota, period = int(host.get("CpuQuota") or 0), int(host.get("CpuPeriod") or 0)
        if quota > 0:
            nano = max(nano, int(quota * 1e9 / (period or 100_000)))
        if nano > grant.nano_cpus:
            raise refuse(
                "HostConfig.NanoCpus", f"is {nano}, more than the kernel's {grant.nano_cpus}"
            )
        if not host.get("NanoCpus") and quota <= 0:
            host["NanoCpus"] = grant.nano_cpus


# ------------------------------------------------------------------------------ images
_BUILD_FREE_NETWORKS = {"", "default", "bridge", "none"}


def check_build(query: list[tuple[str, str]], grant: Grant, look: Lookups) -> list[tuple[str, str]]:
    """A build's query, checked, with the kernel's labels and limits; Refused otherwise."""
    what = "POST /build"
    params = dict(query)
    if params.get("remote"):
        raise Refused(what, "remote is set: a guarded kernel builds from a context it sends")
    network = params.get("networkmode", "")
    if network not in _BUILD_FREE_NETWORKS:
        raise Refused(what, f"networkmode is {network!r}: builds use the bridge network")
    if params.get("version") == "2":
        raise Refused(what, "version is 2 (BuildKit), which needs a session a guard cannot check")
    for key in ("ulimits", "extrahosts"):
        if params.get(key) not in (None, "", "[]", "{}", "null"):
            raise Refused(what, f"{key} is set: not allowed for a guarded kernel's builds")
    for key, value in query:
        if key == "t":
            _may_take_name(value, grant, look, what, "t")
    # Intermediate containers always go (docker-py keeps them by default), even on failure:
    # they would be the kernel's containers, left behind.
    out = [(k, v) for k, v in query if k not in ("labels", "memory", "memswap", "rm", "forcerm")]
    out += [("rm", "1"), ("forcerm", "1")]
    try:
        asked = json.loads(params.get("labels") or "{}") or {}
    except ValueError:
        raise Refused(what, "labels is not a JSON object") from None
    out.append(("labels", json.dumps({**asked, **grant.forced_labels()})))
    if grant.memory:
        memory = int(params.get("memory") or 0)
        if memory > grant.memory:
            raise Refused(what, f"memory is {memory}, more than the kernel's {grant.memory}")
        out += [("memory", str(memory or grant.memory)), ("memswap", str(memory or grant.memory))]
    elif params.get("memory"):
        out += [("memory", params["memory"])] + (
            [("memswap", params["memswap"])] if params.get("memswap") else []
        )
    return out


def _check_commit(
    query: list[tuple[str, str]], grant: Grant, look: Lookups
) -> list[tuple[str, str]]:
    what = "POST /commit"
    params = dict(query)
    ref = params.get("container", "")
    info = look.container(ref) if ref else None
    if info is None:
        raise Refused(what, f"container {ref or '(none)'}: no such container", status=404)
    if info.get("Id") != grant.container_id and _owner(info) != grant.kernel_id:
        raise Refused(what, f"container {ref} was not created by this kernel")
    if params.get("repo"):
        name = params["repo"] + (f":{params['tag']}" if params.get("tag") else "")
        _may_take_name(name, grant, look, what, "repo")
    out = [(k, v) for k, v in query if k != "container"] + [("container", str(info["Id"]))]
    out += [("changes", f"LABEL {k}={v}") for k, v in grant.forced_labels().items()]
    return out


def _commit_body(grant: Grant) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def rewrite(body: dict[str, Any]) -> dict[str, Any]:
        if not body:
            return body
        out = dict(body)
        out["Labels"] = {**(body.get("Labels") or {}), **grant.forced_labels()}
        return out

    return rewrite


def _owner(info: dict[str, Any]) -> str | None:
    """The kernel an inspected container or image was made by (its guard label)."""
    return ((info.get("Config") or {}).get("Labels") or {}).get(GUARD_KERNEL)


def _own_image(ref: str, grant: Grant, look: Lookups, what: str) -> None:
    info = look.image(ref)
    if info is None:
        raise Refused(what, f"no such image: {ref}", status=404)
    if _owner(info) != grant.kernel_id:
        raise Refused(what, f"image {ref} was not made by this kernel")


def _name_of(query: list[tuple[str, str]]) -> str:
    params = dict(query)
    return params.get("repo", "") + (f":{params['tag']}" if params.get("tag") else "")


def _may_take_name(name: str, grant: Grant, look: Lookups, what: str, field_name: str) -> None:
    """A tag may go to a new image when it is free or held by an image this kernel made:
    moving a name off another owner's image would change what its builds and kernels use."""
    if not name:
        return
    held = look.image(name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest")
    if held is None:
        return
    if _owner(held) == grant.kernel_id:
        return
    raise Refused(what, f"{field_name} {name} names an image this kernel did not make")

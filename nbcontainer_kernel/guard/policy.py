"""What a guarded kernel may ask of the Docker daemon: one decision per request.

The guard (:mod:`.server`) reads a request and calls :func:`decide`, which returns an
:class:`Action` (how to forward it: the canonical path and query, how to read and rewrite
its body, how to read the answer, what to check in the daemon afterwards) or raises
:class:`Refused`. Nothing here does I/O except through the :class:`Lookups` it is given,
so every rule is tested without a daemon (tests/unit/test_guard_policy.py).

The rules, and why:

* Requests are canonical (:mod:`.canonical`): a query is rebuilt from validated values, a
  JSON body from a model of its known fields; nothing is forwarded as the kernel spelled
  it, so no difference between the guard's reading and Go's can carry a field past it.
* Containers: created only with a safe configuration, and safe defaults forced on every
  one (:func:`check_create`): the kernel's own uid:gid, ``no-new-privileges``, all
  capabilities dropped but :data:`SAFE_CAPABILITIES`, a local log driver, restart policy
  ``no``, the default bridge, binds only of the kernel's own mounts (the resolved path,
  no propagation), and limits within what the kernel's other containers leave of its
  own. Every operation only on containers this kernel made (the label
  :data:`GUARD_KERNEL` names the kernel; the guard sets it and no request can), plus
  inspect, diff, read-archive and commit of the kernel's own container. After a create,
  what the daemon stored is checked again (:mod:`.stored`).
* Archives put into containers are rewritten (:mod:`.archives`); builds run offline
  (network ``none``, a Dockerfile that fetches nothing: :mod:`.dockerfile`), classic
  builder only, within the kernel's memory and CPU.
* Images: reads (inspect, list) of any image, since a build can use any local image
  ``FROM`` anyway, so refusing reads protects nothing; remove, tag and push only of
  images this kernel made; no name may be moved off an image another owner made.
* Everything else (volumes, networks, plugins, swarm, pulls, events, updates) is refused.

A refusal names the field at fault and is sent as HTTP 403 (400 for what cannot be read
unambiguously) with a JSON ``message``, which docker-py raises as an ``APIError``.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from .. import labels
from .canonical import Bad, decode_json, dumps, parse_query, query_pairs
from .dockerfile import DockerfileRefused, check_dockerfile
from .models import COMMIT_CONFIG, CREATE, EXEC_CREATE, EXEC_START, QUERIES

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "GUARD_KERNEL",
    "SAFE_CAPABILITIES",
    "Action",
    "Grant",
    "Live",
    "Lookups",
    "Refused",
    "check_build",
    "check_create",
    "decide",
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
_LOG_OPTIONS = {"max-size", "max-file", "compress", "mode", "max-buffer-size"}
_MIN_MEMORY = 6 << 20  # the daemon's own minimum
_MIN_NANO_CPUS = 10_000_000  # 0.01 CPU

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


@dataclass
class Action:
    """How to forward an allowed request.

    `body` says how its body is read: ``none`` (it has none), ``json`` (read whole, at
    most :data:`MAX_JSON_BODY`, and replaced by ``rewrite(raw)``), ``archive`` (a tar
    rewritten as it streams, owned by ``owner``), ``context`` (a build context: the
    Dockerfile named `dockerfile` goes to ``check_dockerfile`` before the end is sent).
    """

    path: str
    query: list[tuple[str, str]]
    body: str = "none"
    rewrite: Callable[[bytes], bytes] | None = None
    owner: tuple[int, int] | None = None
    dockerfile: str = ""
    check_dockerfile: Callable[[str], None] | None = None
    answer: Callable[[Any], Any] | None = None  # rewrites (or reads) a JSON answer
    hijack: bool = False  # attach or exec start: bytes flow both ways afterwards
    stream: bool = False  # the answer may be long in coming (wait, follow, build, push)
    verify: str = ""  # what to check in the daemon after it answered: container|exec|commit
    headers: tuple[str, ...] = ()  # the kernel's request headers passed on
    serial: bool = False  # one at a time per kernel (what counts its containers)
    content_type: str = ""

    @property
    def target(self) -> str:
        path = quote(self.path, safe="/:@")
        return path + (
            "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.query)
            if self.query
            else ""
        )


# ----------------------------------------------------------------------------- routing
_VERSION = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(?=/)")
# Older API versions let a start request carry a host configuration (privileges and all)
# that no create check saw; docker-py and the docker CLI speak far newer ones.
MIN_API = (1, 24)
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")
# Operations on a container this kernel made: (method, op) -> its query model.
_OWN_CONTAINER_OPS = {
    ("GET", "json"): "container/json",
    ("POST", "start"): "container/start",
    ("POST", "wait"): "container/wait",
    ("GET", "logs"): "container/logs",
    ("POST", "stop"): "container/stop",
    ("POST", "kill"): "container/kill",
    ("POST", "restart"): "container/restart",
    ("POST", "rename"): "container/rename",
    ("GET", "archive"): "container/archive:GET",
    ("HEAD", "archive"): "container/archive:GET",
    ("PUT", "archive"): "container/archive:PUT",
    ("GET", "changes"): "container/changes",
    ("POST", "attach"): "container/attach",
    ("POST", "resize"): "container/resize",
    ("GET", "top"): "container/top",
    ("GET", "stats"): "container/stats",
    ("POST", "exec"): "none",
    ("DELETE", ""): "container/delete",
}
# ... and on the kernel's own container: what %%remote_run's commit of the kernel reads.
_KERNEL_CONTAINER_OPS = {
    ("GET", "json"),
    ("GET", "changes"),
    ("GET", "archive"),
    ("HEAD", "archive"),
}
_STREAMS = {"wait", "logs", "attach", "stats", "archive", "start", "stop", "restart"}


def _canonical(key: str, raw: str, what: str) -> dict[str, str | list[str]]:
    try:
        return QUERIES[key].canonical(parse_query(raw))
    except Bad as exc:
        raise Refused(what, str(exc), 400) from None


def decide(method: str, target: str, grant: Grant, look: Lookups) -> Action:
    """The action for one request (its method and target as sent), or Refused."""
    raw_path, _, raw_query = target.partition("?")
    if "#" in raw_query or "#" in raw_path:
        raise Refused(f"{method} {raw_path[:80]}", "the target has a fragment", 400)
    # Decided on the path as the daemon will read it (decoded), so that no escaped slash
    # or dot segment can make one endpoint look like another.
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise Refused(f"{method} {raw_path[:80]}", "the path is not UTF-8", 400) from None
    version = _VERSION.match(decoded)
    path = decoded[version.end() :] if version else decoded
    what = f"{method} {path[:120]}"
    if version and (int(version.group(1)), int(version.group(2))) < MIN_API:
        raise Refused(what, f"API versions before {'.'.join(map(str, MIN_API))} are not served")
    parts = path.strip("/").split("/")
    if any(p in (".", "..") or "\x00" in p for p in parts) or "//" in path:
        raise Refused(what, "the path has a dot segment, an empty segment or a NUL", 400)
    prefix = version.group(0) if version else ""

    def act(key: str, new_path: str = path, **kw: Any) -> Action:
        query = _canonical(key, raw_query, what)
        return Action(prefix + new_path, query_pairs(query), **kw)

    if (method, path) in {("GET", "/_ping"), ("HEAD", "/_ping")}:
        return act("ping")
    if (method, path) == ("GET", "/version"):
        return act("version")
    if (method, path) == ("GET", "/info"):
        return act("info")
    if parts[0] == "containers":
        return _containers(method, path, parts, raw_query, prefix, grant, look, what)
    if parts[0] == "exec" and len(parts) == 3:
        if parts[1] not in look.exec_ids:
            raise Refused(what, f"exec {parts[1][:12]} was not made by this kernel")
        if (method, parts[2]) == ("POST", "start"):
            return act(
                "exec/start",
                content_type="application/json",
                body="json",
                rewrite=lambda raw: dumps(_decode(raw, EXEC_START, what)),
                hijack=True,
                stream=True,
                headers=("user-agent",),
            )
        if (method, parts[2]) == ("POST", "resize"):
            return act("exec/resize")
        if (method, parts[2]) == ("GET", "json"):
            return act("exec/json")
        raise Refused(what, "this exec operation is not available to a guarded kernel")
    if parts == ["build"] and method == "POST":
        query = _canonical("build", raw_query, what)
        built = check_build(query, grant, look)
        dockerfile = str(query.get("dockerfile") or "Dockerfile")
        build_args = json.loads(str(query.get("buildargs") or "{}") or "{}")
        return Action(
            prefix + path,
            query_pairs(built),
            body="context",
            dockerfile=dockerfile,
            check_dockerfile=lambda text: _check_dockerfile(text, build_args, look, what),
            stream=True,
            content_type="application/x-tar",
        )
    if parts == ["commit"] and method == "POST":
        query = _canonical("commit", raw_query, what)
        return Action(
            prefix + path,
            query_pairs(_check_commit(query, grant, look)),
            body="json",
            rewrite=lambda raw: _commit_body(raw, grant),
            content_type="application/json",
            verify="commit",
            stream=True,
        )
    if parts[0] == "images":
        return _images(method, path, parts, raw_query, prefix, grant, look, what)
    raise Refused(what, "this endpoint is not available to a guarded kernel")


def _decode(raw: bytes, model: Any, what: str) -> Any:
    try:
        return decode_json(raw or b"{}", model)
    except Bad as exc:
        raise Refused(what, str(exc), 400) from None


# -------------------------------------------------------------------------- containers
def _containers(
    method: str,
    path: str,
    parts: list[str],
    raw_query: str,
    prefix: str,
    grant: Grant,
    look: Lookups,
    what: str,
) -> Action:
    if parts[1:] == ["create"] and method == "POST":
        query = _canonical("containers/create", raw_query, what)
        return Action(
            prefix + path,
            query_pairs(query),
            body="json",
            rewrite=lambda raw: dumps(check_create(_decode(raw, CREATE, what), grant, look)),
            verify="container",  # and noted as the kernel's once what was stored is checked
            serial=True,
            content_type="application/json",
        )
    if parts[1:] == ["json"] and method == "GET":
        query = _canonical("containers/json", raw_query, what)
        return Action(prefix + path, query_pairs(query), answer=lambda a: _own_containers(a, grant))
    if len(parts) in (2, 3) and parts[1] not in ("prune", "create", "json"):
        op = parts[2] if len(parts) == 3 else ""
        key = _OWN_CONTAINER_OPS.get((method, op))
        if key is None:
            raise Refused(what, "this container operation is not available to a guarded kernel")
        full_id = _container_ref(parts[1], grant, look, method, op, what)
        new_path = f"/containers/{full_id}" + (f"/{op}" if op else "")
        query = _canonical(key, raw_query, what)
        if op == "exec":
            return Action(
                prefix + new_path,
                [],
                body="json",
                rewrite=lambda raw: dumps(_check_exec(_decode(raw, EXEC_CREATE, what), grant)),
                verify="exec",  # noted as the kernel's once what was stored is checked
                content_type="application/json",
            )
        if op == "archive" and method == "PUT":
            return Action(
                prefix + new_path,
                query_pairs(query),
                body="archive",
                owner=grant.uid_gid,
                content_type="application/x-tar",
            )
        if op in ("start", "restart"):
            _check_totals(grant, look, what, starting=full_id)
        if query.get("link") == "1":
            raise Refused(what, "link is set: removing a link touches another container")
        return Action(
            prefix + new_path,
            query_pairs(query),
            hijack=op == "attach",
            stream=op in _STREAMS,
            serial=op in ("start", "restart"),
            headers=("user-agent",),
        )
    raise Refused(what, "this container operation is not available to a guarded kernel")


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
    return full_id


def _own_containers(listing: Any, grant: Grant) -> Any:
    """A container listing cut to this kernel's containers and its own."""
    if not isinstance(listing, list):
        return []
    return [
        c
        for c in listing
        if isinstance(c, dict)
        and (
            (c.get("Labels") or {}).get(GUARD_KERNEL) == grant.kernel_id
            or c.get("Id") == grant.container_id
        )
    ]


def _check_exec(body: dict[str, Any], grant: Grant) -> dict[str, Any]:
    what = "POST /containers/{id}/exec"
    if body.get("Privileged"):
        raise Refused(what, "Privileged is true")
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


def _nano_cpus(host: dict[str, Any]) -> int:
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
        nano = _nano_cpus(host) or left
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


def _check_totals(grant: Grant, look: Lookups, what: str, starting: str) -> None:
    """A start or restart: the kernel's other live containers and this one within its
    totals (a container that exited and is started again holds resources again)."""
    live = look.live()
    if any(c.container_id == starting for c in live):
        return  # counted already (created, or running: a restart)
    info = look.container(starting) or {}
    host = info.get("HostConfig") or {}
    if len(live) >= grant.max_containers:
        raise Refused(
            what,
            f"the kernel has {len(live)} containers, its limit (guard_max_containers "
            f"{grant.max_containers}); running: {_listing(live)}",
        )
    if grant.memory and sum(c.memory for c in live) + int(host.get("Memory") or 0) > grant.memory:
        raise Refused(what, f"the kernel's memory is held by: {_listing(live)}")
    if grant.nano_cpus and sum(c.nano_cpus for c in live) + _nano_cpus(host) > grant.nano_cpus:
        raise Refused(what, f"the kernel's CPUs are held by: {_listing(live)}")


# ------------------------------------------------------------------------------ images
def check_build(
    query: dict[str, str | list[str]], grant: Grant, look: Lookups
) -> dict[str, str | list[str]]:
    """A build's canonical query, checked, with the kernel's labels, offline and within
    its limits; Refused otherwise."""
    what = "POST /build"
    refused_when_set = {
        "remote": "a guarded kernel builds from a context it sends",
        "pull": "pulls happen on the host's network",
        "platform": "builds are for the host's platform",
        "extrahosts": "builds run offline",
        "ulimits": "builds get Docker's default limits",
        "cgroupparent": "builds run in the daemon's own cgroup",
        "isolation": "builds use the default isolation",
        "outputs": "BuildKit is not available to a guarded kernel",
        "session": "BuildKit is not available to a guarded kernel",
        "buildid": "BuildKit is not available to a guarded kernel",
        "squash": "squash is not available to a guarded kernel",
    }
    for key, why in refused_when_set.items():
        value = query.get(key)
        if value not in (None, "", "0", "[]", "{}", "null"):
            raise Refused(what, f"{key} is set: {why}")
    if query.get("version") not in (None, "", "1"):
        raise Refused(
            what,
            f"version is {query['version']!r}: the classic builder only (BuildKit needs a "
            "session the guard cannot check)",
        )
    network = query.get("networkmode", "")
    if network not in _NETWORKS:
        raise Refused(what, f"networkmode is {network!r}: builds run offline (network none)")
    for name in query.get("t", []) or []:
        _may_take_name(str(name), grant, look, what, "t")
    dockerfile = str(query.get("dockerfile") or "Dockerfile")
    if dockerfile.startswith("/") or ".." in dockerfile.split("/") or "://" in dockerfile:
        raise Refused(what, f"dockerfile is {dockerfile[:80]!r}: a path inside the context")
    out: dict[str, str | list[str]] = {
        k: v
        for k, v in query.items()
        if k not in ("labels", "memory", "memswap", "rm", "forcerm", "networkmode", "version")
        and k not in refused_when_set
        and k not in ("cpuperiod", "cpuquota")
    }
    # Intermediate containers always go (docker-py keeps them by default), even on failure:
    # they would be the kernel's containers, left behind.
    out.update({"rm": "1", "forcerm": "1", "networkmode": "none", "version": "1"})
    asked = json.loads(str(query.get("labels") or "{}") or "{}") or {}
    out["labels"] = json.dumps({**asked, **grant.forced_labels()}, separators=(",", ":"))
    if grant.memory:
        memory = int(str(query.get("memory") or 0))
        if memory > grant.memory:
            raise Refused(what, f"memory is {memory}, more than the kernel's {grant.memory}")
        out["memory"] = out["memswap"] = str(memory or grant.memory)
    elif query.get("memory"):
        out["memory"] = str(query["memory"])
        if query.get("memswap"):
            out["memswap"] = str(query["memswap"])
    if grant.nano_cpus:
        out["cpuperiod"] = "100000"
        out["cpuquota"] = str(max(1000, grant.nano_cpus // 10_000))
    return out


def _check_dockerfile(text: str, build_args: dict[str, str], look: Lookups, what: str) -> None:
    def exists(ref: str) -> bool:
        return look.image(ref) is not None

    def triggers(ref: str) -> list[str]:
        info = look.image(ref) or {}
        return list((info.get("Config") or {}).get("OnBuild") or [])

    try:
        check_dockerfile(text, build_args, exists, triggers)
    except DockerfileRefused as exc:
        raise Refused(what, f"the Dockerfile's {exc}") from None


_CHANGE_KEYWORDS = {
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "USER",
    "VOLUME",
    "WORKDIR",
    "STOPSIGNAL",
}


def _check_commit(
    query: dict[str, str | list[str]], grant: Grant, look: Lookups
) -> dict[str, str | list[str]]:
    what = "POST /commit"
    ref = str(query.get("container") or "")
    info = look.container(ref) if ref else None
    if info is None:
        raise Refused(what, f"container {ref or '(none)'}: no such container", status=404)
    if info.get("Id") != grant.container_id and _owner(info) != grant.kernel_id:
        raise Refused(what, f"container {ref} was not created by this kernel")
    if query.get("repo"):
        name = str(query["repo"]) + (f":{query['tag']}" if query.get("tag") else "")
        _may_take_name(name, grant, look, what, "repo")
    changes: list[str] = []
    for change in query.get("changes", []) or []:
        change = str(change)
        if "\n" in change or "\r" in change:
            raise Refused(what, "a change spans lines: one instruction each")
        keyword = change.strip().split(None, 1)[0].upper() if change.strip() else ""
        if keyword not in _CHANGE_KEYWORDS:
            raise Refused(
                what,
                f"changes has {keyword or 'an empty'!s} instruction: only "
                f"{', '.join(sorted(_CHANGE_KEYWORDS))}",
            )
        changes.append(change)
    changes += [f"LABEL {k}={v}" for k, v in grant.forced_labels().items()]
    out = dict(query)
    out["container"] = str(info["Id"])
    out["changes"] = changes
    return out


def _commit_body(raw: bytes, grant: Grant) -> bytes:
    what = "POST /commit"
    body = _decode(raw, COMMIT_CONFIG, what)
    if body.get("OnBuild"):
        raise Refused(what, "OnBuild is set: images a guarded kernel makes carry no build triggers")
    if not body:
        return b"{}"
    body["Labels"] = {**(body.get("Labels") or {}), **grant.forced_labels()}
    return dumps(body)


def _images(
    method: str,
    path: str,
    parts: list[str],
    raw_query: str,
    prefix: str,
    grant: Grant,
    look: Lookups,
    what: str,
) -> Action:
    def act(key: str, **kw: Any) -> Action:
        return Action(prefix + path, query_pairs(_canonical(key, raw_query, what)), **kw)

    if parts[1:] == ["json"] and method == "GET":
        return act("images/json")
    if len(parts) >= 3 and parts[-1] in ("json", "tag", "push"):
        ref = "/".join(parts[1:-1])
        if parts[-1] == "json" and method == "GET":
            return act("image/json")
        if method == "POST" and parts[-1] == "push":
            query = _canonical("image/push", raw_query, what)
            tag = str(query.get("tag") or "")
            if not tag:  # a push without a tag pushes every tag of the repository
                raise Refused(what, "tag is missing: a guarded kernel pushes one tag")
            # The image that holds the name now, the moment before the daemon pushes it.
            _own_image(f"{ref}:{tag}", grant, look, what)
            return Action(
                prefix + path,
                query_pairs(query),
                headers=("x-registry-auth", "user-agent"),
                stream=True,
            )
        if method == "POST" and parts[-1] == "tag":
            query = _canonical("image/tag", raw_query, what)
            _own_image(ref, grant, look, what)
            name = str(query.get("repo") or "") + (f":{query['tag']}" if query.get("tag") else "")
            if not query.get("repo"):
                raise Refused(what, "repo is missing", 400)
            _may_take_name(name, grant, look, what, "repo")
            return Action(prefix + path, query_pairs(query))
    if method == "DELETE" and len(parts) >= 2:
        _own_image("/".join(parts[1:]), grant, look, what)
        return act("image/delete")
    if parts[1:] == ["create"]:
        raise Refused(what, "pulling images is not available to a guarded kernel")
    raise Refused(what, "this endpoint is not available to a guarded kernel")


def _owner(info: dict[str, Any]) -> str | None:
    """The kernel an inspected container or image was made by (its guard label)."""
    return ((info.get("Config") or {}).get("Labels") or {}).get(GUARD_KERNEL)


def _own_image(ref: str, grant: Grant, look: Lookups, what: str) -> None:
    info = look.image(ref)
    if info is None:
        raise Refused(what, f"no such image: {ref}", status=404)
    if _owner(info) != grant.kernel_id:
        raise Refused(what, f"image {ref} was not made by this kernel")


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

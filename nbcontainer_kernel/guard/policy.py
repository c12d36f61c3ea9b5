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
import re
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any
from urllib.parse import quote, unquote

from .canonical import Bad, decode_json, dumps, parse_query, query_pairs
from .create import check_create, check_exec, check_totals
from .dockerfile import DockerfileRefused, check_dockerfile
from .grants import (
    DEFAULT_MAX_CONTAINERS,
    GUARD_KERNEL,
    MAX_JSON_BODY,
    SAFE_CAPABILITIES,
    Grant,
    Live,
    Lookups,
    Refused,
)
from .models import COMMIT_CONFIG, CREATE, EXEC_CREATE, EXEC_START, QUERIES

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "GUARD_KERNEL",
    "MAX_JSON_BODY",
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
    # Headers sent when the kernel sent none of that name (name, value).
    default_headers: tuple[tuple[str, str], ...] = ()
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


#: Endpoints that name nothing of anyone's: (method, path) -> their query's key.
_SYSTEM = {
    ("GET", "/_ping"): "ping",
    ("HEAD", "/_ping"): "ping",
    ("GET", "/version"): "version",
    ("GET", "/info"): "info",
}


def decide(method: str, target: str, grant: Grant, look: Lookups) -> Action:
    """The action for one request (its method and target as sent), or Refused."""
    t = _parse_target(method, target)
    system = _SYSTEM.get((method, t.path))
    if system is not None:
        return Action(t.prefix + t.path, query_pairs(_canonical(system, t.raw_query, t.what)))
    if t.parts[0] == "containers":
        return _containers(t, grant, look)
    if t.parts[0] == "exec" and len(t.parts) == 3:
        return _exec(t, look)
    if t.parts == ["build"] and method == "POST":
        return _build(t, grant, look)
    if t.parts == ["commit"] and method == "POST":
        return _commit(t, grant, look)
    if t.parts[0] == "images":
        return _images(t, grant, look)
    raise Refused(t.what, "this endpoint is not available to a guarded kernel")


def _parse_target(method: str, target: str) -> _Target:
    """The target as the daemon will read it: the path decoded (so that no escaped slash
    or dot segment can make one endpoint look like another), its API version apart."""
    raw_path, _, raw_query = target.partition("?")
    if "#" in raw_query or "#" in raw_path:
        raise Refused(f"{method} {raw_path[:80]}", "the target has a fragment", 400)
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
    return _Target(method, path, parts, raw_query, version.group(0) if version else "", what)


def _exec(t: _Target, look: Lookups) -> Action:
    """Execs this kernel made: started (the body checked), resized, inspected."""
    if t.parts[1] not in look.exec_ids:
        raise Refused(t.what, f"exec {t.parts[1][:12]} was not made by this kernel")
    key = {("POST", "start"): "exec/start", ("POST", "resize"): "exec/resize"}.get(
        (t.method, t.parts[2]), "exec/json" if (t.method, t.parts[2]) == ("GET", "json") else ""
    )
    if not key:
        raise Refused(t.what, "this exec operation is not available to a guarded kernel")
    query = query_pairs(_canonical(key, t.raw_query, t.what))
    if key != "exec/start":
        return Action(t.prefix + t.path, query)
    return Action(
        t.prefix + t.path,
        query,
        content_type="application/json",
        body="json",
        rewrite=lambda raw: dumps(_decode(raw, EXEC_START, t.what)),
        hijack=True,
        stream=True,
        headers=("user-agent",),
    )


def _build(t: _Target, grant: Grant, look: Lookups) -> Action:
    """A build offline, within the kernel's limits, its Dockerfile read before it runs."""
    query = _canonical("build", t.raw_query, t.what)
    built = check_build(query, grant, look)
    dockerfile = str(query.get("dockerfile") or "Dockerfile")
    build_args = json.loads(str(query.get("buildargs") or "{}") or "{}")
    return Action(
        t.prefix + t.path,
        query_pairs(built),
        body="context",
        dockerfile=dockerfile,
        check_dockerfile=lambda text: _check_dockerfile(text, build_args, look, t.what),
        stream=True,
        content_type="application/x-tar",
    )


def _commit(t: _Target, grant: Grant, look: Lookups) -> Action:
    query = _canonical("commit", t.raw_query, t.what)
    return Action(
        t.prefix + t.path,
        query_pairs(_check_commit(query, grant, look)),
        body="json",
        rewrite=lambda raw: _commit_body(raw, grant),
        content_type="application/json",
        verify="commit",
        stream=True,
    )


def _decode(raw: bytes, model: Any, what: str) -> Any:
    try:
        return decode_json(raw or b"{}", model)
    except Bad as exc:
        raise Refused(what, str(exc), 400) from None


# -------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class _Target:
    """A request's method and target as decided on (the path decoded, its version apart)."""

    method: str
    path: str
    parts: list[str]
    raw_query: str
    prefix: str  # the API version part of the path, put back on the forwarded one
    what: str  # how refusals name the request


def _containers(target: _Target, grant: Grant, look: Lookups) -> Action:
    method, path, parts, raw_query, prefix, what = astuple(target)
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
                rewrite=lambda raw: dumps(check_exec(_decode(raw, EXEC_CREATE, what), grant)),
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
            check_totals(grant, look, what, starting=full_id)
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
    if network not in ("", "default", "bridge", "none"):
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


def _images(target: _Target, grant: Grant, look: Lookups) -> Action:
    method, path, parts, raw_query, prefix, what = astuple(target)

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
                # Without the header dockerd reads the body as the credentials (docker-py
                # sends {}); the guard forwards no body, so it says "none" in the header.
                default_headers=(("x-registry-auth", "e30="),),
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

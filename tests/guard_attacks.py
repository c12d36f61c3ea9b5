"""Attacks on nbcontainer's Docker guard, written as raw HTTP over its unix socket.

Standard library only: the same table runs from the test process (against a guard in
front of the real daemon) and from a cell of a real guarded kernel, where it reaches the
guard as /var/run/docker.sock. Each attack returns what the guard answered:
``{"status", "message", "created"}``, ``created`` naming a container, exec or image the
daemon made, which the test then inspects on the daemon itself: every attack is either
refused, or what it made is within the guard's policy.

Classes (issue 23): key spelling, repeated query keys, HTTP framing, volume options, bind
sources, what nothing refused before (user, setuid archives, log drivers, restart
policies, networks, propagation, builds that fetch, limits), exhaustion.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SOCK = "/var/run/docker.sock"


@dataclass
class Context:
    base: str  # an image on the host
    mount: str  # a host directory the kernel has (writable), as the host spells it
    read_only: str  # one it has read-only
    foreign_container: str  # a container the kernel did not make
    foreign_image: str  # an image (repo:tag) the kernel did not make
    sock: str = SOCK
    fetch: str = "http://127.0.0.1:9/x"  # what builds try to make the daemon fetch


def raw(sock_path: str, data: bytes, *, timeout: float = 20, close: bool = True) -> bytes:
    """Send bytes, read until the guard closes or goes quiet."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(data)
    if close:
        s.shutdown(socket.SHUT_WR)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
            if not close and b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = [int(v) for k, v in _headers(head) if k == "content-length"]
                if length and len(rest) >= length[0]:
                    break
    except (TimeoutError, OSError):
        pass
    s.close()
    return out


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]


def request(
    sock_path: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One well-framed HTTP/1.1 request; (status, parsed JSON or text)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Content-Type: application/json")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    return parse(raw(sock_path, data))


def parse(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, answer[:200].decode("latin-1")
    if ("transfer-encoding", "chunked") in _headers(head):
        body = _dechunk(body)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if not size:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def _result(status: int, answer: Any, created: str = "") -> dict[str, Any]:
    message = answer.get("message", "") if isinstance(answer, dict) else str(answer)[:300]
    if not created and isinstance(answer, dict) and 200 <= status < 300:
        created = str(answer.get("Id") or "")
    return {"status": status, "message": message, "created": created}


def create(ctx: Context, body_text: str, query: str = "") -> dict[str, Any]:
    return _result(
        *request(ctx.sock, "POST", f"/v1.41/containers/create{query}", body_text.encode())
    )


def _image_body(ctx: Context, extra: str) -> str:
    return '{"Image":' + json.dumps(ctx.base) + ',"Cmd":["true"]' + extra + "}"


# ---------------------------------------------------------------- 1. key spelling
def key_spelling(ctx: Context) -> dict[str, Callable[[], dict[str, Any]]]:
    b = lambda extra: _image_body(ctx, extra)  # noqa: E731
    return {
        "hostConfig beside HostConfig": lambda: create(
            ctx, b(',"HostConfig":{},"hostConfig":{"Privileged":true}')
        ),
        "HOSTCONFIG alone": lambda: create(ctx, b(',"HOSTCONFIG":{"Privileged":true}')),
        "Hoſtconfig (long s)": lambda: create(ctx, b(',"Hoſtconfig":{"Privileged":true}')),
        "privileged spelled low": lambda: create(ctx, b(',"HostConfig":{"privileged":true}')),
        "capadd spelled low beside CapAdd": lambda: create(
            ctx, b(',"HostConfig":{"CapAdd":[],"capadd":["SYS_ADMIN"]}')
        ),
        "NetworKMode (Kelvin sign)": lambda: create(
            ctx, b(',"HostConfig":{"Networ\u212aMode":"host"}')
        ),
        "tmpfs mount retyped as bind of /etc": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"Mounts":[{"Type":"tmpfs","type":"bind","source":"/etc",'
                '"Target":"/x"}]}'
            ),
        ),
        "read-only mount made writable": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"Mounts":[{"Type":"bind","Source":'
                + json.dumps(ctx.read_only)
                + ',"Target":"/ro","ReadOnly":true,"readonly":false}]}'
            ),
        ),
        "labels replacing the forced label": lambda: create(
            ctx, b(',"Labels":{"a":"b"},"labels":{"io.nbcontainer.guard-kernel":"other"}')
        ),
        "hostip beside HostIp": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"127.0.0.1",'
                '"hostip":"0.0.0.0","HostPort":""}]}}'
            ),
        ),
        "duplicate key, last wins in Go": lambda: create(
            ctx, b(',"HostConfig":{"Privileged":false,"Privileged":true}')
        ),
        "user spelled low": lambda: create(ctx, b(',"user":"root"')),
    }


def exec_privileged(ctx: Context, container: str) -> dict[str, Callable[[], dict[str, Any]]]:
    def attempt(body: str) -> dict[str, Any]:
        return _result(
            *request(ctx.sock, "POST", f"/v1.41/containers/{container}/exec", body.encode())
        )

    return {
        "exec privileged spelled low": lambda: attempt('{"Cmd":["id"],"privileged":true}'),
        "exec Privileged twice": lambda: attempt(
            '{"Cmd":["id"],"Privileged":false,"Privileged":true}'
        ),
        "exec as root": lambda: attempt('{"Cmd":["id"],"User":"0"}'),
    }


# ----------------------------------------------------------- 2. repeated query keys
def repeated_keys(ctx: Context, own_image: str) -> dict[str, Callable[[], dict[str, Any]]]:
    repo, _, tag = ctx.foreign_image.rpartition(":")

    def post(target: str, body: bytes | None = None) -> dict[str, Any]:
        return _result(*request(ctx.sock, "POST", target, body))

    return {
        "tag repo/tag twice": lambda: post(
            f"/v1.41/images/{own_image}/tag?repo=mine-x&tag=1&repo={repo}&tag={tag}"
        ),
        "commit repo twice": lambda: post(
            f"/v1.41/commit?container={ctx.foreign_container}&repo=a&repo={repo}", b"{}"
        ),
        "build networkmode twice": lambda: build(
            ctx, "FROM " + ctx.base, "networkmode=bridge&networkmode=host"
        ),
        "build version twice": lambda: build(ctx, "FROM " + ctx.base, "version=1&version=2"),
        "build remote twice": lambda: build(
            ctx, "FROM " + ctx.base, "remote=&remote=http://127.0.0.1:9/x"
        ),
        "build ulimits twice": lambda: build(
            ctx, "FROM " + ctx.base, 'ulimits=&ulimits=[{"Name":"nofile","Hard":1,"Soft":1}]'
        ),
        "build networkmode in capitals": lambda: build(ctx, "FROM " + ctx.base, "NetworkMode=host"),
    }


def build(
    ctx: Context, dockerfile: str, query: str = "", extra: dict[str, bytes] | None = None
) -> dict[str, Any]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    head = (
        f"POST /v1.41/build?t=guard-attack-build:1&{query} HTTP/1.1\r\nHost: docker\r\n"
        f"Connection: close\r\nContent-Type: application/x-tar\r\nContent-Length: {len(body)}"
        "\r\n\r\n"
    ).encode()
    status, answer = parse(raw(ctx.sock, head + body, timeout=120))
    text = answer if isinstance(answer, str) else json.dumps(answer)
    built = "Successfully built" in text
    message = answer.get("message", "") if isinstance(answer, dict) else text[-300:]
    return {"status": status if not (status == 200 and not built) else 500, "message": message,
            "created": "guard-attack-build:1" if built else ""}  # fmt: skip


# ----------------------------------------------------------------- 3. HTTP framing
def framing(ctx: Context) -> dict[str, Callable[[], dict[str, Any]]]:
    smuggled = b"GET /v1.41/networks HTTP/1.1\r\nHost: docker\r\n\r\n"

    def te_and_cl(version: str) -> dict[str, Any]:
        chunk = b"0\r\n\r\n" + smuggled
        data = (
            f"POST /v1.41/containers/{ctx.foreign_container}/wait HTTP/{version}\r\n"
            f"Host: docker\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        ).encode() + chunk
        answer = raw(ctx.sock, data)
        return _framing_result(answer)

    def expect_odd() -> dict[str, Any]:
        data = (
            b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n"
            b"Expect: 100-continue, x\r\nContent-Length: 0\r\n\r\n"
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        )
        return _framing_result(raw(ctx.sock, data))

    def duplicate_length() -> dict[str, Any]:
        data = (
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}" + smuggled
        )
        return _framing_result(raw(ctx.sock, data))

    def http10() -> dict[str, Any]:
        return _framing_result(raw(ctx.sock, b"GET /v1.41/containers/json HTTP/1.0\r\n\r\n"))

    def chunked_identity() -> dict[str, Any]:
        data = (
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            b"Transfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smuggled
        )
        return _framing_result(raw(ctx.sock, data))

    def folded_header() -> dict[str, Any]:
        data = (
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            b"Content-Length: 2\r\n Content-Length: 40\r\n\r\n{}" + smuggled
        )
        return _framing_result(raw(ctx.sock, data))

    def absolute_target() -> dict[str, Any]:
        data = b"GET http://docker/v1.41/networks HTTP/1.1\r\nHost: docker\r\n\r\n"
        return _framing_result(raw(ctx.sock, data))

    return {
        "TE and CL over HTTP/1.0": lambda: te_and_cl("1.0"),
        "TE and CL over HTTP/1.1": lambda: te_and_cl("1.1"),
        "Expect: 100-continue, x": expect_odd,
        "Content-Length twice": duplicate_length,
        "HTTP/1.0": http10,
        "chunked, identity": chunked_identity,
        "a folded header": folded_header,
        "an absolute target": absolute_target,
    }


def _framing_result(answer: bytes) -> dict[str, Any]:
    """Refused is a 4xx first; a networks listing or a container listing anywhere in the
    answer (a smuggled request answered, or answers out of step) is a breach."""
    text = answer.decode("latin-1")
    status, parsed = parse(answer)
    leaked = '"Driver":"bridge"' in text.replace(" ", "") or '"Names":' in text
    message = parsed.get("message", "") if isinstance(parsed, dict) else text[:200]
    return {"status": 999 if leaked else status, "message": message, "created": ""}


# ------------------------------------------------------- 4, 5, 6. what was let through
def host_reach(ctx: Context) -> dict[str, Callable[[], dict[str, Any]]]:
    b = lambda extra: _image_body(ctx, extra)  # noqa: E731
    mount = json.dumps(ctx.mount)[1:-1]
    return {
        "volume options binding /etc": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"Mounts":[{"Type":"volume","Target":"/x","VolumeOptions":'
                '{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind",'
                '"device":"/etc"}}}}]}'
            ),
        ),
        "bind <mount>/link/../..": lambda: create(
            ctx, b(',"HostConfig":{"Binds":["' + mount + '/link/../..:/x"]}')
        ),
        "bind <mount>/..": lambda: create(
            ctx, b(',"HostConfig":{"Binds":["' + mount + '/..:/x"]}')
        ),
        "bind a symlink in the mount": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"Mounts":[{"Type":"bind","Source":"'
                + mount
                + '/link","Target":"/x"}]}'
            ),
        ),
        "bind below the mount": lambda: create(
            ctx, b(',"HostConfig":{"Binds":["' + mount + '/sub:/x"]}')
        ),
        "bind with rshared": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"Mounts":[{"Type":"bind","Source":"' + mount + '","Target":"/x",'
                '"BindOptions":{"Propagation":"rshared"}}]}'
            ),
        ),
        "bind option shared": lambda: create(
            ctx, b(',"HostConfig":{"Binds":["' + mount + ':/x:shared"]}')
        ),
        "root user": lambda: create(ctx, b(',"User":"0:0"')),
        "syslog log driver": lambda: create(
            ctx,
            b(
                ',"HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"udp://127.0.0.1:9"}}}'
            ),
        ),
        "awslogs log driver": lambda: create(
            ctx, b(',"HostConfig":{"LogConfig":{"Type":"awslogs","Config":{}}}')
        ),
        "restart always": lambda: create(
            ctx, b(',"HostConfig":{"RestartPolicy":{"Name":"always"}}')
        ),
        "a named network": lambda: create(ctx, b(',"HostConfig":{"NetworkMode":"nbc-attack-net"}')),
        "an endpoint on a network": lambda: create(
            ctx, b(',"NetworkingConfig":{"EndpointsConfig":{"nbc-attack-net":{}}}')
        ),
        "cap_add NET_ADMIN": lambda: create(ctx, b(',"HostConfig":{"CapAdd":["NET_ADMIN"]}')),
        "group 0": lambda: create(ctx, b(',"HostConfig":{"GroupAdd":["0"]}')),
        "a plain create": lambda: create(ctx, b("")),
        "a plain create with its mount": lambda: create(
            ctx, b(',"HostConfig":{"Binds":["' + mount + ':/work"]}')
        ),
        "build ADD <url>": lambda: build(ctx, f"FROM {ctx.base}\nADD {ctx.fetch} /x\n"),
        "build ADD <url> in JSON form": lambda: build(
            ctx, f'FROM {ctx.base}\nADD ["{ctx.fetch}", "/x"]\n'
        ),
        "build ADD <url> through a continuation": lambda: build(
            ctx, f"FROM {ctx.base}\nADD \\\n  {ctx.fetch} \\\n  /x\n"
        ),
        "build ADD <url> with an escape directive": lambda: build(
            ctx, f"# escape=`\nFROM {ctx.base}\nADD `\n {ctx.fetch} /x\n"
        ),
        "build ADD $URL": lambda: build(
            ctx, f"FROM {ctx.base}\nARG URL={ctx.fetch}\nADD $URL /x\n"
        ),
        "build FROM a missing image": lambda: build(ctx, "FROM 127.0.0.1:9/nothing:here\n"),
        "build COPY --from a missing image": lambda: build(
            ctx, f"FROM {ctx.base}\nCOPY --from=127.0.0.1:9/nothing /x /x\n"
        ),
        "build ONBUILD ADD <url>": lambda: build(
            ctx, f"FROM {ctx.base}\nONBUILD ADD {ctx.fetch} /x\n"
        ),
        "build a Dockerfile through a link": lambda: _build_through_link(ctx),
        "build cgroupparent": lambda: build(ctx, "FROM " + ctx.base, "cgroupparent=/"),
        "build on the host network": lambda: build(ctx, "FROM " + ctx.base, "networkmode=host"),
        "build with BuildKit": lambda: build(ctx, "FROM " + ctx.base, "version=2"),
    }


def _build_through_link(ctx: Context) -> dict[str, Any]:
    """A clean Dockerfile, a link sub -> ., and sub/Dockerfile, which extracts over it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        clean = f"FROM {ctx.base}\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(clean)
        tar.addfile(info, io.BytesIO(clean))
        link = tarfile.TarInfo("sub")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        tar.addfile(link)
        bad = f"FROM {ctx.base}\nADD {ctx.fetch} /x\n".encode()
        info = tarfile.TarInfo("sub/Dockerfile")
        info.size = len(bad)
        tar.addfile(info, io.BytesIO(bad))
    body = buf.getvalue()
    head = (
        "POST /v1.41/build?t=guard-attack-build:1 HTTP/1.1\r\nHost: docker\r\nConnection: close"
        f"\r\nContent-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, answer = parse(raw(ctx.sock, head + body, timeout=120))
    return _result(status, answer)


def setuid_archive(ctx: Context, container: str) -> dict[str, Any]:
    """A setuid-root file and a device put into a container (the kernel's mount bound at
    /work): refused, or written owned by the kernel's user without the setuid bit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"#!/bin/sh\nid\n"
        info = tarfile.TarInfo("planted")
        info.size, info.mode, info.uid, info.gid = len(data), 0o4755, 0, 0
        tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    head = (
        f"PUT /v1.41/containers/{container}/archive?path=/work HTTP/1.1\r\nHost: docker\r\n"
        f"Connection: close\r\nContent-Type: application/x-tar\r\nContent-Length: {len(body)}"
        "\r\n\r\n"
    ).encode()
    status, answer = parse(raw(ctx.sock, head + body))
    return _result(status, answer)


def device_archive(ctx: Context, container: str) -> dict[str, Any]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("kmsg")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 11
        tar.addfile(info)
    body = buf.getvalue()
    head = (
        f"PUT /v1.41/containers/{container}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return _result(*parse(raw(ctx.sock, head + body)))


# --------------------------------------------------------------------- 7. exhaustion
def exhaust(sock_path: str, count: int = 5000, hold: float = 2.0) -> dict[str, Any]:
    """Open `count` connections and leave them idle (half of them with half a request);
    returns how many the guard answered with 429/503 at once."""
    opened: list[socket.socket] = []
    turned_away = 0
    refused_connect = 0
    for i in range(count):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock_path)  # blocking: each waits for the guard to accept it
        except OSError:
            refused_connect += 1
            s.close()
            continue
        if i % 2:
            with contextlib.suppress(OSError):
                s.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Le")
        opened.append(s)
    time.sleep(hold)
    for s in opened:
        s.setblocking(False)
        try:
            data = s.recv(200)
        except OSError:
            data = b""
        if data.startswith((b"HTTP/1.1 429", b"HTTP/1.1 503")):
            turned_away += 1
    return {"opened": len(opened), "turned_away": turned_away, "refused": refused_connect,
            "sockets": opened}  # fmt: skip


def close_all(sockets: list[socket.socket]) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.close()


def run_table(table: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, attack in table.items():
        try:
            out[name] = attack()
        except Exception as exc:  # noqa: BLE001 (an attack that breaks is reported, not raised)
            out[name] = {"status": -1, "message": f"{type(exc).__name__}: {exc}", "created": ""}
    return out


# ------------------------------------------------------------------ judging (host side)
MUST_BE_REFUSED = {
    "hostConfig beside HostConfig", "HOSTCONFIG alone", "Hoſtconfig (long s)",
    "privileged spelled low", "capadd spelled low beside CapAdd", "NetworKMode (Kelvin sign)",
    "tmpfs mount retyped as bind of /etc", "read-only mount made writable",
    "hostip beside HostIp", "duplicate key, last wins in Go",
    "volume options binding /etc", "bind <mount>/link/../..", "bind <mount>/..",
    "bind a symlink in the mount", "bind below the mount", "bind with rshared",
    "bind option shared", "syslog log driver", "awslogs log driver",
    "restart always", "a named network", "an endpoint on a network", "cap_add NET_ADMIN",
    "group 0", "build ADD <url>", "build ADD <url> in JSON form",
    "build ADD <url> through a continuation", "build ADD <url> with an escape directive",
    "build ADD $URL", "build FROM a missing image", "build COPY --from a missing image",
    "build ONBUILD ADD <url>", "build a Dockerfile through a link", "build cgroupparent",
    "build on the host network", "build with BuildKit",
}  # fmt: skip
# Refused only when the kernel's own user is not root (they ask for root).
ROOT_ONLY = {"root user", "user spelled low"}
SAFE_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID",
                     "SETUID"}  # fmt: skip


def within_policy(info: dict[str, Any] | None, user: str, kernel: str, mounts: set[str]) -> None:
    """What dockerd stored for a container a guarded kernel made (read from the daemon,
    independently of the guard's own checks)."""
    assert info is not None
    host, config = info["HostConfig"], info["Config"]
    assert config["User"] == user, config["User"]
    assert config["Labels"]["io.nbcontainer.guard-kernel"] == kernel
    assert not host["Privileged"] and not host.get("PublishAllPorts")
    assert "ALL" in host["CapDrop"]
    assert {c.upper().removeprefix("CAP_") for c in host["CapAdd"] or []} <= SAFE_CAPABILITIES
    assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"])
    assert host["LogConfig"]["Type"] in ("json-file", "local", "none")
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["NetworkMode"] in ("default", "bridge", "none")
    assert not host.get("GroupAdd") and not host.get("Devices")
    for m in info["Mounts"]:
        if m["Type"] == "bind":
            assert m["Source"] in mounts, m
            assert m.get("Propagation") in ("", "rprivate", "private"), m
        else:
            assert m["Type"] in ("volume", "tmpfs") and m.get("Driver", "local") == "local", m
    for bindings in (host.get("PortBindings") or {}).values():
        assert all(b["HostIp"] in ("127.0.0.1", "::1") for b in bindings)


def judge(
    results: dict[str, dict[str, Any]],
    inspect: Callable[[str], dict[str, Any] | None],
    remove: Callable[[str], Any],
    user: str,
    kernel: str,
    mounts: set[str],
) -> None:
    """Every attack refused by the guard, or what it made within policy (then removed);
    those that must be refused were."""
    must = MUST_BE_REFUSED | (ROOT_ONLY if not user.startswith("0:") else set())
    assert set(results) >= must, sorted(must - set(results))
    for name in must:
        assert 400 <= results[name]["status"] < 500, (name, results[name])
        assert "guard" in results[name]["message"], (name, results[name])
    for name, result in results.items():
        status, created = result["status"], result["created"]
        if 200 <= status < 300:
            assert created and not created.startswith("guard-attack-build"), (name, result)
            within_policy(inspect(created), user, kernel, mounts)
            remove(created)
        else:
            assert 400 <= status < 600 and status != 999, (name, result)

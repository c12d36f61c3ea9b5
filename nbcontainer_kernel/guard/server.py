"""The Docker API guard: a unix socket that kernels reach as /var/run/docker.sock.

One guard serves every kernel of the process that starts them (the Jupyter server).
It knows which kernel is asking from the socket itself: the kernel's process is the
peer, the peer's pid (``SO_PEERCRED``, which the host kernel fills in and no
container can forge) names its cgroup, and the cgroup names its container. A
container the provisioner has not granted (a waiting pool container, a container
a kernel made and gave the socket to) is refused everything. So one socket can be
mounted into every container of a launch shape, and warm pools keep working.

Each connection gets a thread and a connection of its own to the daemon. A request
is decided by :func:`.policy.decide`; an allowed one is forwarded with its body
streamed (build contexts, archives), and its answer streamed back (build output,
followed logs, a wait), except the small JSON bodies the policy reads or rewrites.
Attach and exec start turn into a two-way byte pipe, as Docker's own hijack does.

The guard's directory (0700, its socket 0666 inside) is removed when it closes; one
left by a process that died (kill -9) is removed by :func:`remove_stale` (the next
kernel start's sweep, and ``nbcontainer gc``).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import re
import select
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from .http import Head, ProtocolError, copy_body, drain, read_body, read_head
from .policy import MAX_JSON_BODY, Grant, Lookups, Refused, decide

__all__ = ["DockerGuard", "container_of_peer", "process_guard", "remove_stale"]

log = logging.getLogger(__name__)

DIR_PREFIX = "nbcontainer-guard-"
SOCKET_NAME = "docker.sock"
MAX_ANSWER = 64 << 20  # a filtered listing held in memory at most this large
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def container_of_peer(conn: socket.socket) -> str | None:
    """The id of the container whose process is at the other end of `conn`, or None
    when the peer is not in a container (or is gone)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    # cgroupfs: /docker/<id>; systemd: /system.slice/docker-<id>.scope. The last id is
    # the innermost container.
    found = _CONTAINER_ID.findall(text)
    return found[-1] if found else None


class _Daemon:
    """Small JSON reads from the daemon (inspect), on a connection of their own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: http.client.HTTPConnection | None = None

    def get(self, url: str) -> dict[str, Any] | None:
        for attempt in (1, 2):
            conn = self._conn or _UnixHTTPConnection(self._path)
            self._conn = conn
            try:
                conn.request("GET", url)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status == 404:
                return None
            if resp.status >= 400:
                raise OSError(f"the daemon answered {resp.status} to GET {url}")
            out = json.loads(body)
            return out if isinstance(out, dict) else None
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


@dataclass
class _Made:
    """What a kernel made through the guard, by id (ids never change: a safe cache)."""

    owned: set[str] = field(default_factory=set)  # containers
    exec_ids: set[str] = field(default_factory=set)


class _Conn:
    """One kernel connection: the client socket and, once used, its daemon connection."""

    def __init__(self, client: socket.socket, container_id: str | None) -> None:
        self.client = client
        self.container_id = container_id
        self.upstream: socket.socket | None = None

    def shutdown(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):  # closed already
                    sock.shutdown(socket.SHUT_RDWR)


class DockerGuard:
    """A guard on a socket of its own, forwarding to the daemon at `upstream` (a unix
    socket path). `identify` tells which container a connection comes from (replaced in
    tests, whose clients are not in containers)."""

    def __init__(
        self,
        upstream: str,
        *,
        identify: Callable[[socket.socket], str | None] = container_of_peer,
        parent: str | None = None,
    ) -> None:
        self.upstream = upstream
        self._identify = identify
        self.directory = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=parent)
        self.path = os.path.join(self.directory, SOCKET_NAME)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        # Anyone who can reach the socket may connect (a kernel runs as any uid); what
        # it may do is decided per container. The directory keeps other host users out.
        os.chmod(self.path, 0o666)
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._grants: dict[str, Grant] = {}  # container id -> what it may do
        self._made: dict[str, _Made] = {}  # kernel id -> ids of what it made
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="nbcontainer-guard", daemon=True
        )
        self._acceptor.start()

    # --------------------------------------------------------------- grants
    def grant(self, grant: Grant) -> None:
        """Called by the provisioner once a kernel's container runs: it may use the guard."""
        with self._lock:
            self._grants[grant.container_id] = grant
            self._made.setdefault(grant.kernel_id, _Made())

    def revoke(self, container_id: str) -> None:
        """Called by the provisioner when a kernel's container goes: its grant ends and its
        open connections are closed (their threads end with them)."""
        with self._lock:
            grant = self._grants.pop(container_id, None)
            conns = [c for c in self._conns if c.container_id == container_id]
            if grant and not any(g.kernel_id == grant.kernel_id for g in self._grants.values()):
                self._made.pop(grant.kernel_id, None)
        for conn in conns:
            conn.shutdown()

    def granted(self) -> list[Grant]:
        with self._lock:
            return list(self._grants.values())

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # -------------------------------------------------------------- closing
    def close(self, timeout: float = 5) -> None:
        """Stop accepting, close every connection, wait for their threads, remove the
        socket and its directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        os.write(self._wake_w, b"x")
        self._acceptor.join(timeout)
        for conn in conns:
            conn.shutdown()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------- serving
    def _accept_loop(self) -> None:
        while True:
            ready, _, _ = select.select([self._listener.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            try:
                container_id = self._identify(client)
            except OSError:
                container_id = None
            conn = _Conn(client, container_id)
            thread = threading.Thread(
                target=self._serve, args=(conn,), daemon=True, name="nbcontainer-guard-conn"
            )
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._conns.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: _Conn) -> None:
        daemon = _Daemon(self.upstream)
        client = conn.client
        rfile: Any = client.makefile("rb", buffering=1 << 16)
        upfile: Any = None
        try:
            while True:
                head = read_head(rfile)
                if head is None:
                    return
                method, target, version = (head.line.split(" ", 2) + ["", ""])[:3]
                version = version if version in ("HTTP/1.0", "HTTP/1.1") else "HTTP/1.1"
                split = urlsplit(target)
                query = parse_qsl(split.query, keep_blank_values=True)
                if head.get("expect").lower() == "100-continue":
                    # Said here, so that a body the guard reads comes at once.
                    client.sendall(f"{version} 100 Continue\r\n\r\n".encode())
                    head.headers = head.without("expect")
                try:
                    action, body = self._decide(
                        conn, method, split.path, query, head, rfile, daemon
                    )
                except Refused as refused:
                    self._refuse(client, head, rfile, refused, version)
                    if head.get("connection").lower() == "close":
                        return
                    continue
                if conn.upstream is None:
                    conn.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    conn.upstream.connect(self.upstream)
                    upfile = conn.upstream.makefile("rb", buffering=1 << 16)
                assert upfile is not None
                new_target = action.path + (f"?{urlencode(action.query)}" if action.query else "")
                line = f"{method} {quote(new_target, safe='/?&=%:+,@')} {version}"
                if body is not None:
                    headers = head.without("content-length", "transfer-encoding")
                    headers.append(("content-length", str(len(body))))
                    conn.upstream.sendall(Head(line, headers).encode() + body)
                else:
                    conn.upstream.sendall(Head(line, head.headers).encode())
                    copy_body(rfile, head, conn.upstream)
                if not self._answer(conn, method, action, upfile, rfile):
                    return
                if head.get("connection").lower() == "close":
                    return
        except (OSError, ProtocolError, ValueError) as exc:
            if not self._closed:
                log.debug("nbcontainer guard: connection ended: %s", exc)
        finally:
            daemon.close()
            for f in (rfile, upfile):
                if f is not None:
                    f.close()
            for sock in (client, conn.upstream):
                if sock is not None:
                    sock.close()
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _decide(
        self,
        conn: _Conn,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        head: Head,
        rfile: Any,
        daemon: _Daemon,
    ) -> tuple[Any, bytes | None]:
        """The policy's action and, when it rewrites the body, the new body."""
        with self._lock:
            grant = self._grants.get(conn.container_id or "")
            made = self._made.get(grant.kernel_id) if grant else None
        if grant is None or made is None:
            raise Refused(
                f"{method} {path}",
                "this socket serves nbcontainer's containerized kernels, and this "
                "process is not one (or its kernel has ended)",
            )
        look = Lookups(
            container=lambda ref: daemon.get(f"/containers/{quote(ref, safe='')}/json"),
            image=lambda ref: daemon.get(f"/images/{quote(ref, safe='')}/json"),
            exec_ids=made.exec_ids,
            owned=made.owned,
        )
        try:
            action = decide(method, path, query, grant, look)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise Refused(f"{method} {path}", f"a parameter is malformed ({exc})", 400) from None
        if action.body is None:
            return action, None
        raw = read_body(rfile, head, MAX_JSON_BODY)  # too large: ProtocolError, conn closed
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            refused = Refused(f"{method} {path}", "the body is not a JSON object", status=400)
            refused.body_consumed = True
            raise refused
        try:
            return action, json.dumps(action.body(data)).encode()
        except Refused as refused:
            refused.body_consumed = True
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            malformed = Refused(f"{method} {path}", f"the body is malformed ({exc})", 400)
            malformed.body_consumed = True
            raise malformed from None

    def _refuse(
        self, client: socket.socket, head: Head, rfile: Any, refused: Refused, version: str
    ) -> None:
        # Whatever body came is read (and dropped), so the connection stays usable.
        if not refused.body_consumed:
            drain(rfile, head)
        body = refused.body()
        reason = {403: "Forbidden", 404: "Not Found", 400: "Bad Request"}.get(
            refused.status, "Error"
        )
        out = Head(
            f"{version} {refused.status} {reason}",
            [("content-type", "application/json"), ("content-length", str(len(body)))],
        )
        client.sendall(out.encode() + body)
        log.info("nbcontainer guard: %s", refused)

    def _answer(self, conn: _Conn, method: str, action: Any, upfile: Any, rfile: Any) -> bool:
        """Send the daemon's answer back; False when the connection ends with it."""
        client = conn.client
        resp = read_head(upfile)
        if resp is None:
            raise ProtocolError("the daemon closed the connection")
        status = resp.status
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if status == 101 or (
            action.hijack and 200 <= status < 300 and resp.length is None and not resp.chunked
        ):
            client.sendall(resp.encode())
            _pipe_both_ways(conn, rfile, upfile)
            return False
        if action.answer is not None and 200 <= status < 300 and not no_body:
            raw = read_body(upfile, resp, MAX_ANSWER)
            try:
                answer = action.answer(json.loads(raw)) if raw else None
                out = raw if answer is None else json.dumps(answer).encode()
            except ValueError:
                out = raw
            headers = resp.without("content-length", "transfer-encoding")
            headers.append(("content-length", str(len(out))))
            client.sendall(Head(resp.line, headers).encode() + out)
        else:
            client.sendall(resp.encode())
            if not no_body:
                until_close = resp.length is None and not resp.chunked
                copy_body(upfile, resp, client, until_close=until_close)
                if until_close:
                    return False
        if resp.get("connection").lower() == "close":
            return False
        return True


def _pipe_both_ways(conn: _Conn, rfile: Any, upfile: Any) -> None:
    """Attach or exec start: bytes each way until either side closes."""
    assert conn.upstream is not None
    upstream, client = conn.upstream, conn.client

    def pump(src: Any, dest: socket.socket) -> None:
        # Either side closing (OSError) or its file closed under it (ValueError) ends it.
        with contextlib.suppress(OSError, ValueError):
            while data := src.read1(1 << 16):
                dest.sendall(data)
        with contextlib.suppress(OSError):
            dest.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=pump, args=(upfile, client), daemon=True)
    back.start()
    pump(rfile, upstream)
    back.join()


# ------------------------------------------------------------------ process guard
_process_guard: DockerGuard | None = None
_process_lock = threading.Lock()


def process_guard(upstream: str) -> DockerGuard:
    """This process's guard (started on first use, closed at exit)."""
    global _process_guard
    with _process_lock:
        if _process_guard is None or _process_guard.closed:
            remove_stale()
            _process_guard = DockerGuard(upstream)
            atexit.register(_process_guard.close)
        return _process_guard


def current_guard() -> DockerGuard | None:
    return _process_guard


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove guard directories whose process is gone (a server killed with -9): its pid
    no longer runs, or its socket no longer answers (the pid was reused)."""
    import psutil

    root = Path(parent or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{DIR_PREFIX}*"):
        pid = path.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if psutil.pid_exists(int(pid)) and _answers(path / SOCKET_NAME):
            continue
        if psutil.pid_exists(int(pid)) and not (path / SOCKET_NAME).exists():
            continue  # being made right now
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False

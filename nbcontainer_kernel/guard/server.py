"""The Docker API guard: a unix socket that kernels reach as /var/run/docker.sock.

One guard serves every kernel of the process that starts them (the Jupyter server).
It knows which kernel is asking from the socket itself: the kernel's process is the
peer, the peer's pid (``SO_PEERCRED``, which the host kernel fills in and no
container can forge) names its cgroup, and the cgroup names its container. A
container the provisioner has not granted (a waiting pool container, a container
a kernel made and gave the socket to) is refused everything. So one socket can be
mounted into every container of a launch shape, and warm pools keep working.

Each connection gets a thread (at most ``max_per_kernel`` per kernel and
``max_connections`` in all: past those a connection is answered 429 or 503 at once and
closed, so a cell opening thousands cannot take the server's threads or descriptors),
and a connection of its own to the daemon. A request is read strictly (:mod:`.wire`),
decided by :func:`.policy.decide`, and an allowed one is written afresh to the daemon:
the canonical target, the rewritten body (JSON from a model, tar streams rewritten as
they flow: :mod:`.archives`), the guard's own framing. After a container or exec
create or a commit, what the daemon stored is checked (:mod:`.stored`). Attach and exec
start turn into a two-way byte pipe, as Docker's own hijack does.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .archives import ArchiveRefused, rewrite_archive, rewrite_context
from .create import nano_cpus
from .dockerfile import MAX_DOCKERFILE
from .policy import GUARD_KERNEL, MAX_JSON_BODY, Action, Grant, Live, Lookups, Refused, decide
from .stored import container_outside, exec_outside, image_outside, volume_outside
from .wire import DaemonSide, HttpError, KernelSide, Request, Timeouts, answer_headers, raw_answer

__all__ = ["DockerGuard", "container_of_peer", "process_guard", "remove_stale"]

log = logging.getLogger(__name__)

DIR_PREFIX = "nbcontainer-guard-"
SOCKET_NAME = "docker.sock"
MAX_ANSWER = 64 << 20  # a filtered listing held in memory at most this large
SMALL_ANSWER = 1 << 20  # answers up to this size are passed on whole, not chunked
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_RESOURCE_STATES = {"created", "running", "restarting", "paused"}


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
    """Small JSON calls to the daemon (inspect, list, remove) on a connection of their own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, url: str) -> Any:
        for attempt in (1, 2):
            conn = self._conn or _UnixHTTPConnection(self._path)
            self._conn = conn
            try:
                conn.request(method, url)
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
                raise OSError(f"the daemon answered {resp.status} to {method} {url}")
            return json.loads(body) if body else None
        return None

    def get(self, url: str) -> dict[str, Any] | None:
        out = self.call("GET", url)
        return out if isinstance(out, dict) else None

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
class _Kernel:
    """What the guard keeps of one kernel: its grant and what it made (ids never change:
    a safe cache), and the lock that makes its creates one at a time (its totals)."""

    grant: Grant
    owned: set[str] = field(default_factory=set)  # containers
    exec_ids: set[str] = field(default_factory=set)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> memory, nano
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Conn:
    """One kernel connection: the client socket and, once used, its daemon connection."""

    def __init__(self, client: socket.socket, container_id: str | None, key: str) -> None:
        self.client = client
        self.container_id = container_id
        self.key = key  # the kernel it counts against (its container id when unknown)
        self.upstream: DaemonSide | None = None

    def shutdown(self) -> None:
        socks = [self.client]
        if self.upstream is not None and self.upstream.sock is not None:
            socks.append(self.upstream.sock)
        for sock in socks:
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
        timeouts: Timeouts | None = None,
        max_connections: int = 256,
        max_per_kernel: int = 48,
    ) -> None:
        self.upstream = upstream
        self.timeouts = timeouts or Timeouts()
        self.max_connections = max_connections
        self.max_per_kernel = max_per_kernel
        self._identify = identify
        self.directory = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=parent)
        self.path = os.path.join(self.directory, SOCKET_NAME)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        # Anyone who can reach the socket may connect (a kernel runs as any uid); what
        # it may do is decided per container. The directory keeps other host users out.
        os.chmod(self.path, 0o666)
        self._listener.listen(128)
        self._lock = threading.Lock()
        self._grants: dict[str, Grant] = {}  # container id -> what it may do
        self._kernels: dict[str, _Kernel] = {}  # kernel id -> its record
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._cgroup_v1: bool | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self.turned_away = 0  # connections answered 429/503 for want of a place
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="nbcontainer-guard", daemon=True
        )
        self._acceptor.start()

    # --------------------------------------------------------------- grants
    def grant(self, grant: Grant) -> None:
        """Called by the provisioner once a kernel's container runs: it may use the guard."""
        with self._lock:
            self._grants[grant.container_id] = grant
            kernel = self._kernels.get(grant.kernel_id)
            if kernel is None:
                self._kernels[grant.kernel_id] = _Kernel(grant)
            else:
                kernel.grant = grant

    def revoke(self, container_id: str) -> None:
        """Called by the provisioner when a kernel's container goes: its grant ends and its
        open connections are closed (their threads end with them)."""
        with self._lock:
            grant = self._grants.pop(container_id, None)
            conns = [c for c in self._conns if c.container_id == container_id]
            if grant and not any(g.kernel_id == grant.kernel_id for g in self._grants.values()):
                self._kernels.pop(grant.kernel_id, None)
        for conn in conns:
            conn.shutdown()

    def granted(self) -> list[Grant]:
        with self._lock:
            return list(self._grants.values())

    def connection_count(self, container_id: str | None = None) -> int:
        with self._lock:
            if container_id is None:
                return len(self._conns)
            return sum(1 for c in self._conns if c.container_id == container_id)

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

    # ------------------------------------------------------------- accepting
    def _accept_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._listener.fileno(), self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                client, _ = self._listener.accept()
            except OSError as exc:
                # Out of descriptors, or an interrupted call: wait a moment, go on. The
                # loop serves every kernel, so nothing one connection does may end it.
                log.warning("nbcontainer guard: accept failed: %s", exc)
                time.sleep(0.05)
                continue
            try:
                self._admit(client)
            except Exception:  # noqa: BLE001 (one connection's failure never ends the loop)
                log.exception("nbcontainer guard: a connection could not be served")
                with contextlib.suppress(OSError):
                    client.close()

    def _admit(self, client: socket.socket) -> None:
        try:
            container_id = self._identify(client)
        except OSError:
            container_id = None
        with self._lock:
            if self._closed:
                client.close()
                return
            grant = self._grants.get(container_id or "")
            key = grant.kernel_id if grant else f"?{container_id}"
            mine = sum(1 for c in self._conns if c.key == key)
            busy = (
                (429, f"this kernel has {mine} connections open, the guard's limit per kernel")
                if mine >= self.max_per_kernel
                else (503, f"the guard serves {len(self._conns)} connections, its limit")
                if len(self._conns) >= self.max_connections
                else None
            )
            if busy is None:
                conn = _Conn(client, container_id, key)
                thread = threading.Thread(
                    target=self._serve, args=(conn,), daemon=True, name="nbcontainer-guard-conn"
                )
                self._conns.add(conn)
                self._threads.add(thread)
        if busy is not None:
            self.turned_away += 1
            _refuse_at_once(client, *busy)
            return
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: this connection goes, the loop stays
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(thread)
            _refuse_at_once(client, 503, "the guard cannot start a thread for this connection")

    # --------------------------------------------------------------- serving
    def _serve(self, conn: _Conn) -> None:
        daemon = _Daemon(self.upstream)
        kernel_side = KernelSide(conn.client, self.timeouts)
        conn.upstream = DaemonSide(self.upstream, self.timeouts)
        try:
            while not self._closed:
                try:
                    request = kernel_side.next_request()
                except HttpError as exc:
                    _refuse_raw(kernel_side, exc.status, exc.reason)
                    return
                if request is None:
                    return
                if not self._handle(conn, kernel_side, request, daemon):
                    return
                if not kernel_side.reusable:
                    return
        except HttpError as exc:
            _refuse_raw(kernel_side, exc.status, exc.reason)
        except (OSError, ValueError) as exc:
            if not self._closed:
                log.debug("nbcontainer guard: connection ended: %s", exc)
        except Exception:  # noqa: BLE001 (a bug here must not take the server's thread down silently)
            log.exception("nbcontainer guard: a connection failed")
        finally:
            daemon.close()
            conn.upstream.close()
            with contextlib.suppress(OSError):
                conn.client.close()
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _kernel(self, conn: _Conn) -> _Kernel | None:
        with self._lock:
            grant = self._grants.get(conn.container_id or "")
            return self._kernels.get(grant.kernel_id) if grant else None

    def _handle(
        self, conn: _Conn, kernel_side: KernelSide, request: Request, daemon: _Daemon
    ) -> bool:
        """One request, answered; False when the connection ends with it."""
        what = f"{request.method} {request.target.split('?')[0][:120]}"
        kernel = self._kernel(conn)
        if kernel is None:
            kernel_side.respond_json(
                403,
                str(
                    Refused(
                        what,
                        "this socket serves nbcontainer's containerized kernels, and this "
                        "process is not one (or its kernel has ended)",
                    )
                ),
            )
            return kernel_side.body_done
        look = self._lookups(kernel, daemon)
        try:
            action = decide(request.method, request.target, kernel.grant, look)
            if request.upgrade and not action.hijack:
                raise Refused(what, "an upgrade is for attach and exec start only", 400)
            if action.serial:
                with kernel.lock:
                    return self._forward(conn, kernel_side, request, action, kernel, daemon)
            return self._forward(conn, kernel_side, request, action, kernel, daemon)
        except Refused as refused:
            log.info("nbcontainer guard: %s", refused)
            kernel_side.respond_json(refused.status, str(refused))
            return kernel_side.body_done

    def _lookups(self, kernel: _Kernel, daemon: _Daemon) -> Lookups:
        def live() -> list[Live]:
            filters = json.dumps({"label": [f"{GUARD_KERNEL}={kernel.grant.kernel_id}"]})
            listing = daemon.call("GET", f"/containers/json?all=1&filters={quote(filters)}") or []
            out = []
            for c in listing:
                if c.get("State") not in _RESOURCE_STATES:
                    continue
                cid = str(c.get("Id"))
                if cid not in kernel.limits:
                    info = daemon.get(f"/containers/{cid}/json") or {}
                    host = info.get("HostConfig") or {}
                    kernel.limits[cid] = (int(host.get("Memory") or 0), nano_cpus(host))
                memory, nano = kernel.limits[cid]
                name = ((c.get("Names") or [""])[0] or "").lstrip("/")
                out.append(Live(cid, name, str(c.get("State")), memory, nano))
            return out

        return Lookups(
            container=lambda ref: daemon.get(f"/containers/{quote(ref, safe='')}/json"),
            image=lambda ref: daemon.get(f"/images/{quote(ref, safe='')}/json"),
            exec_ids=kernel.exec_ids,
            owned=kernel.owned,
            live=live,
        )

    def _forward(
        self,
        conn: _Conn,
        kernel_side: KernelSide,
        request: Request,
        action: Action,
        kernel: _Kernel,
        daemon: _Daemon,
    ) -> bool:
        upstream = conn.upstream
        assert upstream is not None
        headers = [(k, request.header(k)) for k in action.headers if request.header(k)]
        headers += [(k, v) for k, v in action.default_headers if not request.header(k)]
        if action.content_type:
            headers.append(("content-type", action.content_type))
        if action.hijack and request.upgrade:
            headers += [("connection", "Upgrade"), ("upgrade", "tcp")]
        what = f"{request.method} {action.path}"
        if action.body == "none":
            kernel_side.finish_request()  # HttpError when a body came where none belongs
            upstream.start(request.method, action.target, headers, None)
        elif action.body == "json":
            raw = kernel_side.read_body(MAX_JSON_BODY)
            assert action.rewrite is not None
            upstream.start(request.method, action.target, headers, action.rewrite(raw))
        else:
            upstream.start(
                request.method,
                action.target,
                [*headers, ("transfer-encoding", "chunked")],
                None,
            )
            try:
                if action.body == "archive":
                    assert action.owner is not None
                    rewrite_archive(kernel_side.body(), upstream.send_data, *action.owner)
                else:
                    assert action.check_dockerfile is not None
                    rewrite_context(
                        kernel_side.body(),
                        upstream.send_data,
                        action.dockerfile,
                        action.check_dockerfile,
                        MAX_DOCKERFILE,
                    )
            except (ArchiveRefused, Refused) as exc:
                upstream.abort()  # the daemon fails a body that ends unfinished
                if isinstance(exc, Refused):
                    raise
                raise Refused(what, str(exc)) from None
            except OSError:
                # The daemon stopped reading (it answered early, an error): its answer
                # is what the kernel gets.
                if upstream.conn is None:
                    raise
            else:
                upstream.end()
        return self._answer(kernel_side, request, action, kernel, daemon, upstream)

    def _answer(
        self,
        kernel_side: KernelSide,
        request: Request,
        action: Action,
        kernel: _Kernel,
        daemon: _Daemon,
        upstream: DaemonSide,
    ) -> bool:
        head = upstream.response(stream=action.stream)
        status = head.status_code
        headers = answer_headers(head)
        if status == 101:
            if not (action.hijack and request.upgrade):
                raise OSError("the daemon switched protocols unasked")
            from_kernel = kernel_side.upgrade(headers)
            _pipe_both_ways(kernel_side.sock, upstream, from_kernel)
            return False
        no_body = request.method == "HEAD" or status in (204, 304)
        if no_body:
            kernel_side.respond(status, headers, None, head.reason)
            return True
        length = next((v for k, v in head.headers if k == b"content-length"), None)
        if 200 <= status < 300 and (action.verify or action.answer is not None):
            raw = upstream.read_body(MAX_ANSWER)
            try:
                answer = json.loads(raw) if raw else None
            except ValueError:
                answer = None
            if action.verify:
                problem = self._verify(action.verify, answer, kernel, daemon)
                if problem:
                    raise Refused(
                        f"{request.method} {action.path.split('?')[0]}",
                        f"the daemon stored {problem}: outside the guard's policy, so it was "
                        "removed",
                    )
            if action.answer is not None and answer is not None:
                raw = json.dumps(action.answer(answer)).encode()
            kernel_side.respond(status, headers, raw, head.reason)
            return True
        if length is not None and int(length) <= SMALL_ANSWER:
            kernel_side.respond(status, headers, upstream.read_body(SMALL_ANSWER), head.reason)
        else:
            kernel_side.respond(status, headers, upstream.body(), head.reason)
        return True

    def _verify(self, kind: str, answer: Any, kernel: _Kernel, daemon: _Daemon) -> str:
        """What the daemon stored, checked; on a problem what was made is removed."""
        made = str((answer or {}).get("Id") or "") if isinstance(answer, dict) else ""
        if not made:
            return "" if kind != "container" else "no container id"
        grant = kernel.grant
        if kind == "container":
            info = daemon.get(f"/containers/{made}/json") or {}
            problem = container_outside(info, grant, cgroup_v1=self._is_cgroup_v1(daemon))
            for mount in info.get("Mounts") or []:
                if problem:
                    break
                if mount.get("Type") == "volume" and mount.get("Name"):
                    volume = daemon.get(f"/volumes/{quote(mount['Name'], safe='')}") or {}
                    problem = volume_outside(volume)
            if problem:
                with contextlib.suppress(OSError):
                    daemon.call("DELETE", f"/containers/{made}?force=1&v=1")
                return f"for container {made[:12]}: {problem}"
            host = info.get("HostConfig") or {}
            kernel.owned.add(made)
            kernel.limits[made] = (int(host.get("Memory") or 0), nano_cpus(host))
            return ""
        if kind == "exec":
            problem = exec_outside(daemon.get(f"/exec/{made}/json") or {}, grant)
            if problem:
                return f"for exec {made[:12]}: {problem}"
            kernel.exec_ids.add(made)
            return ""
        problem = image_outside(daemon.get(f"/images/{quote(made, safe='')}/json") or {}, grant)
        if problem:
            with contextlib.suppress(OSError):
                daemon.call("DELETE", f"/images/{quote(made, safe='')}?force=1")
            return f"for image {made[:19]}: {problem}"
        return ""

    def _is_cgroup_v1(self, daemon: _Daemon) -> bool:
        if self._cgroup_v1 is None:
            info = daemon.get("/info") or {}
            self._cgroup_v1 = str(info.get("CgroupVersion") or "1") == "1"
        return self._cgroup_v1


def _refuse_at_once(client: socket.socket, status: int, reason: str) -> None:
    """A short answer without waiting on the client (it may not read), then close."""
    data = raw_answer(status, f"nbcontainer's Docker guard: {reason}; try again later")
    with contextlib.suppress(OSError):
        client.setblocking(False)
        client.send(data)
    with contextlib.suppress(OSError):
        client.close()


def _refuse_raw(kernel_side: KernelSide, status: int, reason: str) -> None:
    """An answer to a request that could not be read as HTTP, then the connection ends."""
    data = raw_answer(status, f"nbcontainer's Docker guard refused the request: {reason}")
    with contextlib.suppress(OSError):
        kernel_side.sock.settimeout(1)
        kernel_side.sock.sendall(data)


def _pipe_both_ways(client: socket.socket, upstream: DaemonSide, from_kernel: bytes) -> None:
    """Attach or exec start: bytes each way until either side closes."""
    daemon_sock = upstream.sock
    assert daemon_sock is not None
    from_daemon = upstream.trailing()
    client.settimeout(None)
    daemon_sock.settimeout(None)

    def pump(src: socket.socket, dest: socket.socket, first: bytes) -> None:
        with contextlib.suppress(OSError):
            if first:
                dest.sendall(first)
            while data := src.recv(1 << 16):
                dest.sendall(data)
        with contextlib.suppress(OSError):
            dest.shutdown(socket.SHUT_WR)

    back = threading.Thread(target=pump, args=(daemon_sock, client, from_daemon), daemon=True)
    back.start()
    pump(client, daemon_sock, from_kernel)
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

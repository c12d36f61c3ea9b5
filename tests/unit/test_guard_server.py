"""The Docker guard's server (nbcontainer_kernel/guard/server.py) in front of a scripted daemon.

The daemon here is a small HTTP/1.1 server on a unix socket (no Docker): it answers the
few endpoints these tests use, so they can check what the guard forwards, rewrites and
streams. docker-py is the client, as it is in a kernel. The real daemon's turn is
tests/integration/test_docker_guard.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import urllib3

from nbcontainer_kernel.guard import GUARD_KERNEL, DockerGuard, Grant, remove_stale
from nbcontainer_kernel.guard.server import DIR_PREFIX

KERNEL_CID = "a" * 64
MADE = "d" * 64


class _Daemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.created: list[dict[str, Any]] = []
        self.log_gate = threading.Event()
        self.received: dict[str, Any] = {}
        super().__init__(path, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that went away mid-stream is what the revoke and close tests do."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Daemon

    def log_message(self, *args: Any) -> None:
        """Quiet: the tests check answers, not the access log."""

    def address_string(self) -> str:
        return "daemon"

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if not size:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, 1 << 16))
            left -= len(data)
            yield data

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)
        elif path.endswith(f"/containers/{MADE}/json"):
            self._json(200, {"Id": MADE, "Config": {"Tty": True, "Labels": {GUARD_KERNEL: "k1"}}})
        elif path.endswith("/containers/json"):
            self._json(200, [{"Id": MADE, "Labels": {GUARD_KERNEL: "k1"}}, {"Id": "f" * 64}])
        elif path.endswith(f"/containers/{MADE}/logs"):
            # A followed log: one line now, the next only when the test says so.
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in (b"first\n", b"second\n"):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(line), line))
                self.wfile.flush()
                self.server.log_gate.wait(10)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._json(404, {"message": f"no such thing: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        body = b"".join(self._body())
        if path.endswith("/containers/create"):
            self.server.created.append(json.loads(body))
            self._json(201, {"Id": MADE, "Warnings": []})
        elif path.endswith(f"/containers/{MADE}/attach"):
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
            self.end_headers()
            self.wfile.flush()
            while data := self.rfile.read1(1024):  # echo until the client closes
                self.wfile.write(data.upper())
                self.wfile.flush()
            self.close_connection = True
        else:
            self._json(404, {"message": "no"})

    def do_PUT(self) -> None:  # noqa: N802
        digest, size = hashlib.sha256(), 0
        for data in self._body():
            digest.update(data)
            size += len(data)
        self.server.received = {"size": size, "sha256": digest.hexdigest()}
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[_Daemon]:
    server = _Daemon(str(tmp_path / "daemon.sock"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.log_gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def guard(daemon: _Daemon, tmp_path: Path) -> Iterator[DockerGuard]:
    g = DockerGuard(daemon.server_address, identify=lambda _: KERNEL_CID, parent=str(tmp_path))
    g.grant(Grant(kernel_id="k1", container_id=KERNEL_CID))
    yield g
    g.close()


def _client(guard: DockerGuard) -> docker.APIClient:
    return docker.APIClient(base_url=f"unix://{guard.path}", version="1.41", timeout=20)


def test_a_create_is_forwarded_with_the_kernels_labels(guard: DockerGuard, daemon: _Daemon) -> None:
    api = _client(guard)
    made = api.create_container("img", ["true"], labels={"mine": "1"})
    assert made["Id"] == MADE
    assert daemon.created[0]["Labels"] == {
        "mine": "1",
        GUARD_KERNEL: "k1",
        "io.nbcontainer.owner-container": KERNEL_CID[:12],
    }


def test_a_refusal_is_a_403_with_its_reason_and_the_connection_goes_on(
    guard: DockerGuard, daemon: _Daemon
) -> None:
    api = _client(guard)
    with pytest.raises(docker.errors.APIError) as caught:
        api.create_container("img", host_config=api.create_host_config(privileged=True))
    assert caught.value.status_code == 403
    assert "HostConfig.Privileged" in str(caught.value.explanation)
    assert daemon.created == []
    assert api.ping()  # the same pooled connection still works


def test_a_listing_is_cut_to_the_kernels_containers(guard: DockerGuard) -> None:
    assert [c["Id"] for c in _client(guard).containers(all=True)] == [MADE]


def test_a_followed_log_streams_through_before_it_ends(guard: DockerGuard, daemon: _Daemon) -> None:
    api = _client(guard)
    stream = api.logs(MADE, stream=True, follow=True)
    first = b"".join(next(stream) for _ in range(6))  # docker-py yields a tty's log bytewise
    assert first == b"first\n" and not daemon.log_gate.is_set()  # the rest is held back
    daemon.log_gate.set()
    assert b"".join(stream) == b"second\n"


def test_a_large_archive_streams_through_without_being_held(
    guard: DockerGuard, daemon: _Daemon
) -> None:
    chunk = os.urandom(1 << 20)
    total = 64

    def body() -> Iterator[bytes]:
        for _ in range(total):
            yield chunk

    digest = hashlib.sha256()
    for _ in range(total):
        digest.update(chunk)
    api = _client(guard)
    tracemalloc.start()
    try:
        api.put_archive(MADE, "/", body())  # a generator: sent chunked
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert daemon.received == {"size": total << 20, "sha256": digest.hexdigest()}
    assert peak < 16 << 20, f"{peak >> 20} MiB held for a {total} MiB archive"


def test_attach_becomes_a_pipe_both_ways(guard: DockerGuard) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(guard.path)
        request = (
            f"POST /v1.41/containers/{MADE}/attach?stream=1&stdin=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(b"hello")
        got = b""
        while len(got) < 5:
            got += sock.recv(16)
        assert got == b"HELLO"


def test_a_process_that_is_not_a_granted_kernel_is_refused_everything(
    daemon: _Daemon, tmp_path: Path
) -> None:
    for who in (None, "e" * 64):  # not in a container; a container with no grant
        g = DockerGuard(daemon.server_address, identify=lambda _, w=who: w, parent=str(tmp_path))
        try:
            with pytest.raises(docker.errors.APIError, match="serves nbcontainer's") as caught:
                _client(g).version()
            assert caught.value.status_code == 403
        finally:
            g.close()


def test_a_revoked_kernel_loses_its_open_connections_and_their_threads(
    guard: DockerGuard, daemon: _Daemon
) -> None:
    api = _client(guard)
    stream = api.logs(MADE, stream=True, follow=True)
    assert next(stream) == b"f"
    assert guard.connection_count() >= 1
    guard.revoke(KERNEL_CID)
    rest = b""
    # The stream ends, cleanly or cut short (by urllib3's timing), without the next line.
    with contextlib.suppress(urllib3.exceptions.HTTPError, requests.exceptions.RequestException):
        for data in stream:
            rest += data
    assert b"second" not in rest and not daemon.log_gate.is_set()
    _until(lambda: guard.connection_count() == 0)
    with pytest.raises(docker.errors.APIError, match="has ended"):
        api.version()


def test_closing_removes_the_socket_and_its_directory_and_ends_every_thread(
    daemon: _Daemon, tmp_path: Path
) -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        g = DockerGuard(daemon.server_address, identify=lambda _: KERNEL_CID, parent=str(tmp_path))
        g.grant(Grant(kernel_id="k1", container_id=KERNEL_CID))
        api = _client(g)
        assert api.ping()
        stream = api.logs(MADE, stream=True, follow=True)
        next(stream)
        g.close()
        api.close()
        assert not Path(g.directory).exists()
    daemon.log_gate.set()

    def leftover() -> list[threading.Thread]:
        """The guards' threads this test started (another test's process guard may live)."""
        return [
            t for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("nbcontainer-guard")
        ]  # fmt: skip

    _until(lambda: not leftover())
    assert not list(tmp_path.glob(f"{DIR_PREFIX}*"))


def test_a_dead_processes_guard_directory_is_removed_and_a_live_ones_kept(
    daemon: _Daemon, tmp_path: Path
) -> None:
    live = DockerGuard(daemon.server_address, identify=lambda _: None, parent=str(tmp_path))
    dead = tmp_path / f"{DIR_PREFIX}999999999-abc"
    dead.mkdir()
    (dead / "docker.sock").touch()
    # A live pid whose socket no longer answers (the pid was reused): stale too.
    reused = tmp_path / f"{DIR_PREFIX}1-xyz"
    reused.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(reused / "docker.sock"))
    try:
        removed = remove_stale(str(tmp_path))
        assert sorted(removed) == sorted([str(dead), str(reused)])
        assert Path(live.path).exists()
    finally:
        live.close()


def test_a_request_too_large_to_check_closes_the_connection(guard: DockerGuard) -> None:
    conn = http.client.HTTPConnection("docker")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(guard.path)
    conn.sock = sock
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("POST", "/v1.41/containers/create", body=b"{" + b" " * (2 << 20) + b"}")
        conn.getresponse()
    conn.close()
    _until(lambda: guard.connection_count() == 0)
    assert _client(guard).ping()  # the guard itself goes on


def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_client_that_waits_for_100_continue_gets_it_and_its_answer(
    guard: DockerGuard, daemon: _Daemon
) -> None:
    body = json.dumps({"Image": "img"}).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(guard.path)
        sock.settimeout(10)
        head = (
            "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 100")
        assert reader.readline() == b"\r\n"
        sock.sendall(body)
        assert reader.readline().startswith(b"HTTP/1.1 201")
        reader.close()
    assert daemon.created[0]["Labels"][GUARD_KERNEL] == "k1"


def test_a_malformed_request_gets_a_400_and_the_connection_goes_on(guard: DockerGuard) -> None:
    guard.grant(Grant(kernel_id="k1", container_id=KERNEL_CID, memory=1 << 30))
    api = _client(guard)
    with pytest.raises(docker.errors.APIError) as caught:
        api._result(api._post(api._url("/build"), params={"memory": "lots"}, data=b""))
    assert caught.value.status_code == 400 and "malformed" in str(caught.value.explanation)
    with pytest.raises(docker.errors.APIError) as caught:
        api._result(api._post(api._url("/commit"), params={"container": MADE}, data=b"[1]"))
    assert caught.value.status_code == 400 and "JSON object" in str(caught.value.explanation)
    assert api.ping()

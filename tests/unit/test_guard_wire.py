"""The guard's HTTP (nbcontainer_kernel/guard/wire.py) and its serving loop, no daemon.

The kernel side is h11 held to stricter rules; these tests speak to it over a socket
pair, as a kernel would, with what Go's parser would also accept (key case, duplicates,
framing, encodings), and check what the guard understood. Then the guard itself: a
process that is not a granted kernel is refused everything, the connection caps answer
at once, idle and half-sent connections are closed by the timeouts, closing leaves
nothing. What it forwards, against the real daemon: tests/integration/test_guard_*.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.guard import DockerGuard, Grant, remove_stale
from nbcontainer_kernel.guard.server import DIR_PREFIX
from nbcontainer_kernel.guard.wire import HttpError, KernelSide, Timeouts
from tests.helpers import examples

KERNEL_CID = "a" * 64


def _read(data: bytes, timeouts: Timeouts | None = None) -> tuple[Any, bytes]:
    """What the kernel side makes of `data`: the request (or HttpError) and its body."""
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        side = KernelSide(b, timeouts or Timeouts(idle=2, head=2, body=2))
        try:
            request = side.next_request()
            body = side.read_body(1 << 20) if request is not None else b""
        except HttpError as exc:
            return exc, b""
        return request, body
    finally:
        a.close()
        b.close()


FRAMING = [
    # what a kernel sends, the status the guard answers (0: read as a request)
    (b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n", 0),
    (b"GET /_ping HTTP/1.0\r\n\r\n", 505),
    (b"GET /_ping HTTP/2.0\r\nHost: d\r\n\r\n", 505),
    (
        b"POST /x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 505),
    # The same length twice is one length (h11 and Go both read it so); two differ: refused.
    (b"POST /x HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 0),
    (b"POST /x HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}", 400),
    (b"POST /x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nExpect: 100-continue, x\r\n\r\n", 417),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nExpect: something\r\n\r\n", 417),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nHost: e\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: d\r\n folded: yes\r\n\r\n", 400),
    (b"GET http://d/x HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    (b"TRACE /x HTTP/1.1\r\nHost: d\r\n\r\n", 405),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nContent-Length: 1_0\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nX: \x00\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: d\r\nX: " + b"a" * 70000, 431),  # a head that never ends
]


@pytest.mark.parametrize(("data", "status"), FRAMING)
def test_a_request_is_read_strictly_or_refused_with_its_status(data: bytes, status: int) -> None:
    got, _ = _read(data)
    if status == 0:
        assert not isinstance(got, HttpError), got
    else:
        assert isinstance(got, HttpError), got
        assert got.status == status or (status == 400 and 400 <= got.status < 500), got


def test_a_chunked_body_is_read_as_its_chunks_and_nothing_after_it() -> None:
    data = (
        b"POST /x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;ext=1\r\n{}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
    )
    request, body = _read(data)
    assert request.method == "POST" and body == b"{}"


def test_a_head_that_does_not_arrive_in_time_is_a_408() -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(b"GET /_ping HTTP/1.1\r\nHo")
        side = KernelSide(b, Timeouts(idle=5, head=0.3, body=1))
        start = time.monotonic()
        with pytest.raises(HttpError) as caught:
            side.next_request()
        assert caught.value.status == 408 and time.monotonic() - start < 3
    finally:
        a.close()
        b.close()


def test_an_idle_connection_ends_quietly_after_the_idle_timeout() -> None:
    a, b = socket.socketpair()
    try:
        side = KernelSide(b, Timeouts(idle=0.3, head=1, body=1))
        start = time.monotonic()
        assert side.next_request() is None
        assert 0.2 < time.monotonic() - start < 3
    finally:
        a.close()
        b.close()


@settings(max_examples=examples(400), deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [b"GET /x HTTP/1.1\r\n", b"POST /y HTTP/1.1\r\n", b"Host: d\r\n", b"\r\n", b"\n",
                 b"Content-Length: 3\r\n", b"Content-Length: 0\r\n", b"content-length:  7\r\n",
                 b"Transfer-Encoding: chunked\r\n", b"transfer-encoding: CHUNKED\r\n",
                 b"Expect: 100-continue\r\n", b"Connection: close\r\n", b" x\r\n", b"\t\r\n",
                 b"3\r\nabc\r\n", b"0\r\n\r\n", b"HTTP/1.0\r\n", b"{}", b"\x00", b"\xff"]
            ),
            max_size=12,
        ).map(b"".join),
    )
)  # fmt: skip
def test_any_bytes_are_a_request_or_a_refusal_never_a_crash(data: bytes) -> None:
    got, body = _read(data)
    if isinstance(got, HttpError):
        assert 400 <= got.status < 600
    elif got is not None:
        # What was read is one request of the guard's kind: HTTP/1.1, one framing.
        assert got.method in ("GET", "POST", "PUT", "DELETE", "HEAD")
        assert not (got.header("transfer-encoding") and got.header("content-length"))


# ------------------------------------------------------------------- the guard itself
@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (pytest's, under parallel workers, can pass the
    108 bytes a socket path may have)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def guard(sock_dir: Path) -> Iterator[DockerGuard]:
    # No daemon: these requests are answered by the guard itself, never forwarded.
    g = DockerGuard(
        str(sock_dir / "no-daemon.sock"),
        identify=lambda _: KERNEL_CID,
        parent=str(sock_dir),
        timeouts=Timeouts(idle=1, head=0.5, body=0.5),
        max_connections=30,
        max_per_kernel=10,
    )
    g.grant(Grant(kernel_id="k1", container_id=KERNEL_CID))
    yield g
    g.close()


def _ask(path: str, data: bytes) -> bytes:
    """Send `data` (from a thread: the guard may answer and close before it has all of
    it) and read until the guard closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)

        def send() -> None:
            with contextlib.suppress(OSError):  # the guard answered and closed first
                s.sendall(data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except OSError:
            pass  # reset by the guard after its answer
        sender.join(5)
        return out


def test_a_refusal_is_a_403_with_its_reason_and_the_connection_goes_on(
    guard: DockerGuard,
) -> None:
    api = docker.APIClient(base_url=f"unix://{guard.path}", version="1.41", timeout=10)
    for _ in range(3):  # the same pooled connection, request after request
        with pytest.raises(docker.errors.APIError) as caught:
            api.create_container("img", host_config=api.create_host_config(privileged=True))
        assert caught.value.status_code == 403
        assert "HostConfig.Privileged" in str(caught.value.explanation)
    assert guard.connection_count() == 1


def test_a_process_that_is_not_a_granted_kernel_is_refused_everything(sock_dir: Path) -> None:
    for who in (None, "e" * 64):  # not in a container; a container with no grant
        g = DockerGuard("/nonexistent", identify=lambda _, w=who: w, parent=str(sock_dir))  # type: ignore[misc]
        try:
            api = docker.APIClient(base_url=f"unix://{g.path}", version="1.41", timeout=10)
            with pytest.raises(docker.errors.APIError, match="serves nbcontainer's") as caught:
                api.version()
            assert caught.value.status_code == 403
        finally:
            g.close()


def test_past_its_caps_a_connection_is_answered_at_once_and_closed(guard: DockerGuard) -> None:
    held = []
    try:
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX)
            s.connect(guard.path)
            held.append(s)
        _until(lambda: guard.connection_count() == 10)
        answer = _ask(guard.path, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 429") and b"per kernel" in answer
        assert guard.connection_count() == 10
    finally:
        for s in held:
            s.close()
    # Held connections that say nothing are closed by the idle timeout; the guard goes on.
    _until(lambda: guard.connection_count() == 0)
    assert _ask(guard.path, b"GET /v1.41/volumes HTTP/1.1\r\nHost: d\r\n\r\n").startswith(
        b"HTTP/1.1 403"
    )


def test_a_half_sent_request_is_closed_by_the_head_timeout(guard: DockerGuard) -> None:
    start = time.monotonic()
    answer = _ask(guard.path, b"GET /v1.41/containers/json HTTP/1.1\r\nHost:")
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4


def test_a_failing_identity_check_does_not_end_the_accept_loop(sock_dir: Path) -> None:
    calls = {"n": 0}

    def flaky(_: socket.socket) -> str | None:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("boom")  # a bug in one connection's path
        return KERNEL_CID

    g = DockerGuard("/nonexistent", identify=flaky, parent=str(sock_dir))
    g.grant(Grant(kernel_id="k1", container_id=KERNEL_CID))
    try:
        answers = [
            _ask(g.path, b"GET /v1.41/volumes HTTP/1.1\r\nHost: d\r\n\r\n") for _ in range(6)
        ]
        assert sum(a.startswith(b"HTTP/1.1 403") for a in answers) == 3
    finally:
        g.close()


def test_a_revoked_kernel_loses_its_open_connections(guard: DockerGuard) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(guard.path)
    _until(lambda: guard.connection_count() == 1)
    guard.revoke(KERNEL_CID)
    _until(lambda: guard.connection_count() == 0)
    s.settimeout(2)
    assert s.recv(10) == b""
    s.close()
    answer = _ask(guard.path, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403") and b"has ended" in answer


def test_closing_removes_the_socket_and_its_directory_and_ends_every_thread(
    sock_dir: Path,
) -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        g = DockerGuard("/nonexistent", identify=lambda _: KERNEL_CID, parent=str(sock_dir))
        g.grant(Grant(kernel_id="k1", container_id=KERNEL_CID))
        s = socket.socket(socket.AF_UNIX)
        s.connect(g.path)  # a connection open when the guard closes
        _until(lambda g=g: g.connection_count() == 1)
        g.close()
        s.close()
        assert not Path(g.directory).exists()

    def leftover() -> list[threading.Thread]:
        """The guards' threads this test started (another test's process guard may live)."""
        return [
            t for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("nbcontainer-guard")
        ]  # fmt: skip

    _until(lambda: not leftover())
    assert not list(sock_dir.glob(f"{DIR_PREFIX}*"))


def test_a_dead_processes_guard_directory_is_removed_and_a_live_ones_kept(
    sock_dir: Path,
) -> None:
    live = DockerGuard("/nonexistent", identify=lambda _: None, parent=str(sock_dir))
    dead = sock_dir / f"{DIR_PREFIX}999999999-abc"
    dead.mkdir()
    (dead / "docker.sock").touch()
    # A live pid whose socket no longer answers (the pid was reused): stale too.
    reused = sock_dir / f"{DIR_PREFIX}1-xyz"
    reused.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(reused / "docker.sock"))
    try:
        removed = remove_stale(str(sock_dir))
        assert sorted(removed) == sorted([str(dead), str(reused)])
        assert Path(live.path).exists()
    finally:
        live.close()


def test_a_body_larger_than_the_guard_reads_is_a_413_and_the_connection_ends(
    guard: DockerGuard,
) -> None:
    body = b'{"Image":"' + b"x" * (2 << 20) + b'"}'
    head = (
        "POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = _ask(guard.path, head + body)
    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"]


def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)

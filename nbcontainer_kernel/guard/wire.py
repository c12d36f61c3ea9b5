"""HTTP/1.1 on both sides of the guard, with h11 (a strict, well-kept parser; no I/O of
its own), and the guard's own framing on everything it sends.

:class:`KernelSide` is the guard as the server of one kernel connection: a request is
read by h11 and then held to more than h11 asks: HTTP/1.1 only, a body framed by
exactly one of Content-Length or chunked, ``Expect`` only exactly ``100-continue``, no
second copy of a header that decides framing or routing. :class:`DaemonSide` is the
guard as a client of dockerd: it writes each request afresh (method, target, the few
headers the guard chose, its own framing), so nothing of the kernel's bytes reaches
Go's parser.

Timeouts: a connection idle between requests is closed after ``idle``; a request head
must arrive within ``head`` of its first byte, and each piece of a body within ``body``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11

__all__ = ["DaemonSide", "HttpError", "KernelSide", "Timeouts"]

MAX_HEAD = 64 * 1024
READ_SIZE = 256 * 1024
# Headers that decide how a request is framed or routed: one copy at most.
_SINGLE = (
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"expect",
    b"connection",
    b"upgrade",
    b"content-type",
)
_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"}
# Hop-by-hop headers of the daemon's answers: the guard frames its own.
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade"}


REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_FOLDED = re.compile(rb"\n[ \t]")


def _head_end(data: bytearray) -> int:
    """Where a request head ends in `data` (its blank line), or the end of `data`."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(data)


class HttpError(Exception):
    """A request the guard cannot take as HTTP: answered with `status`, then closed."""

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(reason)


@dataclass(frozen=True)
class Timeouts:
    idle: float = 60.0  # between requests
    head: float = 10.0  # from a request's first byte to the end of its head
    body: float = 60.0  # between pieces of a request body
    daemon: float = 120.0  # an answer's head from dockerd, for a request that is not a stream


@dataclass(frozen=True)
class Request:
    """A request as the guard read it: header names lower-cased."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")

    @property
    def has_body(self) -> bool:
        return bool(self.header("transfer-encoding")) or self.header("content-length") not in (
            "",
            "0",
        )

    @property
    def upgrade(self) -> bool:
        return bool(self.header("upgrade"))


class KernelSide:
    """The guard as the HTTP/1.1 server of one kernel connection."""

    def __init__(self, sock: socket.socket, timeouts: Timeouts) -> None:
        self.sock = sock
        self.timeouts = timeouts
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.body_done = True  # the current request's body was read to its end
        self._head: bytearray | None = None  # the bytes of a request being read, up to its head

    # ------------------------------------------------------------------- reading
    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.01))
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            raise HttpError(408, "the request did not arrive in time") from None
        if self._head is not None and len(self._head) <= MAX_HEAD:
            self._head += data  # kept until the head is read, for the folding check
        self.conn.receive_data(data)

    def _event(self, timeout: float) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(exc.error_status_hint, f"malformed HTTP: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            self._receive(timeout)

    def next_request(self) -> Request | None:
        """The next request, checked; None when the kernel closed the connection (or it
        stayed idle past the idle timeout)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        elif self.conn.our_state is not h11.IDLE:
            return None
        self._head = bytearray(self.conn.trailing_data[0])
        if not self._head:
            try:
                self._receive(self.timeouts.idle)
            except HttpError:
                return None  # idle: closed quietly
            except OSError:
                return None
        deadline = time.monotonic() + self.timeouts.head
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(exc.error_status_hint, f"malformed HTTP: {exc}") from None
            if event is h11.NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HttpError(408, "the request head did not arrive in time")
                self._receive(left)
                continue
            if _FOLDED.search(bytes(self._head[: _head_end(self._head)])):
                # h11 joins a folded line to the header before it; another reader might
                # not. A guard reads one way only: refused.
                raise HttpError(400, "a header line is folded (obs-fold)")
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):
                raise HttpError(400, f"expected a request, got {type(event).__name__}")
            self._head = None
            request = _checked(event)
            self.body_done = not request.has_body
            return request

    def body(self) -> Iterator[bytes]:
        """The request's body as it arrives (100 Continue said first when it waits)."""
        if self.conn.they_are_waiting_for_100_continue:
            self.sock.settimeout(self.timeouts.body)
            self.sock.sendall(
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        while True:
            event = self._event(self.timeouts.body)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self.body_done = True
                return
            else:
                raise HttpError(400, f"unexpected {type(event).__name__} in a request body")

    def read_body(self, limit: int) -> bytes:
        out = bytearray()
        for data in self.body():
            out += data
            if len(out) > limit:
                raise HttpError(413, f"the body is larger than {limit} bytes")
        return bytes(out)

    def finish_request(self) -> None:
        """Read what is left of a request that takes no body (its EndOfMessage). An empty
        JSON value is no body (docker-py sends ``{}`` with a push); it is not forwarded."""
        data = self.read_body(64)
        if data.strip() not in (b"", b"{}", b"null"):
            raise HttpError(400, "this request takes no body")

    # ------------------------------------------------------------------- writing
    def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.settimeout(self.timeouts.body)
            self.sock.sendall(data)

    def respond(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | Iterator[bytes] | None,
        reason: bytes = b"",
    ) -> None:
        """One answer. Bytes get a Content-Length; an iterator is streamed chunked."""
        if isinstance(body, bytes | bytearray):
            headers = [*headers, ("content-length", str(len(body)))]
        elif body is None:
            headers = [*headers, ("content-length", "0")]
        if not self.body_done:
            headers.append(("connection", "close"))  # its body was not read: no next request
        reason = reason or REASONS.get(status, "").encode()
        self._send(h11.Response(status_code=status, headers=headers, reason=reason))
        if isinstance(body, bytes | bytearray):
            if body:
                self._send(h11.Data(data=body))
        elif body is not None:
            for data in body:
                if data:
                    self._send(h11.Data(data=data))
        self._send(h11.EndOfMessage())

    def respond_json(self, status: int, message: str) -> None:
        data = json.dumps({"message": message}).encode()
        self.respond(status, [("content-type", "application/json")], data)

    def upgrade(self, headers: list[tuple[str, str]]) -> bytes:
        """Answer 101 and leave HTTP: returns what the kernel sent after its request."""
        self._send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"UPGRADED"))
        return bytes(self.conn.trailing_data[0])

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


def _checked(event: h11.Request) -> Request:
    """An h11 request held to the guard's rules (HttpError otherwise)."""
    if event.http_version != b"1.1":
        raise HttpError(505, "the guard speaks HTTP/1.1 only")
    if event.method not in _METHODS:
        raise HttpError(405, f"method {event.method[:16]!r} is not served")
    target = event.target.decode("ascii")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    names = [name for name, _ in event.headers]
    for name in _SINGLE:
        if names.count(name) > 1:
            raise HttpError(400, f"the header {name.decode()} is given twice")
    headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers)
    request = Request(event.method.decode(), target, headers)
    if request.header("transfer-encoding") and request.header("content-length"):
        raise HttpError(400, "a body framed by both Transfer-Encoding and Content-Length")
    expect = request.header("expect")
    if expect and expect.lower() != "100-continue":
        raise HttpError(417, f"Expect is {expect[:40]!r}; only 100-continue is understood")
    if request.upgrade:
        if request.header("upgrade").lower() != "tcp" or "upgrade" not in [
            t.strip() for t in request.header("connection").lower().split(",")
        ]:
            raise HttpError(400, "an upgrade is to tcp only, with Connection: Upgrade")
        if request.has_body and request.method != "POST":
            raise HttpError(400, "an upgrade request carries no body")
    return request


class DaemonSide:
    """The guard as an HTTP/1.1 client of dockerd, on one connection (kept while it may)."""

    def __init__(self, path: str, timeouts: Timeouts) -> None:
        self.path = path
        self.timeouts = timeouts
        self.sock: socket.socket | None = None
        self.conn: h11.Connection | None = None

    def _connect(self) -> None:
        if (
            self.conn is not None
            and self.conn.our_state is h11.DONE
            and self.conn.their_state is h11.DONE
        ):
            self.conn.start_next_cycle()
        if self.conn is None or self.conn.our_state is not h11.IDLE:
            self.close()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeouts.daemon)
            sock.connect(self.path)
            self.sock = sock
            self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def _send(self, event: Any) -> None:
        assert self.conn is not None and self.sock is not None
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def start(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> None:
        """Send a request head (and a whole body, when given). A streamed body follows with
        :meth:`send_data` and :meth:`end`."""
        self._connect()
        headers = [("host", "docker"), *headers]
        if body is not None:
            headers.append(("content-length", str(len(body))))
        elif method in ("POST", "PUT") and not any(k == "transfer-encoding" for k, _ in headers):
            headers.append(("content-length", "0"))
        self._send(h11.Request(method=method, target=target, headers=headers))
        if body is not None:
            if body:
                self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
        elif not any(k == "transfer-encoding" for k, _ in headers):
            self._send(h11.EndOfMessage())

    def send_data(self, data: bytes) -> None:
        if data:
            self._send(h11.Data(data=data))

    def end(self) -> None:
        self._send(h11.EndOfMessage())

    def _event(self, timeout: float | None) -> Any:
        assert self.conn is not None and self.sock is not None
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.sock.settimeout(timeout)
            self.conn.receive_data(self.sock.recv(READ_SIZE))

    def response(self, *, stream: bool = False) -> h11.Response | h11.InformationalResponse:
        """The answer's head (a 101 is returned as it is; other 1xx are skipped).
        `stream`: the answer may take long to start (a wait, a build): no timeout."""
        while True:
            try:
                event = self._event(None if stream else self.timeouts.daemon)
            except h11.RemoteProtocolError as exc:
                raise OSError(f"the daemon's answer is malformed: {exc}") from None
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return event
                continue
            raise OSError(f"the daemon closed the connection ({type(event).__name__})")

    def body(self) -> Iterator[bytes]:
        """The answer's body as it arrives."""
        while True:
            try:
                event = self._event(None)
            except h11.RemoteProtocolError as exc:
                raise OSError(f"the daemon's answer is malformed: {exc}") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    def read_body(self, limit: int) -> bytes:
        out = bytearray()
        for data in self.body():
            out += data
            if len(out) > limit:
                raise OSError(f"the daemon's answer is larger than {limit} bytes")
        return bytes(out)

    def trailing(self) -> bytes:
        assert self.conn is not None
        return bytes(self.conn.trailing_data[0])

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock, self.conn = None, None

    def abort(self) -> None:
        """End the current request unfinished: the daemon fails it (a refused stream)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.close()


def raw_answer(status: int, message: str) -> bytes:
    """A whole answer written by hand, for a connection whose HTTP state is past h11's
    help (a request it could not read, a connection turned away): JSON, then close."""
    body = json.dumps({"message": message})
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: application/json"
        f"\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n{body}"
    ).encode()


def answer_headers(event: h11.Response | h11.InformationalResponse) -> list[tuple[str, str]]:
    """The daemon's headers the guard passes back: all but hop-by-hop and framing."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in event.headers
        if name not in _HOP
    ]

"""Just enough HTTP/1.1 for a proxy of the Docker API: heads, bodies by their framing.

Bodies are copied as they arrive (a build context, a log stream, an archive), never held
whole, except the small JSON ones the guard reads or rewrites (:func:`read_body`, with a
limit).
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["Head", "ProtocolError", "copy_body", "drain", "iter_body", "read_body", "read_head"]

MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024


class ProtocolError(Exception):
    """The peer did not speak HTTP/1.1 as expected: the connection is closed."""


@dataclass
class Head:
    """A request or status line and its headers (names lower-cased, order kept)."""

    line: str
    headers: list[tuple[str, str]]

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), default)

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(k, v) for k, v in self.headers if k not in drop]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.get("transfer-encoding").lower()

    @property
    def length(self) -> int | None:
        value = self.get("content-length")
        return int(value) if value.strip().isdigit() else None

    @property
    def status(self) -> int:
        return int(self.line.split(" ", 2)[1])

    def encode(self, headers: list[tuple[str, str]] | None = None) -> bytes:
        lines = [self.line] + [
            f"{k}: {v}" for k, v in (self.headers if headers is None else headers)
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(rfile: BinaryIO) -> Head | None:
    """The next head on `rfile`; None at a clean end of the stream."""
    lines: list[str] = []
    size = 0
    while True:
        raw = rfile.readline(MAX_HEAD)
        if not raw:
            if lines:
                raise ProtocolError("the stream ended inside a head")
            return None
        size += len(raw)
        if size > MAX_HEAD:
            raise ProtocolError("head too large")
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            if not lines:
                continue  # a stray CRLF between messages
            break
        lines.append(line)
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        headers.append((name.strip().lower(), value.strip()))
    return Head(lines[0], headers)


def iter_body(rfile: BinaryIO, head: Head, *, until_close: bool = False) -> Iterator[bytes]:
    """The body's bytes as they arrive, framing removed."""
    if head.chunked:
        while True:
            size_line = rfile.readline(1024)
            if not size_line:
                raise ProtocolError("the stream ended inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                for trailer in iter(lambda: rfile.readline(MAX_HEAD), b""):
                    if trailer in (b"\r\n", b"\n"):  # the end of the trailers
                        break
                return
            yield from _exactly(rfile, size)
            rfile.readline(8)
        return
    length = head.length
    if length is None:
        if not until_close:
            return
        while True:
            data = rfile.read1(CHUNK)  # type: ignore[attr-defined]
            if not data:
                return
            yield data
    yield from _exactly(rfile, length)


def _exactly(rfile: BinaryIO, size: int) -> Iterator[bytes]:
    """`size` bytes, as they arrive."""
    while size:
        data = rfile.read1(min(size, CHUNK))  # type: ignore[attr-defined]
        if not data:
            raise ProtocolError("the stream ended inside a body")
        size -= len(data)
        yield data


def drain(rfile: BinaryIO, head: Head) -> None:
    """Read a body and drop it (one the guard refused), so the connection stays usable."""
    collections.deque(iter_body(rfile, head), maxlen=0)


def read_body(rfile: BinaryIO, head: Head, limit: int) -> bytes:
    """A whole (small) body; ProtocolError when it is larger than `limit`."""
    out = bytearray()
    for data in iter_body(rfile, head):
        out += data
        if len(out) > limit:
            raise ProtocolError(f"body larger than {limit} bytes")
    return bytes(out)


def copy_body(
    rfile: BinaryIO, head: Head, dest: socket.socket, *, until_close: bool = False
) -> None:
    """Send the body on to `dest` in the framing its head announced, as it arrives."""
    if head.chunked:
        for data in iter_body(rfile, head):
            dest.sendall(b"%x\r\n%b\r\n" % (len(data), data))
        dest.sendall(b"0\r\n\r\n")
        return
    for data in iter_body(rfile, head, until_close=until_close):
        dest.sendall(data)

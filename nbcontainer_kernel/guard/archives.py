"""Tar streams a guarded kernel sends to the daemon, read and written afresh as they
stream: the daemon extracts what the guard read, never the kernel's own bytes.

* ``PUT /containers/{id}/archive``: every member is owned by the kernel's uid:gid,
  set-user-ID and set-group-ID bits are dropped, and devices, FIFOs, sockets and links
  are refused (a setuid-root file planted in a writable host mount is root on the host
  the moment anyone runs it).
* A build context: devices and FIFOs refused, set-id bits dropped, and the Dockerfile
  kept aside (at most 1 MiB) for :mod:`.dockerfile`'s check before the last block goes.

The kernel may send its tar compressed (gzip, bzip2, xz: the daemon accepts them); the
guard decompresses it and sends the daemon a plain tar of what it read.
"""

from __future__ import annotations

import io
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ArchiveRefused", "BufferedSink", "IterReader", "rewrite_archive", "rewrite_context"]

_SET_ID = stat.S_ISUID | stat.S_ISGID


class ArchiveRefused(ValueError):
    """A tar member the guard does not pass on, and why."""


class IterReader:
    """A file-like object over an iterator of byte chunks (tarfile's stream mode reads it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.total += len(out)
        return out


class BufferedSink:
    """What tarfile writes (in 10 KiB blocks), passed on in larger pieces."""

    def __init__(self, send: Callable[[bytes], None], size: int = 256 * 1024) -> None:
        self._send = send
        self._size = size
        self._parts: list[bytes] = []
        self._held = 0

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        self._held += len(data)
        if self._held >= self._size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._parts:
            self._send(b"".join(self._parts))
            self._parts, self._held = [], 0


def _open_stream(source: IterReader) -> tarfile.TarFile:
    try:
        # Returned open: the caller reads the stream through it.
        opened: tarfile.TarFile = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
            fileobj=source, mode="r|*"
        )
        return opened
    except tarfile.TarError as exc:
        raise ArchiveRefused(f"the archive is not a tar the guard can read ({exc})") from None


def _members(tin: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tin
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"the archive is not a tar the guard can read ({exc})") from None


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.issparse():
        return "a sparse file"
    return "" if member.isreg() or member.isdir() else f"a member of type {member.type!r}"


def _copy(tin: tarfile.TarFile, tout: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    data = tin.extractfile(member) if member.isreg() else None
    try:
        tout.addfile(member, data)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"{member.name[:120]}: the archive ended inside it ({exc})") from None


def rewrite_archive(
    chunks: Iterator[bytes], send: Callable[[bytes], None], uid: int, gid: int
) -> int:
    """Pass a tar for ``PUT …/archive`` on through `send`, rewritten; returns the members
    written. ArchiveRefused at the first member it will not pass (what came before it
    was sent: the caller ends the daemon's request unfinished, so nothing is extracted
    from a stream that was refused — the daemon fails a truncated body)."""
    sink = BufferedSink(send)
    tin = _open_stream(IterReader(chunks))
    # Closed at the end, not on a refusal: no end-of-archive blocks follow a refused member.
    tout = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # noqa: SIM115, E501
    count = 0
    for member in _members(tin):
        kind = _kind(member)
        if kind:
            raise ArchiveRefused(
                f"{member.name[:120]} is {kind}: a guarded kernel puts regular files and "
                "directories only"
            )
        member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
        member.mode &= ~_SET_ID & 0o7777
        member.pax_headers = {}
        _copy(tin, tout, member)
        count += 1
    tout.close()
    sink.flush()
    return count


def rewrite_context(
    chunks: Iterator[bytes],
    send: Callable[[bytes], None],
    dockerfile: str,
    check: Callable[[str], None],
    limit: int,
) -> None:
    """Pass a build context on through `send`, rewritten, and call `check` with the
    Dockerfile's text before the end of the archive is sent (so a refused build never
    starts: the daemon reads the whole context first). ArchiveRefused when a member is a
    device or FIFO, when the Dockerfile is missing, not a regular file, given twice, or
    larger than `limit`."""
    wanted = {posixpath.normpath(dockerfile.lstrip("/"))}
    if dockerfile in ("", "Dockerfile"):
        wanted = {"Dockerfile", "dockerfile"}  # the daemon falls back to the lower-case name
    sink = BufferedSink(send)
    tin = _open_stream(IterReader(chunks))
    # Closed at the end, not on a refusal: no end-of-archive blocks follow a refused member.
    tout = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # noqa: SIM115, E501
    found: dict[str, str] = {}
    links: set[str] = set()
    for member in _members(tin):
        kind = _kind(member)
        if kind and not (member.issym() or member.islnk()):
            raise ArchiveRefused(f"{member.name[:120]} in the build context is {kind}")
        name = posixpath.normpath(member.name.lstrip("/"))
        parents = name.split("/")[:-1]
        if any("/".join(parents[: i + 1]) in links for i in range(len(parents))):
            # The daemon would follow the link when it extracts (sub -> . makes
            # sub/Dockerfile the Dockerfile): a member may not pass through one.
            raise ArchiveRefused(f"{name[:120]} in the build context passes through a link")
        if member.issym():
            links.add(name)
        if name in wanted:
            if name in found:
                raise ArchiveRefused(f"the build context has {name} twice")
            if not member.isreg():
                raise ArchiveRefused(f"{name} in the build context is {kind or 'a directory'}")
            if member.size > limit:
                raise ArchiveRefused(f"{name} is larger than {limit} bytes")
            data = tin.extractfile(member)
            raw = data.read() if data is not None else b""
            found[name] = raw.decode("utf-8", errors="replace")
            member.mode &= ~_SET_ID & 0o7777
            member.pax_headers = {}
            tout.addfile(member, io.BytesIO(raw))
            continue
        member.mode &= ~_SET_ID & 0o7777
        member.pax_headers = {}
        _copy(tin, tout, member)
    chosen = next((found[n] for n in ("Dockerfile", "dockerfile", *wanted) if n in found), None)
    if chosen is None:
        raise ArchiveRefused(f"the build context has no {sorted(wanted)[0]}")
    check(chosen)
    tout.close()
    sink.flush()

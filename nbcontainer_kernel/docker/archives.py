"""Tar archives as Docker's API takes and gives them: build contexts, files put into
containers, and outputs read back out of them (with caps, and members checked before
anything lands). Standard library only: no daemon is needed to make or read one."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from typing import IO, Any

from .. import config
from ..runtime.errors import ImageBuildError, UnsafeArchive

__all__ = ["make_tar", "build_context", "context_member", "extract_tar"]


def make_tar(
    files: dict[str, bytes],
    *,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o644,
    dirs: Iterable[str] = (),
) -> bytes:
    """A tar archive holding `files` (name -> content) and `dirs` (0700), owned by uid:gid."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name.rstrip("/") + "/")
            info.type = tarfile.DIRTYPE
            info.mode = 0o700
            info.uid, info.gid = uid, gid
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.uid, info.gid = uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_context(
    dockerfile: str, trees: Mapping[str, os.PathLike[str] | str], max_bytes: int | None = None
) -> IO[bytes]:
    """A tar build context: the Dockerfile and directory trees (name in the context -> path).

    Written to a temporary file (never held in memory; a snapshot may be
    gigabytes), and refused past `max_bytes` (default max_context_bytes()).
    Members are world-readable, owned by root and dated 0, so that content
    alone decides Docker's cache; bytecode caches are left out, and so is
    anything but regular files and directories (links outside a tree, FIFOs).
    """
    cap = config.max_context_bytes() if max_bytes is None else max_bytes
    # Returned open (the caller streams it to the daemon); closed here on an error.
    ctx = tempfile.TemporaryFile(prefix="nbcontainer-context-")  # noqa: SIM115
    total = 0
    try:
        with tarfile.open(fileobj=ctx, mode="w") as tar:
            data = dockerfile.encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

            def readable(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
                nonlocal total
                member = context_member(ti)
                if member is None:
                    return None
                total += member.size
                if total > cap:
                    raise ImageBuildError(
                        "(build context)",
                        f"the build context is over its cap of "
                        f"{cap:,} bytes (NBCONTAINER_MAX_CONTEXT_BYTES); ship less",
                    )
                return member

            for arc, path in trees.items():
                tar.add(path, arcname=arc, filter=readable)
        ctx.seek(0)
        return ctx
    except BaseException:
        ctx.close()
        raise


def context_member(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """A tree's member as build contexts carry it: regular files and directories only, no
    bytecode caches, root's, world-readable, dated 0 (so content alone decides Docker's
    cache). A snapshot copied into a container takes the same, so its files there are
    the files its run image's COPY would give."""
    if "__pycache__" in ti.name or ti.name.endswith(".pyc"):
        return None
    if not (ti.isfile() or ti.isdir()):
        return None
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o755 if ti.isdir() else 0o644
    return ti


class _ChunkReader(io.RawIOBase):
    """A file-like reader over an iterator of byte chunks (a streamed archive)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "a link"
    if member.isfifo():
        return "a FIFO"
    return "a device" if member.isdev() else "not a file"


def extract_tar(
    data: bytes | Iterable[bytes],
    dest: os.PathLike[str] | str,
    max_bytes: int | None = None,
    *,
    within: str | None = None,
    only: Iterable[str] | None = None,
    skipped: list[str] | None = None,
) -> int:
    """Unpack an archive (bytes, or a stream of chunks from the Docker API) into dest.

    Streams member by member. Only regular files and directories are unpacked,
    inside dest; links, FIFOs, devices, absolute paths and ``..`` are refused with
    UnsafeArchive, on every Python, and so is more than `max_bytes` in all
    (default max_result_bytes()). With `within` (a top directory's name), only what is
    under it is unpacked, without it; with `only`, only the top entries named (after
    `within` is taken off). With `skipped` (a list), a link, FIFO or device is left out and
    its name added there instead of refusing the whole archive (a remote kernel's folder
    may hold a link; its files still come back). Returns the bytes written.
    """
    keep = set(only) if only is not None else None
    from pathlib import Path

    cap = config.max_result_bytes() if max_bytes is None else max_bytes
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    chunks = [data] if isinstance(data, (bytes, bytearray)) else data
    reader = io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 20)
    total = 0
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:  # plain or gzipped
            for member in tar:
                name = member.name
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if name.startswith("/") or ".." in parts or "\x00" in name:
                    raise UnsafeArchive(name, "its path leaves the destination")
                if not (member.isfile() or member.isdir()):
                    if skipped is not None:
                        skipped.append(name)
                        continue
                    raise UnsafeArchive(
                        name,
                        f"it is {_kind(member)}; only regular files and directories are unpacked",
                    )
                if within is not None:
                    if parts[:1] != [within]:
                        continue
                    parts = parts[1:]
                if keep is not None and (not parts or parts[0] not in keep):
                    continue
                target = root.joinpath(*parts) if parts else root
                if target != root and root not in target.resolve().parents:
                    raise UnsafeArchive(name, "its path leaves the destination")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > cap:
                    raise UnsafeArchive(
                        name,
                        f"the archive is over its cap of {cap:,} bytes "
                        "(NBCONTAINER_MAX_RESULT_BYTES)",
                    )
                src = tar.extractfile(member)
                assert src is not None
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.chmod(target, 0o600 | (0o100 if member.mode & 0o100 else 0))
                except OSError as exc:  # a file where a directory is, and the like
                    raise UnsafeArchive(name, f"it cannot be written ({exc.strerror})") from exc
    except tarfile.TarError as exc:
        raise UnsafeArchive("(archive)", f"not a readable tar archive: {exc}") from exc
    return total

"""A remote kernel's working directory: seeded from the notebook's, pulled back on request.

The kernel's working directory on a remote host is a Docker volume. At start it is filled
from the notebook's directory through the Docker API (``put_archive``, streamed): what
``.gitignore`` files (at every level) and a top ``.dockerignore`` leave out stays behind,
and so do version-control folders, checkpoints and this package's own state; links are not
followed (a link could lead out of the tree); the whole is capped. What the kernel writes
comes back with :func:`pull` (a path, on request) or :func:`sync_back` (every file that
changed, at shutdown). What comes back is data written by the container: unpacked by
:func:`~.archives.extract_tar`, which refuses links, devices, absolute paths and ``..``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.errors import EngineError, InvalidOption, WorkdirTooLarge
from .archives import extract_tar
from .engine import Engine

if TYPE_CHECKING:
    import pathspec

__all__ = [
    "ALWAYS_LEFT_OUT",
    "Pulled",
    "Seed",
    "collect",
    "pull",
    "remote_path",
    "seed",
    "sync_back",
]

#: Never seeded, never synced back: version control, checkpoints, this package's state (the
#: remote kernel keeps its run ledger there).
ALWAYS_LEFT_OUT = (".git", ".hg", ".svn", ".ipynb_checkpoints", ".nbcontainer")
#: Where a remote kernel's ledger lives, relative to its working directory.
LEDGER = ".nbcontainer/runs.db"
Progress = Callable[[int, int], None]  # (bytes sent, bytes to send)


@dataclass
class Seed:
    """What was seeded: each file's digest, to tell later what the kernel changed."""

    root: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    bytes: int = 0


def _spec(lines: list[str]) -> pathspec.GitIgnoreSpec:
    # Imported here: a remote kernel imports this module (for remote_path) without it.
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect(root: Path, max_bytes: int) -> list[tuple[str, int]]:
    """The files to seed, as (path relative to root, size), walked in a stable order.

    Raises WorkdirTooLarge past `max_bytes`, naming the largest files (to ignore them).
    """
    root = root.resolve()
    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    docker_ignore = root / ".dockerignore"
    if docker_ignore.is_file():
        specs.append(("", _spec(docker_ignore.read_text(errors="replace").splitlines())))
    out: list[tuple[str, int]] = []
    total = 0
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(here, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        gitignore = Path(here) / ".gitignore"
        if gitignore.is_file():
            specs.append((rel_dir, _spec(gitignore.read_text(errors="replace").splitlines())))

        def ignored(rel: str, is_dir: bool) -> bool:
            name = rel + "/" if is_dir else rel
            for base, spec in specs:
                if base and not rel.startswith(base + "/"):
                    continue
                if spec.match_file(name[len(base) + 1 :] if base else name):
                    return True
            return False

        dirs[:] = sorted(
            d
            for d in dirs
            if d not in ALWAYS_LEFT_OUT
            and not os.path.islink(os.path.join(here, d))
            and not ignored(posixpath.join(rel_dir, d) if rel_dir else d, True)
        )
        for name in sorted(files):
            path = os.path.join(here, name)
            rel = posixpath.join(rel_dir, name) if rel_dir else name
            if os.path.islink(path) or not os.path.isfile(path) or ignored(rel, False):
                continue
            size = os.path.getsize(path)
            total += size
            out.append((rel, size))
    if total > max_bytes:
        largest = sorted(out, key=lambda f: -f[1])[:5]
        raise WorkdirTooLarge(total, max_bytes, largest)
    return out


def remote_path(workdir: str, rel: str) -> str:
    """`rel` under the kernel's working directory; refuses what leaves it."""
    if not rel or "\x00" in rel:
        raise InvalidOption("path", rel, "a path in the kernel's working directory is needed")
    norm = posixpath.normpath(posixpath.join(workdir, rel))
    if norm != workdir and not norm.startswith(workdir.rstrip("/") + "/"):
        raise InvalidOption("path", rel, f"it leaves the kernel's working directory {workdir}")
    return norm


def seed(
    engine: Engine,
    container_id: str,
    workdir: str,
    root: Path,
    files: list[tuple[str, int]],
    *,
    uid: int,
    gid: int,
    on_progress: Progress | None = None,
) -> Seed:
    """Stream `files` (from :func:`collect`) into `workdir` of a container (its folder
    made, and every folder under it, owned by uid:gid: the kernel's user may write there).
    The container may be running: the archive lands in its working directory's volume."""
    parent, top = posixpath.split(workdir.rstrip("/"))
    done = Seed(str(root))
    total = sum(s for _, s in files)
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                folders = {top} | {
                    posixpath.join(top, *rel.split("/")[:i])
                    for rel, _ in files
                    for i in range(1, rel.count("/") + 1)
                }
                for folder in sorted(folders):
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
                    tar.addfile(info)
                for rel, _size in files:
                    path = root / rel
                    try:
                        st = path.stat()
                        src = open(path, "rb")  # noqa: SIM115 (closed below, after hashing)
                    except OSError:
                        continue  # gone since it was listed
                    with src:
                        info = tarfile.TarInfo(posixpath.join(top, rel))
                        info.size, info.mtime = st.st_size, int(st.st_mtime)
                        info.mode = 0o755 if st.st_mode & 0o100 else 0o644
                        info.uid, info.gid = uid, gid
                        digest = hashlib.sha256()
                        tar.addfile(info, _Hashing(src, digest))
                    done.files[rel] = digest.hexdigest()
                    done.bytes += st.st_size
                    if on_progress:
                        on_progress(done.bytes, total)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=write, name="nbc-seed", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        engine.put_archive(container_id, parent or "/", pipe)
    writer.join()
    if failure:
        raise EngineError("seed the kernel's working directory", str(failure[0]))
    return done


class _Hashing:
    """A reader that hashes what is read through it (tarfile reads it once)."""

    def __init__(self, src: object, digest: hashlib._Hash) -> None:
        self._src, self._digest = src, digest

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._src.read(n)  # type: ignore[attr-defined]
        self._digest.update(data)
        return data


@dataclass
class Pulled:
    """What a pull wrote: bytes, and the links (or other non-files) it left there."""

    bytes: int
    skipped: list[str]


def pull(
    engine: Engine, container_id: str, workdir: str, rel: str, dest_root: Path, max_bytes: int
) -> Pulled:
    """Copy `rel` (a file or a folder under the kernel's working directory) to the same
    place under `dest_root`. Links in it are left out (and named), never followed."""
    source = remote_path(workdir, rel)
    stream = engine.get_archive(container_id, source)
    if stream is None:
        raise InvalidOption("path", rel, f"there is no {source} in the kernel's container")
    inner = posixpath.relpath(source, workdir)
    parent = dest_root / posixpath.dirname(inner) if inner != "." else dest_root.parent
    skipped: list[str] = []
    written = extract_tar(stream, parent, max_bytes, skipped=skipped)
    return Pulled(written, skipped)


def sync_back(
    engine: Engine, container_id: str, workdir: str, seeded: Seed, max_bytes: int
) -> tuple[list[str], list[str]]:
    """Bring back every file the kernel made or changed; returns (written, kept apart).

    A file changed here too since it was seeded is not overwritten: the kernel's version
    is written beside it as ``NAME.remote``. Links the kernel made are not brought back;
    nothing is written through a link here (such a file is kept apart, not written).
    """
    root = Path(seeded.root).resolve()
    stream = engine.get_archive(container_id, workdir)
    if stream is None:
        return [], []
    written: list[str] = []
    apart: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nbc-sync-") as tmp:
        extract_tar(
            stream, tmp, max_bytes, within=posixpath.basename(workdir.rstrip("/")), skipped=[]
        )
        for rel in _files(Path(tmp)):
            if rel.split("/", 1)[0] in ALWAYS_LEFT_OUT:
                continue
            got = Path(tmp) / rel
            new = _sha256(got)
            before = seeded.files.get(rel)
            if new == before:
                continue
            target = root / rel
            if not _writable_in(root, target):
                apart.append(rel)
                continue
            local_changed = target.exists() and _sha256(target) != before
            if local_changed:
                target = target.with_name(target.name + ".remote")
                apart.append(rel)
                if not _writable_in(root, target):
                    continue
            else:
                written.append(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), str(target))
    return written, apart


def _writable_in(root: Path, target: Path) -> bool:
    """`target` is a plain file (or nothing yet) whose every folder is a real folder under
    `root`: writing it cannot go through a link to somewhere else."""
    if target.is_symlink() or (target.exists() and not target.is_file()):
        return False
    return root in target.parent.resolve().parents or target.parent.resolve() == root


def _files(root: Path) -> Iterator[str]:
    for here, _dirs, files in os.walk(root):
        for name in files:
            yield os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""What a kernel on a remote Docker host has besides its container (DockerProvisioner's).

* the host's Docker API (a :class:`~..docker.hosts.HostConnection`, shared by the process);
* its working directory: a volume there, seeded from the notebook's directory;
* its channels: an :class:`~..docker.hosts.SshTunnel` of its own, from the same local ports
  across restarts to the ports its container published on the host's loopback;
* a watcher of its container's output, which serves ``%nbcontainer_pull``: the magic
  writes a request line to the kernel process's own stdout (the container's log, not the
  cell's output) and waits for the answer file this side puts in its working directory;
* a record in Jupyter's runtime directory, which ``nbcontainer pull`` reads and which
  ``nbcontainer gc`` uses to end the ssh processes of a server killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from ..docker import labels
from ..docker.engine import Engine
from ..docker.hosts import HostConnection, connection_for
from ..docker.workdir import Pulled, pull, remote_path
from ..runtime.errors import NbcontainerError

__all__ = [
    "PULL_MARK",
    "PULLED_DIR",
    "WORKDIR_ENV",
    "RemoteKernelRecord",
    "PullWatcher",
    "find_record",
    "forget",
    "records",
    "request_pull",
    "save",
    "sweep_records",
]

log = logging.getLogger(__name__)

#: What starts a pull request line on the kernel process's stdout; then JSON.
PULL_MARK = "\x1enbcontainer-pull "
#: Where this side answers a pull request, relative to the working directory.
PULLED_DIR = ".nbcontainer/pulled"
#: Set in a remote kernel: its working directory (the volume's mount point).
WORKDIR_ENV = "NBCONTAINER_REMOTE_WORKDIR"
#: Cap on one pull (the kernel's files are data: extracted safely, and bounded).
PULL_MAX_BYTES = 16 * 1024**3


@dataclass
class RemoteKernelRecord:
    """A remote kernel as this machine knows it (Jupyter's runtime directory)."""

    kernel_id: str
    docker_host: str
    ssh_config: str | None
    tls_dir: str | None
    ssh_host: str | None
    container_id: str
    workdir: str
    local_dir: str
    volume: str
    owner: dict[str, Any]

    def connection(self) -> HostConnection:
        return connection_for(self.docker_host, self.ssh_config, self.tls_dir, self.ssh_host)

    def pull(self, rel: str, dest: Path | None = None) -> Pulled:
        """Copy `rel` from the kernel's working directory here (links left out)."""
        return pull(
            self.connection().engine,
            self.container_id,
            self.workdir,
            rel,
            dest or Path(self.local_dir),
            PULL_MAX_BYTES,
        )


def _dir() -> Path:
    return Path(jupyter_runtime_dir()) / "nbcontainer" / "remote-kernels"


def save(record: RemoteKernelRecord) -> None:
    d = _dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{record.kernel_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def forget(kernel_id: str) -> None:
    (_dir() / f"{kernel_id}.json").unlink(missing_ok=True)


def records() -> list[RemoteKernelRecord]:
    out = []
    for f in sorted(_dir().glob("*.json")) if _dir().is_dir() else []:
        with contextlib.suppress(ValueError, TypeError, OSError):
            out.append(RemoteKernelRecord(**json.loads(f.read_text())))
    return out


def find_record(kernel: str) -> RemoteKernelRecord:
    """The record of the remote kernel whose id starts with `kernel`."""
    found = [r for r in records() if r.kernel_id.startswith(kernel)]
    if len(found) != 1:
        known = ", ".join(r.kernel_id[:8] for r in records()) or "none"
        raise NbcontainerError(
            f"{'No' if not found else 'More than one'} remote kernel matches {kernel!r} "
            f"(remote kernels of this machine: {known})."
        )
    return found[0]


def sweep_records() -> list[RemoteKernelRecord]:
    """End what a dead server left here (every ssh process it started: its kernels'
    channels, its hosts' Docker connections) and forget its kernels; their containers and
    volumes are swept on their host (``nbcontainer gc --docker-host``, or the next start
    of a kernel there)."""
    from ..docker.hosts import sweep_stale

    sweep_stale()
    gone = []
    for rec in records():
        if labels.Owner(**rec.owner).is_alive():
            continue
        forget(rec.kernel_id)
        gone.append(rec)
    return gone


class PullWatcher:
    """Serves a remote kernel's ``%nbcontainer_pull`` requests from its container's log."""

    def __init__(
        self, engine: Engine, container_id: str, workdir: str, local_dir: str, uid: int, gid: int
    ) -> None:
        self.engine, self.container_id = engine, container_id
        self.workdir, self.local_dir = workdir, local_dir
        self.uid, self.gid = uid, gid
        self._thread = threading.Thread(target=self._run, name="nbc-pull-watcher", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True

    def _run(self) -> None:
        pending = b""
        try:
            for chunk in self.engine.follow_logs(self.container_id):
                if self._stopped:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    at = text.find(PULL_MARK)
                    if at >= 0:
                        self._serve(text[at + len(PULL_MARK) :])
        except Exception as exc:  # the host went away: the kernel's death says so
            log.debug("nbcontainer: pull watcher of %s ended: %s", self.container_id, exc)

    def _serve(self, request: str) -> None:
        started = time.monotonic()
        try:
            req = json.loads(request)
            ident, rel = str(req["id"]), str(req["path"])
            if not ident.isalnum():
                return
        except (ValueError, KeyError, TypeError):
            return
        answer: dict[str, Any]
        try:
            remote_path(self.workdir, rel)
            pulled = pull(
                self.engine,
                self.container_id,
                self.workdir,
                rel,
                Path(self.local_dir),
                PULL_MAX_BYTES,
            )
            answer = {
                "ok": True,
                "bytes": pulled.bytes,
                "skipped": pulled.skipped,
                "to": str(Path(self.local_dir) / rel),
                "seconds": round(time.monotonic() - started, 3),
            }
        except NbcontainerError as exc:
            answer = {"ok": False, "error": str(exc)}
        with contextlib.suppress(NbcontainerError):
            self.engine.put_files(
                self.container_id,
                self.workdir,
                {f"{PULLED_DIR}/{ident}.json": json.dumps(answer).encode()},
                uid=self.uid,
                gid=self.gid,
                mode=0o644,
                dirs=[".nbcontainer", PULLED_DIR],
            )


def request_pull(path: str, timeout: float = 600.0) -> dict[str, Any]:
    """In a remote kernel (``%nbcontainer_pull``): ask the server that runs this kernel to
    copy `path` (a file or folder under the working directory) to the notebook's machine.
    The request goes to the container's own log; the answer comes back as a file."""
    import secrets
    import sys

    workdir = os.environ.get(WORKDIR_ENV)
    if not workdir:
        raise NbcontainerError(
            "This kernel does not run on a remote Docker host (no docker_host in its "
            "kernelspec): its files are already where the notebook is."
        )
    full = os.path.realpath(os.path.join(os.getcwd(), path))
    rel = os.path.relpath(full, workdir)
    remote_path(workdir, rel)  # refuses what leaves the working directory
    if not os.path.exists(full):
        raise NbcontainerError(f"There is no {full} to pull.")
    ident = secrets.token_hex(8)
    answer_file = Path(workdir) / PULLED_DIR / f"{ident}.json"
    line = f"{PULL_MARK}{json.dumps({'id': ident, 'path': rel})}\n".encode()
    # The kernel's own stdout, not the cell's: ipykernel keeps a copy of the real one.
    fd = getattr(sys.stdout, "_original_stdstream_copy", None)
    os.write(fd if isinstance(fd, int) else sys.__stdout__.fileno(), line)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while not answer_file.exists():
        if time.monotonic() > deadline:
            raise NbcontainerError(
                f"No answer to the pull of {rel} within {timeout:.0f} s: the server running "
                "this kernel may be gone, or older than this kernel's nbcontainer-kernel."
            )
        time.sleep(0.05)
    time.sleep(0.05)  # the file is written in one archive: let its extraction finish
    answer: dict[str, Any] = json.loads(answer_file.read_text())
    answer_file.unlink(missing_ok=True)
    if not answer.get("ok"):
        raise NbcontainerError(f"The pull of {rel} failed: {answer.get('error')}")
    return answer

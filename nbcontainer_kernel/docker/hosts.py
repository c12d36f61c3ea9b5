"""Remote Docker hosts: a kernelspec's ``docker_host``, reached over SSH (or TCP with TLS).

Two kinds of connection, both OpenSSH client processes (the user's own ``ssh``: its
``~/.ssh/config``, agent and known_hosts apply; host keys are always checked, since
``StrictHostKeyChecking=yes`` is forced on the command line, which wins over any config):

* :class:`HostConnection`, one per host and process: forwards a private local unix socket
  to the host's Docker socket, and is what :class:`Engine` talks to. Made on first use,
  closed when the process exits.
* :class:`SshTunnel`, one per kernel: the kernel's five channels, each a forward from a
  port on this machine's loopback to the port its container published on the host's
  loopback. It is the kernel's: started after its container, ended with it, and its end
  (connection reset, host unreachable, process killed) is the kernel's death.

No protocol is written here: what crosses the network is SSH, done by OpenSSH.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import HostUnreachable, InvalidOption
from .engine import Engine

__all__ = [
    "sweep_stale",
    "DockerHost",
    "HostConnection",
    "SshTunnel",
    "close_all",
    "connection_for",
    "ssh_command",
]

#: The Docker socket on the remote host (Docker's default).
REMOTE_DOCKER_SOCKET = "/var/run/docker.sock"
#: How long a connection may take to come up (authentication included).
CONNECT_TIMEOUT = 30.0
# A dead network is noticed within about ALIVE_INTERVAL * ALIVE_COUNT seconds.
ALIVE_INTERVAL = 2
ALIVE_COUNT = 2
#: Options that hold whatever the user's config says: keys verified, no prompt (a server
#: has no terminal), a forward that cannot be made fails the connection.
SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=yes",
    "-o", "ExitOnForwardFailure=yes",
    "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
    "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
    "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
    "-o", "StreamLocalBindUnlink=yes",
)  # fmt: skip
# A host name or ssh_config alias; a user name: nothing ssh could take for an option.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_TMP_PREFIX = "nbc-ssh-"


@dataclass(frozen=True)
class DockerHost:
    """A parsed docker_host: ``ssh://[user@]host[:port]`` or ``tcp://host:port``."""

    url: str
    scheme: str
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> DockerHost:
        """Raises InvalidOption for anything but the two forms (naming what is wrong)."""
        m = re.fullmatch(r"(ssh|tcp)://(?:([^@/]*)@)?([^:/@]*)(?::([^/]*))?/?", url or "")
        if m is None:
            raise InvalidOption(
                "docker_host", url, "expected ssh://[USER@]HOST[:PORT] or tcp://HOST:PORT"
            )
        scheme, user, host, port = m.groups()
        if not _NAME.match(host):
            raise InvalidOption("docker_host", url, f"{host!r} is not a host name")
        if user is not None and not _NAME.match(user):
            raise InvalidOption("docker_host", url, f"{user!r} is not a user name")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise InvalidOption("docker_host", url, f"{port!r} is not a port")
        if scheme == "tcp" and port is None:
            raise InvalidOption("docker_host", url, "a tcp:// host needs its port (2376 for TLS)")
        if scheme == "tcp" and user is not None:
            raise InvalidOption("docker_host", url, "a tcp:// host has no user")
        return cls(url, scheme, host, user, int(port) if port else None)

    @property
    def destination(self) -> str:
        """What ssh connects to: the user's config decides what it was not told."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def ssh_port(self) -> int | None:
        return self.port if self.scheme == "ssh" else None


def ssh_command(host: DockerHost, ssh_config: str | None, *args: str) -> list[str]:
    """The ssh argv for `host`: the user's config (or `ssh_config`), our options, `args`."""
    argv = [shutil.which("ssh") or "ssh"]
    if ssh_config:
        argv += ["-F", ssh_config]
    argv += list(SSH_OPTIONS) + list(args)
    if host.ssh_port:
        argv += ["-p", str(host.ssh_port)]
    return [*argv, "--", host.destination]


class _SshProcess:
    """One ssh client process with its forwards, its stderr kept for the reason it ends."""

    def __init__(self, host: DockerHost, ssh_config: str | None) -> None:
        self.host = host
        self.ssh_config = ssh_config
        self.dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))  # 0700: ours alone
        self._stderr_path = self.dir / "ssh.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, forwards: list[str]) -> None:
        if shutil.which("ssh") is None:
            raise HostUnreachable(self.host.url, "no ssh client (install openssh-client)")
        args = [a for f in forwards for a in ("-L", f)]
        with open(self._stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                ssh_command(self.host, self.ssh_config, "-N", *args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # a terminal's Ctrl-C is the server's, not the tunnel's
            )
        _record(self.proc.pid, self.dir)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reason(self) -> str:
        """Why the process ended, in ssh's words (or the signal that killed it)."""
        try:
            lines = [
                ln.strip()
                for ln in self._stderr_path.read_text(errors="replace").splitlines()
                if ln.strip() and not ln.startswith(("Warning: Permanently", "debug"))
            ]
        except OSError:
            lines = []
        code = self.proc.poll() if self.proc is not None else None
        said = lines[-1].rstrip(".") if lines else ""
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return said or f"the ssh process was killed ({name})"
        if said:
            return said
        return "the connection closed" if code is not None else "the connection is up"

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None:
            _records_dir().joinpath(f"{proc.pid}.json").unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class HostConnection(_SshProcess):
    """The Docker API of one remote host, over SSH (or TCP with TLS): :attr:`engine`."""

    def __init__(
        self,
        host: DockerHost,
        ssh_config: str | None = None,
        tls_dir: str | None = None,
        ssh_host: str | None = None,
    ) -> None:
        super().__init__(host, ssh_config)
        self.tls_dir = tls_dir
        #: Where kernels' channels go by SSH: the host itself, or (tcp://) `ssh_host`.
        self.channels_host = (
            DockerHost.parse(ssh_host or f"ssh://{host.host}") if host.scheme == "tcp" else host
        )
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def socket_path(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def engine(self) -> Engine:
        """A connected Engine; (re)connects when there is none or its ssh has ended."""
        with self._lock:
            if self._engine is not None and (self.host.scheme == "tcp" or self.alive()):
                return self._engine
            self._engine = self._connect()
            return self._engine

    def _connect(self) -> Engine:
        if self.host.scheme == "tcp":
            return _tls_engine(self.host, self.tls_dir)
        if self.proc is not None:  # a connection that ended: a fresh one
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.spawn([f"{self.socket_path}:{REMOTE_DOCKER_SOCKET}"])
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not self.socket_path.exists():
            if not self.alive():
                raise HostUnreachable(self.host.url, self.reason())
            if time.monotonic() > deadline:
                self.close()
                raise HostUnreachable(self.host.url, "ssh did not connect in time")
            time.sleep(0.02)
        try:
            return Engine.connect(base_url=f"unix://{self.socket_path}")
        except Exception as exc:  # the socket is there, but Docker does not answer behind it
            said = f"the host's Docker socket {REMOTE_DOCKER_SOCKET} did not answer ({exc})"
            raise HostUnreachable(self.host.url, said) from exc


def _tls_engine(host: DockerHost, tls_dir: str | None) -> Engine:
    """An Engine over TCP with TLS, verifying the daemon (ca.pem, cert.pem, key.pem)."""
    import docker.tls

    certs = Path(tls_dir or os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    missing = [n for n in ("ca.pem", "cert.pem", "key.pem") if not (certs / n).is_file()]
    if missing:
        raise InvalidOption(
            "docker_tls_dir",
            str(certs),
            f"a tcp:// Docker host needs TLS certificates; missing {', '.join(missing)}",
        )
    tls = docker.tls.TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
        ca_cert=str(certs / "ca.pem"),
        verify=True,
    )
    try:
        return Engine.connect(base_url=f"tcp://{host.host}:{host.port}", tls=tls)
    except Exception as exc:
        raise HostUnreachable(host.url, _first_cause(exc)) from exc


def _first_cause(exc: BaseException) -> str:
    """What went wrong first (a TLS verification, a refused connection), in its words."""
    import ssl

    seen: BaseException | None = exc
    words = str(exc)
    while seen is not None:
        if isinstance(seen, (ssl.SSLError, ConnectionRefusedError)):
            return str(seen)
        words = str(seen) or words
        seen = seen.__cause__ or seen.__context__
    return words


class SshTunnel(_SshProcess):
    """A kernel's channels: local loopback port -> the host's loopback port, one ssh."""

    def __init__(self, host: DockerHost, ssh_config: str | None, ports: dict[int, int]) -> None:
        super().__init__(host, ssh_config)
        self.ports = dict(ports)

    def open(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Start the forwards; returns once every local port accepts connections."""
        self.spawn([f"127.0.0.1:{lp}:127.0.0.1:{rp}" for lp, rp in self.ports.items()])
        _tunnels.add(self)
        deadline = time.monotonic() + timeout
        waiting = set(self.ports)
        while waiting:
            if not self.alive():
                reason = self.reason()
                self.close()
                raise HostUnreachable(self.host.url, reason)
            if time.monotonic() > deadline:
                self.close()
                raise HostUnreachable(self.host.url, "the kernel's forwards did not open in time")
            waiting = {p for p in waiting if not _accepts(p)}
            if waiting:
                time.sleep(0.02)

    def close(self) -> None:
        super().close()
        _tunnels.discard(self)


# ------------------------------------------------- what a server killed -9 leaves here
def _records_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "nbcontainer" / "ssh"


def _record(pid: int, folder: Path) -> None:
    """Each ssh process this process starts, with its owner: a server killed with SIGKILL
    cannot end them itself (they run in sessions of their own)."""
    import psutil

    from .labels import Owner

    d = _records_dir()
    d.mkdir(parents=True, exist_ok=True)
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:  # it ended already: nothing to end later
        return
    d.joinpath(f"{pid}.json").write_text(
        json.dumps(
            {"pid": pid, "started": started, "dir": str(folder), "owner": Owner.current().__dict__}
        )
    )


def sweep_stale() -> list[int]:
    """End the ssh processes (and remove the folders) of owners that are gone; returns
    their pids. Called by `nbcontainer gc` and a process's first remote kernel start."""
    import psutil

    from .labels import Owner

    ended = []
    for f in sorted(_records_dir().glob("*.json")) if _records_dir().is_dir() else []:
        try:
            rec = json.loads(f.read_text())
            owner = Owner(**rec["owner"])
        except (OSError, ValueError, TypeError, KeyError):
            f.unlink(missing_ok=True)
            continue
        if owner.is_alive():
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(int(rec["pid"]))
            if proc.create_time() == rec.get("started"):  # not a reused pid: the same ssh
                proc.terminate()
                ended.append(int(rec["pid"]))
        if str(rec.get("dir", "")).startswith(tempfile.gettempdir()):
            shutil.rmtree(rec["dir"], ignore_errors=True)
        f.unlink(missing_ok=True)
    return ended


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


_connections: dict[tuple[str, str | None, str | None, str | None], HostConnection] = {}
# Kernels' tunnels still open: ended at exit (a kernel that was never shut down, such as
# one whose shutdown failed, would keep its ssh running past this process).
_tunnels: weakref.WeakSet[SshTunnel] = weakref.WeakSet()
_connections_lock = threading.Lock()


def connection_for(
    url: str,
    ssh_config: str | None = None,
    tls_dir: str | None = None,
    ssh_host: str | None = None,
) -> HostConnection:
    """This process's connection to a Docker host (made once; closed at exit)."""
    key = (url, ssh_config, tls_dir, ssh_host)
    with _connections_lock:
        conn = _connections.get(key)
        if conn is None:
            conn = HostConnection(DockerHost.parse(url), ssh_config, tls_dir, ssh_host)
            _connections[key] = conn
        return conn


@atexit.register
def close_all() -> None:
    """End every kernel tunnel and host connection of this process (at exit; tests call it
    too), once the warm pools kept on those hosts are gone (their removal needs the
    connection)."""
    from . import warm

    warm.close_all()
    for tunnel in list(_tunnels):
        tunnel.close()
    with _connections_lock:
        conns = list(_connections.values())
        _connections.clear()
    for conn in conns:
        conn.close()

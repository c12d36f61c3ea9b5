"""DockerProvisioner: jupyter_client's kernel provisioner for kernels in Docker.

jupyter_client's KernelManager drives a provisioner through a fixed sequence:
``pre_launch`` -> ``launch_kernel`` -> ``post_launch`` when it starts a
kernel, ``poll``/``wait``/``send_signal``/``kill``/``terminate`` while it
lives, and ``cleanup`` when it is shut down or restarted. This one runs the
kernel in one container per kernel: the kernel listens on fixed ports inside
the container, Docker publishes them on 127.0.0.1 at ports it picks, and
``launch_kernel`` returns those host ports, so jupyter_client rewrites the
connection file with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal as signal_mod
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import docker.types
import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from .. import config
from ..docker import labels, orphans
from ..docker.engine import Engine, get_engine
from ..docker.hosts import SshTunnel
from ..docker.options import (
    ContainerOptions,
    effective_docker_access,
    parse_bytes,
    parse_mount,
    parse_user,
    resource_kwargs,
)
from ..guard import DockerGuard, Grant, process_guard
from ..images.kernel import KernelImageFacts, inspect_kernel_image
from ..images.package_index import host_settings
from ..runtime.contract import KERNEL_CONNECTION_DIR, KERNEL_CONNECTION_FILE, KERNEL_SCRATCH
from ..runtime.errors import (
    EngineError,
    HostUnreachable,
    ImageNotFound,
    ImageNotUsable,
    InvalidOption,
    KernelDied,
    NbcontainerError,
    PortInUse,
    TunnelLost,
)
from . import remote_host
from .pool import KernelPool, pool_for

if TYPE_CHECKING:
    from ..docker.hosts import HostConnection
    from ..docker.workdir import Seed

__all__ = ["DockerProvisioner", "KERNEL_PORTS"]

# Ports the kernel binds inside its container. Fixed, because each container
# has its own network namespace; Docker maps them to free host ports.
KERNEL_PORTS = {
    "shell_port": 52700,
    "iopub_port": 52701,
    "stdin_port": 52702,
    "control_port": 52703,
    "hb_port": 52704,
}
# A restart that finds its kept host ports still taken tries again this often, this long
# apart, before it takes fresh ones.
PORT_RETRIES = 10
PORT_RETRY_WAIT = 0.2
# The first kernel start of a process sweeps orphans once (once per remote host, too).
_swept = False
_swept_hosts: set[str] = set()
# The group of each remote host's Docker socket (docker_access raw there).
_socket_gids: dict[str, str] = {}
# A remote kernel's volume, and its working directory in it (a folder of the kernel's
# user: a volume's own root is root's). One path for every kernel, so that one warm pool
# on a host serves every notebook.
REMOTE_HOME = "/home/nbcontainer"
REMOTE_WORKDIR = f"{REMOTE_HOME}/work"
# Where a kernel finds Docker (docker-py's default), and what it is told of its access.
DOCKER_SOCKET_IN_KERNEL = "/var/run/docker.sock"
DOCKER_ACCESS_ENV = "NBCONTAINER_DOCKER_ACCESS"
# Images whose kernels get the raw socket: warned once each.
_raw_said: set[str] = set()
# Host pip settings a kernel cannot be given (a path that cannot be mounted): said once each.
_left_out_said: set[str] = set()
# Images whose kernels run without CurveZMQ although 'auto' asked for it: said once each.
_unencrypted_said: set[str] = set()


# Both bases are HasTraits; their metaclasses combine at run time, mypy cannot tell.
class DockerProvisioner(ContainerOptions, KernelProvisionerBase):  # type: ignore[metaclass]
    """Runs an IPython kernel in a Docker container (entry point ``nbcontainer-docker``)."""

    container_id: str | None = None
    container_name: str | None = None
    exit_error: KernelDied | TunnelLost | None = None
    _host_ports: dict[str, int] | None = None
    _shutdown_requested = False
    _exit_reported = False
    _facts: KernelImageFacts | None = None
    _image_id: str | None = None
    _guard: DockerGuard | None = None  # guarded: the guard this kernel's socket is
    # A kernel on a remote host (docker_host): its volume, seed, channels and pull watcher.
    _volume: str | None = None
    _workdir: str | None = None
    _local_dir: str | None = None
    _seed: Seed | None = None
    _local_ports: dict[str, int] | None = None
    _tunnel: SshTunnel | None = None
    _watcher: remote_host.PullWatcher | None = None

    # ------------------------------------------------------------ properties
    @property
    def has_process(self) -> bool:
        """True once a container exists for this kernel (called by KernelManager)."""
        return self.container_id is not None

    @property
    def engine(self) -> Engine:
        """This machine's Docker, or the kernelspec's docker_host's (over SSH)."""
        if self.docker_host:
            return self._host().engine
        return get_engine()

    def _host(self) -> HostConnection:
        from ..docker.hosts import connection_for

        return connection_for(
            self.docker_host or "", self.ssh_config, self.docker_tls_dir, self.ssh_host
        )

    @property
    def docker_access_mode(self) -> str:
        """'guarded', 'raw' or 'none' (an old kernelspec's docker_socket decides, if set).
        On a remote host 'none' unless the kernelspec chose: the guard does not reach there."""
        if self.docker_host and not (
            self.trait_has_value("docker_access") or self.docker_socket is not None
        ):
            return "none"
        return effective_docker_access(self.docker_access, self.docker_socket)

    # ---------------------------------------------------------------- launch
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by KernelManager.pre_start_kernel, before the start timeout begins.

        Sweeps orphans once per process, makes sure the image is present
        (pulling per ``pull_policy``) and can run a kernel, and prepares the
        connection key (and CurveZMQ keys). Returns the kwargs for launch_kernel.
        """
        global _swept
        self._check_options()
        where = self.docker_host or ""
        if not (_swept if not where else where in _swept_hosts):
            if where:
                _swept_hosts.add(where)
                await asyncio.to_thread(remote_host.sweep_records)
            else:
                _swept = True
            try:
                removed = await asyncio.to_thread(orphans.sweep, self.engine)
                if removed:
                    self.log.warning("nbcontainer: removed %d orphaned container(s)", len(removed))
            except EngineError as exc:  # a sweep must never stop a kernel from starting
                self.log.warning("nbcontainer: orphan sweep failed: %s", exc)

        self.log.info("nbcontainer: preparing image %s", self.image)
        if self.docker_host:
            image = await asyncio.to_thread(self._remote_image)
        else:
            image = await asyncio.to_thread(
                self.engine.ensure_image,
                self.image,
                self.pull_policy,
                lambda line: self.log.info("pull %s", line),
            )
        self._image_id = image.id
        self._facts = await asyncio.to_thread(
            inspect_kernel_image, self.engine, self.image, self._python_command()
        )
        km = self.parent
        self._setup_encryption(km, kwargs.pop("transport_encryption", None))
        extra_arguments = kwargs.pop("extra_arguments", [])
        cmd = [
            a.replace("{connection_file}", KERNEL_CONNECTION_FILE) for a in self.kernel_spec.argv
        ] + list(extra_arguments)
        self._shutdown_requested = False
        self._exit_reported = False
        self.exit_error = None
        return await super().pre_launch(cmd=cmd, **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Called by KernelManager to start the kernel: create, fill and start its container
        (or claim a warm one). Returns the connection info with the host ports Docker
        published."""
        km = self.parent
        key = km.session.key if km is not None else secrets.token_hex(32).encode()
        scheme = km.session.signature_scheme if km is not None else "hmac-sha256"
        host_network = self.network_mode == "host"
        inner_ports = _inner_ports(host_network)
        curve = self._curve_keys(km)
        inner = {
            **inner_ports,
            "ip": "127.0.0.1" if host_network else "0.0.0.0",
            "transport": "tcp",
            "key": key.decode(),
            "signature_scheme": scheme,
            "kernel_name": self.kernel_spec.display_name if self.kernel_spec else "",
            **curve,
        }
        create_kwargs = self._container_kwargs(cmd, kwargs, inner_ports, host_network)
        pool = self._pool(cmd, create_kwargs)
        warm = await self._claim_warm(pool, cmd, create_kwargs, inner)
        if warm is not None:
            self.container_id, self.container_name = warm.container_id, warm.name
            self._host_ports = (
                dict(inner_ports)
                if host_network
                else {name: warm.host_ports[f"{port}/tcp"] for name, port in inner_ports.items()}
            )
        else:
            await self._start_cold(create_kwargs, inner, inner_ports, host_network)
        if self.docker_host and self._volume is None:
            self._volume = await asyncio.to_thread(self._volume_of, self.container_id or "")
        self._grant_docker(create_kwargs)
        if pool is not None:
            pool.fill_later()  # off this kernel's path: after it has started
        assert self._host_ports is not None  # read from the container, warm or cold
        ports = self._host_ports
        if self.docker_host:
            ports = await asyncio.to_thread(self._open_channels, create_kwargs)
        info_out: dict[str, Any] = {
            **ports,
            "ip": "127.0.0.1",
            "transport": "tcp",
            "key": key,
            "signature_scheme": scheme,
            **curve,
        }
        self.connection_info = cast(KernelConnectionInfo, info_out)
        self.log.info(
            "nbcontainer: kernel %s in container %s (%s, %s), ports %s",
            self.kernel_id,
            self.container_name,
            self.image,
            "from the warm pool" if warm is not None else "started cold",
            ports if not self.docker_host else f"{ports} (forwarded from {self.docker_host})",
        )
        return self.connection_info

    async def _claim_warm(
        self,
        pool: KernelPool | None,
        cmd: list[str],
        create_kwargs: dict[str, Any],
        inner: dict[str, Any],
    ) -> Any:
        """A warm container of the pool, claimed for this kernel (None: start one cold). A
        restart keeps its ports, so it always starts cold."""
        if pool is None or self._host_ports:
            return None
        uid, gid = _uid_gid(create_kwargs.get("user"))

        def seed(container_id: str) -> None:  # a remote kernel's files, before it starts
            self._seed_workdir(container_id, uid, gid)

        return await asyncio.to_thread(
            pool.claim_kernel,
            self.kernel_id or "",
            inner,
            cmd,
            create_kwargs["environment"],
            create_kwargs.get("working_dir"),
            uid,
            gid,
            seed if self.docker_host and self._seed is None else None,
        )

    async def _start_cold(
        self,
        create_kwargs: dict[str, Any],
        inner: dict[str, Any],
        inner_ports: dict[str, int],
        host_network: bool,
    ) -> None:
        """Create and start the kernel's container; read the ports Docker published. One
        that dies first is reported (why it died) and removed."""
        await asyncio.to_thread(self._create_and_start, create_kwargs, inner)
        assert self.container_id is not None  # _create_and_start made it
        info = await asyncio.to_thread(self.engine.inspect, self.container_id)
        state = (info or {}).get("State") or {}
        if not state.get("Running"):
            self._report_exit(info, state, gone=info is None)
            await self.cleanup()
            assert self.exit_error is not None
            raise self.exit_error
        self._host_ports = dict(inner_ports) if host_network else self._published_ports(info or {})

    def _grant_docker(self, create_kwargs: dict[str, Any]) -> None:
        """A guarded kernel's container may now use the guard, within its own limits."""
        if self.docker_access_mode == "raw" and self.image not in _raw_said:
            _raw_said.add(self.image)
            self.log.warning(
                "nbcontainer: kernels of %s get the Docker daemon's own socket "
                "(docker_access=raw), which is root on this host",
                self.image,
            )
        if self._guard is None or self.container_id is None:  # not guarded
            return
        own = tuple(
            (str(m["Source"]), bool(m.get("ReadOnly")))
            for m in create_kwargs.get("mounts") or []
            if m.get("Target") != DOCKER_SOCKET_IN_KERNEL
        )
        self._guard.grant(
            Grant(
                kernel_id=self.kernel_id or "",
                container_id=self.container_id,  # docker-py's ids are full ids
                mounts=own,
                memory=parse_bytes("memory", self.memory) if self.memory else None,
                nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
                gpus=self.gpus,
                user=self._kernel_user(create_kwargs.get("user")),
                max_containers=self.guard_max_containers,
            )
        )

    def _kernel_user(self, asked: str | None) -> str:
        """The kernel's uid:gid, which every container it makes through the guard runs as:
        the one its container was made with, or (user 'image') the one its process has."""
        if asked:
            uid, gid = _uid_gid(asked)
            return f"{uid}:{gid}"
        info = self.engine.inspect(self.container_id or "") or {}
        pid = int((info.get("State") or {}).get("Pid") or 0)
        try:
            status = Path(f"/proc/{pid}/status").read_text() if pid else ""
        except OSError:
            status = ""
        ids = {
            line.split(":", 1)[0]: line.split()[1]
            for line in status.splitlines()
            if line.startswith(("Uid:", "Gid:"))
        }
        if "Uid" in ids and "Gid" in ids:
            return f"{ids['Uid']}:{ids['Gid']}"
        configured = str((info.get("Config") or {}).get("User") or "0")
        if re.fullmatch(r"\d+(:\d+)?", configured):
            uid, gid = _uid_gid(configured)
            return f"{uid}:{gid}"
        # A user name the host cannot resolve: the least privileged user, never root.
        return "65534:65534"

    def _pool(self, cmd: list[str], create_kwargs: dict[str, Any]) -> KernelPool | None:
        """This kernel's launch shape's warm pool (None with pool_size 0)."""
        if self.pool_size <= 0 or not self._image_id:
            return None
        if self.docker_host:  # kept on that host, through this process's connection to it
            host = self._host()
            return pool_for(
                lambda: host.engine,
                self.image,
                self._image_id,
                cmd[0],
                create_kwargs,
                self.pool_size,
                where=self.docker_host,
            )
        return pool_for(
            get_engine, self.image, self._image_id, cmd[0], create_kwargs, self.pool_size
        )

    def _create_and_start(self, create_kwargs: dict[str, Any], inner: dict[str, Any]) -> None:
        engine = self.engine
        uid, gid = _uid_gid(create_kwargs.get("user"))

        def create_and_fill() -> Any:
            container = engine.create_container(self.image, **create_kwargs)
            self.container_id, self.container_name = container.id, container.name
            if self.docker_host and self._seed is None:
                self._seed_workdir(container.id, uid, gid)
            # In a directory of the kernel's own, so that it can remove the file once read.
            conn_dir = KERNEL_CONNECTION_DIR.lstrip("/")
            engine.put_files(
                container.id,
                "/",
                {KERNEL_CONNECTION_FILE.lstrip("/"): json.dumps(inner).encode()},
                uid=uid,
                gid=gid,
                mode=0o600,
                dirs=[conn_dir],
            )
            return container

        for attempt in range(PORT_RETRIES + 1):
            container = create_and_fill()
            try:
                engine.start(container)
                return
            except EngineError as exc:
                engine.remove(container.id)
                self.container_id = None
                if not isinstance(exc, PortInUse) or not create_kwargs.get("ports"):
                    raise
            if attempt < PORT_RETRIES:
                # A restart keeps its ports: the previous container's are being released
                # (Docker's proxy lets go of them a moment after the container is gone).
                time.sleep(PORT_RETRY_WAIT)
        # Still taken (by something else): fresh ones, which clients of before the restart
        # will not know.
        create_kwargs["ports"] = {p: ("127.0.0.1",) for p in create_kwargs["ports"]}
        container = create_and_fill()
        engine.start(container)

    def _container_kwargs(
        self,
        cmd: list[str],
        kwargs: dict[str, Any],
        inner_ports: dict[str, int],
        host_network: bool,
    ) -> dict[str, Any]:
        """docker-py's ``containers.create`` arguments of the kernel's container."""
        cwd = kwargs.get("cwd") or os.getcwd()
        user = parse_user(self.user)
        env = self._container_env(kwargs.get("env") or {}, user)
        mounts = self._own_mounts(str(cwd), env)
        group_add = self._docker_access(mounts, env)
        self._package_index(mounts, env)
        kernel_id = self.kernel_id or ""
        out: dict[str, Any] = {
            "entrypoint": cmd[:1],
            "command": cmd[1:],
            "name": f"nbcontainer-kernel-{kernel_id[:8] or 'x'}-{secrets.token_hex(3)}",
            "labels": labels.container_labels(
                labels.ROLE_KERNEL, kernel_id=kernel_id, image=self.image
            ),
            "environment": env,
            "working_dir": self._workdir
            if self.docker_host
            else (str(cwd) if self.mount_cwd else None),
            "mounts": mounts,
            "user": user,
            "init": self.init,
            "detach": True,
            "group_add": group_add or None,
            # /tmp (and HOME, IPython's profile and history, snapshot work directories) is a
            # tmpfs: a commit of the kernel's container for %%remote_run never sees it.
            "tmpfs": {KERNEL_SCRATCH: "rw,exec,nosuid,mode=1777"},
            **self._network(inner_ports, host_network),
        }
        out.update(
            resource_kwargs(
                cpus=self.cpus, memory=self.memory, gpus=self.gpus, shm_size=self.shm_size
            )
        )
        return out

    def _own_mounts(self, cwd: str, env: dict[str, str]) -> list[docker.types.Mount]:
        """The working directory, the kernelspec's mounts and the ledger's folder."""
        if self.docker_host:
            return self._remote_mounts(cwd, env)
        mounts: list[docker.types.Mount] = []
        if self.mount_cwd:
            root = self._mount_root(cwd)
            mounts.append(docker.types.Mount(target=root, source=root, type="bind"))
        for spec in self.mounts:
            src, dst, mode = parse_mount(spec)
            mounts.append(
                docker.types.Mount(target=dst, source=src, type="bind", read_only=mode == "ro")
            )
        if self.mount_ledger:
            from ..remote.ledger import default_path

            ledger = default_path()
            ledger.parent.mkdir(parents=True, exist_ok=True)
            mounts.append(
                docker.types.Mount(
                    target=str(ledger.parent), source=str(ledger.parent), type="bind"
                )
            )
            env["NBCONTAINER_RUNS_DB"] = str(ledger)
        return mounts

    def _remote_mounts(self, cwd: str, env: dict[str, str]) -> list[docker.types.Mount]:
        """A remote kernel's working directory is on a volume on its host: made with its
        first container (a pool's, or its own), labelled with its owner (a sweep finds it),
        and mounted again by name after a restart. The kernelspec's mounts are the host's
        paths; the run ledger lives on the volume."""
        self._local_dir = os.path.realpath(cwd)
        self._workdir = REMOTE_WORKDIR
        volume_labels = None
        if self._volume is None:
            volume_labels = {labels.ROLE: "kernel-workdir", **labels.Owner.current().labels()}
        mounts = [
            docker.types.Mount(
                target=REMOTE_HOME, source=self._volume, type="volume", labels=volume_labels
            )
        ]
        for spec in self.mounts:
            src, dst, mode = parse_mount(spec)
            mounts.append(
                docker.types.Mount(target=dst, source=src, type="bind", read_only=mode == "ro")
            )
        env["NBCONTAINER_RUNS_DB"] = f"{self._workdir}/.nbcontainer/runs.db"
        env[remote_host.WORKDIR_ENV] = self._workdir
        return mounts

    def _docker_access(self, mounts: list[docker.types.Mount], env: dict[str, str]) -> list[str]:
        """The kernel's way to Docker (docker_access): the daemon's socket, the guard's, or
        none; returns the groups the kernel's user joins for it."""
        group_add: list[str] = []
        access = self.docker_access_mode
        self._guard = None
        if access == "raw" and self.docker_host:
            # The remote daemon's own socket: root on that host (a machine of one's own).
            mounts.append(
                docker.types.Mount(
                    target=DOCKER_SOCKET_IN_KERNEL, source=DOCKER_SOCKET_IN_KERNEL, type="bind"
                )
            )
            group_add.append(self._remote_socket_gid())
        elif access == "raw":
            sock = _docker_socket_path()
            mounts.append(
                docker.types.Mount(target=DOCKER_SOCKET_IN_KERNEL, source=sock, type="bind")
            )
            group_add.append(str(os.stat(sock).st_gid))
        elif access == "guarded":
            # One guard socket for every kernel of this process (its identity check is per
            # container), so the mount is part of the launch shape and pools keep working.
            self._guard = process_guard(_docker_socket_path())
            mounts.append(
                docker.types.Mount(
                    target=DOCKER_SOCKET_IN_KERNEL, source=self._guard.path, type="bind"
                )
            )
        if access != "none":
            env["DOCKER_HOST"] = f"unix://{DOCKER_SOCKET_IN_KERNEL}"
        env[DOCKER_ACCESS_ENV] = access
        return group_add

    def _package_index(self, mounts: list[docker.types.Mount], env: dict[str, str]) -> None:
        """The host's package index settings: the kernelspec's own env wins over them."""
        index = host_settings(self.package_index)
        for note in index.left_out:
            if note not in _left_out_said:
                _left_out_said.add(note)
                self.log.warning("nbcontainer: kernels' pip leaves out the host's %s", note)
        spec_env = set(getattr(self.kernel_spec, "env", None) or {})
        env.update({k: v for k, v in index.env.items() if k not in spec_env})
        taken = {m["Target"] for m in mounts}
        for source, target in sorted(index.mounts.items()):
            if self.docker_host:  # paths of this machine: the remote host has none of them
                break
            if target in taken:  # the kernelspec mounts something there itself
                continue
            mounts.append(
                docker.types.Mount(target=target, source=source, type="bind", read_only=True)
            )

    def _network(self, inner_ports: dict[str, int], host_network: bool) -> dict[str, Any]:
        if host_network:
            return {"network_mode": "host"}
        out: dict[str, Any] = {"network": self.network_mode} if self.network_mode else {}
        # Keep the host ports of a previous container across a restart, so that
        # clients connected before the restart keep working (as LocalProvisioner does).
        previous = self._host_ports or {}
        out["ports"] = {
            f"{port}/tcp": ("127.0.0.1", previous[name]) if name in previous else ("127.0.0.1",)
            for name, port in inner_ports.items()
        }
        return out

    def _mount_root(self, cwd: str) -> str:
        """What a kernel sees of the host: the server's root directory (what a local kernel
        of that server would see, and the same for every notebook, so one warm pool serves
        them all), else this process's directory, when the kernel's directory is inside it;
        else the kernel's directory alone."""
        server = getattr(self.parent, "parent", None)
        for root in (getattr(server, "root_dir", None), os.getcwd()):
            if root and os.path.isabs(root):
                root = os.path.realpath(root)
                real = os.path.realpath(cwd)
                if real == root or real.startswith(root.rstrip("/") + "/"):
                    return root
        return cwd

    def _container_env(self, env: dict[str, str], user: str | None) -> dict[str, str]:
        """The kernelspec's env plus the allow-list, never the server's whole environment."""
        spec_env = dict(getattr(self.kernel_spec, "env", None) or {})
        allowed = set(self.env_allowlist)
        out = {k: v for k, v in env.items() if k in spec_env or k in allowed}
        out.update({k: env.get(k, v) for k, v in spec_env.items()})
        out["NBCONTAINER_KERNEL_ID"] = self.kernel_id or ""
        out["NBCONTAINER_IMAGE"] = self.image
        out["NBCONTAINER_CONNECTION_FILE"] = KERNEL_CONNECTION_FILE
        # HOME on the tmpfs: writable for any uid, and never part of a commit (~/.aws,
        # ~/.cache/*/token, IPython's history). A kernelspec may set its own.
        out.setdefault("HOME", KERNEL_SCRATCH)
        out.setdefault("IPYTHONDIR", f"{KERNEL_SCRATCH}/.ipython")
        return out

    @staticmethod
    def _published_ports(info: dict[str, Any]) -> dict[str, int]:
        published = (info.get("NetworkSettings") or {}).get("Ports") or {}
        ports = {}
        for name, port in KERNEL_PORTS.items():
            bindings = published.get(f"{port}/tcp") or []
            host = next((b for b in bindings if b.get("HostIp") in ("127.0.0.1", "")), None)
            if host is None:
                raise EngineError("publish the kernel's ports", f"port {port} was not published")
            ports[name] = int(host["HostPort"])
        return ports

    # ----------------------------------------------------------- remote host
    def _remote_image(self) -> Any:
        """The image on the remote host: there already; else pulled there from its registry
        (a name that names one); else copied from this machine's engine, sending only the
        layers the host lacks. Before the kernel's start timeout begins (pre_launch)."""
        from ..docker.image_copy import copy_image

        engine = self.engine
        local_id = _local_image_id(self.image)
        if self.pull_policy != "always" and engine.has_image(self.image):
            there = engine.get_image(self.image)
            if local_id in (None, there.id):
                return there
            self.log.info(
                "nbcontainer: %s on %s is not the image of that name here: updating it",
                self.image,
                self.docker_host,
            )
        why = "it names no registry of its own"
        if self.pull_policy != "never" and _names_registry(self.image):
            try:
                return engine.pull(self.image, lambda line: self.log.info("pull %s", line))
            except (ImageNotFound, EngineError) as exc:
                why = f"it could not pull it ({getattr(exc, 'reason', exc)})"
        if local_id is None and engine.has_image(self.image):  # nothing here to copy
            return engine.get_image(self.image)
        if local_id is None:
            raise ImageNotFound(
                self.image,
                f"{self.docker_host} does not have it and {why}, and this machine has no "
                "copy to send; build or pull it here, or push it to a registry the host reaches",
            )
        self.log.info("nbcontainer: copying %s to %s (%s)", self.image, self.docker_host, why)
        progress = self._progress(f"copying {self.image}")
        report = copy_image(get_engine(), engine, self.image, progress)
        self.log.info(
            "nbcontainer: copied %s to %s: %d of its %d layers (%d MB) were missing there",
            self.image,
            self.docker_host,
            report.sent_layers,
            report.layers,
            report.sent_bytes >> 20,
        )
        return engine.get_image(self.image)

    def _progress(self, doing: str, at_least: int = 0) -> Callable[[int, int], None]:
        """A progress callback that logs each tenth of the way (of `at_least` bytes or more:
        a small transfer says nothing until it is done)."""
        said = [-1]

        def progress(sent: int, total: int) -> None:
            tenth = sent * 10 // total if total else 10
            if total >= at_least and tenth != said[0]:
                said[0] = tenth
                self.log.info("nbcontainer: %s: %d of %d MB", doing, sent >> 20, total >> 20)

        return progress

    def _volume_of(self, container_id: str) -> str | None:
        """The name of the volume a remote kernel's container has its working directory on."""
        info = self.engine.inspect(container_id) or {}
        return next(
            (
                str(m.get("Name"))
                for m in info.get("Mounts") or []
                if m.get("Destination") == REMOTE_HOME and m.get("Name")
            ),
            None,
        )

    def _remote_socket_gid(self) -> str:
        """The group of the remote daemon's socket, read by a probe on that host (once per
        host and process: a probe container is off every later kernel's start)."""
        host = self.docker_host or ""
        if host not in _socket_gids:
            _socket_gids[host] = self._probe_socket_gid()
        return _socket_gids[host]

    def _probe_socket_gid(self) -> str:
        code, out = self.engine.run_probe(
            self.image,
            [self._python_command(), "-c", "import os; print(os.stat('/s').st_gid)"],
            labels.container_labels(labels.ROLE_PROBE),
            mounts=[docker.types.Mount(target="/s", source=DOCKER_SOCKET_IN_KERNEL, type="bind")],
        )
        said = out.strip().splitlines()
        if code != 0 or not said or not said[-1].isdigit():
            raise InvalidOption(
                "docker_access",
                "raw",
                f"{self.docker_host} has no Docker socket at "
                f"{DOCKER_SOCKET_IN_KERNEL} to give the kernel ({out.strip()[-200:]})",
            )
        return said[-1]

    def _seed_workdir(self, container_id: str, uid: int, gid: int) -> None:
        """Fill the new volume from the notebook's directory (streamed, capped, with
        progress in the server's log)."""
        from ..docker.options import parse_size
        from ..docker.workdir import collect, seed

        assert self._local_dir is not None and self._workdir is not None
        cap = parse_size("workdir_max_size", self.workdir_max_size)
        files = collect(Path(self._local_dir), cap)
        total = sum(size for _, size in files)
        started = time.monotonic()
        progress = self._progress(f"seeding {self._workdir}", at_least=32 << 20)
        self._seed = seed(
            self.engine,
            container_id,
            self._workdir,
            Path(self._local_dir),
            files,
            uid=uid,
            gid=gid,
            on_progress=progress,
        )
        self.log.info(
            "nbcontainer: seeded %s on %s with %d files (%d kB) in %.1f s",
            self._workdir,
            self.docker_host,
            len(files),
            total >> 10,
            time.monotonic() - started,
        )

    def _open_channels(self, create_kwargs: dict[str, Any]) -> dict[str, int]:
        """The kernel's SSH connection: the same local ports across restarts, each to the
        port its container published on the host's loopback. Returns the local ports."""
        assert self._host_ports is not None and self.container_id is not None
        connection = self._host()
        for attempt in range(2):
            if self._local_ports is None:
                self._local_ports = _inner_ports(host_network=True)  # free loopback ports
            mapping = {self._local_ports[n]: self._host_ports[n] for n in KERNEL_PORTS}
            try:
                self._tunnel = SshTunnel(connection.channels_host, connection.ssh_config, mapping)
                self._tunnel.open()
                break
            except HostUnreachable:
                if attempt == 1 or not any(_taken(p) for p in self._local_ports.values()):
                    raise
                self._local_ports = None  # taken by something else meanwhile: fresh ones
        uid, gid = _uid_gid(create_kwargs.get("user"))
        assert self._workdir is not None and self._local_dir is not None
        self._watcher = remote_host.PullWatcher(
            self.engine, self.container_id, self._workdir, self._local_dir, uid, gid
        )
        self._watcher.start()
        remote_host.save(
            remote_host.RemoteKernelRecord(
                kernel_id=self.kernel_id or "",
                docker_host=self.docker_host or "",
                ssh_config=self.ssh_config,
                tls_dir=self.docker_tls_dir,
                ssh_host=self.ssh_host,
                container_id=self.container_id,
                workdir=self._workdir,
                local_dir=self._local_dir,
                volume=self._volume or "",
                owner=labels.Owner.current().__dict__,
            )
        )
        assert self._local_ports is not None  # chosen above
        return dict(self._local_ports)

    def _tunnel_lost(self) -> bool:
        """True (and the kernel's death reported) once its SSH connection has ended."""
        if self._tunnel is None or self._tunnel.alive():
            return False
        if not self._exit_reported:
            self._exit_reported = True
            if not self._shutdown_requested:
                self.exit_error = TunnelLost(
                    self.docker_host or "", self.container_name or "?", self._tunnel.reason()
                )
                self.log.error("nbcontainer: %s", self.exit_error)
        return True

    async def _remote_cleanup(self, cid: str | None, restart: bool) -> None:
        """Before the container goes: its channels, and (sync_back) its files home."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            await asyncio.to_thread(tunnel.close)
        if restart or cid is None or not self.sync_back or self._seed is None:
            return
        from ..docker.workdir import sync_back

        try:
            written, apart = await asyncio.to_thread(
                sync_back,
                self.engine,
                cid,
                self._workdir or "",
                self._seed,
                remote_host.PULL_MAX_BYTES,
            )
            self.log.info(
                "nbcontainer: brought back %d file(s) from %s%s",
                len(written),
                self.docker_host,
                f"; {len(apart)} changed here too, kept as NAME.remote: {', '.join(apart)}"
                if apart
                else "",
            )
        except NbcontainerError as exc:
            self.log.error("nbcontainer: could not bring the kernel's files back: %s", exc)

    async def _remove_volume(self) -> None:
        volume, self._volume, self._seed = self._volume, None, None
        remote_host.forget(self.kernel_id or "")
        self._local_ports = None
        if volume is not None:
            try:
                await asyncio.to_thread(self.engine.remove_volume, volume)
            except NbcontainerError as exc:
                self.log.warning(
                    "nbcontainer: volume %s stays on %s (%s); `nbcontainer gc --docker-host "
                    "%s` removes it",
                    volume,
                    self.docker_host,
                    exc,
                    self.docker_host,
                )

    # ------------------------------------------------------------ encryption
    def _setup_encryption(self, km: Any, requested: str | None) -> None:
        policy = self.transport_encryption
        supported = (
            km is not None
            and hasattr(km, "curve_publickey")
            and zmq.has("curve")
            and bool(self._facts and self._facts.curve)
        )
        if policy == "required" and not supported:
            raise ImageNotUsable(
                self.image,
                "CurveZMQ encryption is required but not supported end to end",
                "Use pyzmq with libsodium, jupyter_client >= 8.7 and an image whose ipykernel "
                "supports CurveZMQ (rebuild it with `nbcontainer image build`), or set "
                "transport_encryption to 'auto'.",
            )
        if policy != "disabled" and supported and km.curve_publickey is None:
            km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        if policy == "auto" and not supported and self.image not in _unencrypted_said:
            _unencrypted_said.add(self.image)
            why = (
                "the image's ipykernel cannot"
                if not (self._facts and self._facts.curve)
                else "this server's pyzmq or jupyter_client cannot"
            )
            self.log.warning(
                "nbcontainer: kernels in %s run without CurveZMQ encryption (%s do it); "
                "their ports are on 127.0.0.1 and messages are still signed",
                self.image,
                why,
            )

    @staticmethod
    def _curve_keys(km: Any) -> dict[str, str]:
        if km is None or getattr(km, "curve_publickey", None) is None:
            return {}
        return {
            "curve_publickey": km.curve_publickey.decode(),
            "curve_secretkey": km.curve_secretkey.decode(),
        }

    # ----------------------------------------------------------------- state
    async def poll(self) -> int | None:
        """Called by KernelManager.is_alive: None while the container runs, else its exit code."""
        if self.container_id is None:
            return 0
        if self.docker_host and self._tunnel_lost():
            return 255
        try:
            info = await asyncio.to_thread(self.engine.inspect, self.container_id)
        except (HostUnreachable, EngineError, ConnectionError) as exc:
            if not self.docker_host:
                raise
            self.log.error("nbcontainer: %s", exc)
            return None  # the kernel's own connection decides: it is still up
        if info is None:
            self._report_exit(None, {"ExitCode": None, "OOMKilled": False}, gone=True)
            return 255
        state = info.get("State") or {}
        if state.get("Running") or state.get("Status") in ("created", "restarting"):
            return None
        self._report_exit(info, state)
        return int(state.get("ExitCode") or 0)

    def _report_exit(
        self, info: dict[str, Any] | None, state: dict[str, Any], gone: bool = False
    ) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        if self._shutdown_requested and not state.get("OOMKilled"):
            return
        tail = (
            [] if gone else self.engine.logs_tail(self.container_id or "", self.startup_log_lines)
        )
        self.exit_error = KernelDied(
            self.container_name or "?", state.get("ExitCode"), bool(state.get("OOMKilled")), tail
        )
        if state.get("OOMKilled") and self.memory:
            self.log.error("nbcontainer: %s (memory limit %s)", self.exit_error, self.memory)
        else:
            self.log.error("nbcontainer: %s", self.exit_error)

    async def wait(self) -> int | None:
        """Called by KernelManager after kill/terminate: wait for the container to stop."""
        while True:
            code = await self.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)

    async def send_signal(self, signum: int) -> None:
        """Deliver a signal through the Docker API (interrupts fall back to SIGINT here)."""
        if self.container_id is None:
            return
        if signum == 0:
            await self.poll()
            return
        await asyncio.to_thread(self.engine.signal, self.container_id, int(signum))

    async def kill(self, restart: bool = False) -> None:
        """Called by KernelManager when a kernel does not shut down in time: SIGKILL it."""
        if self.container_id is not None:
            self._shutdown_requested = True
            await asyncio.to_thread(self.engine.signal, self.container_id, "SIGKILL")

    async def terminate(self, restart: bool = False) -> None:
        """Ask the container to stop (SIGTERM to its init, which forwards it)."""
        if self.container_id is not None:
            self._shutdown_requested = True
            await asyncio.to_thread(self.engine.signal, self.container_id, int(signal_mod.SIGTERM))

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Called by KernelManager after it sent shutdown_request: an exit is expected now."""
        self._shutdown_requested = True

    async def cleanup(self, restart: bool = False) -> None:
        """Called by KernelManager after shutdown (and before a restart): remove the container.

        Idempotent: calling it again, or after the container is gone, does nothing.
        """
        cid, self.container_id = self.container_id, None
        if self.docker_host:
            await self._remote_cleanup(cid, restart)
        if cid is None:
            if self.docker_host and not restart:
                await self._remove_volume()
            return
        if self._guard is not None:
            self._guard.revoke(cid)
        try:
            # A remote kernel's restart keeps its working directory's volume.
            keep = bool(self.docker_host and restart)
            await asyncio.to_thread(self.engine.remove, cid, not keep)
            # What the kernel made goes with it: images committed from it for %%remote_run,
            # and containers its process made (its warm runner pool, its runs).
            await asyncio.to_thread(orphans.remove_commits_of_gone_containers, self.engine, cid)
            await asyncio.to_thread(orphans.remove_made_by_kernel, self.engine, cid)
        except (HostUnreachable, ConnectionError) as exc:
            if not self.docker_host:
                raise
            self.log.warning(
                "nbcontainer: container %s stays on %s (%s); the next start there, or "
                "`nbcontainer gc --docker-host %s`, removes it",
                cid[:12],
                self.docker_host,
                exc,
                self.docker_host,
            )
        finally:
            orphans.release(cid)
        if not restart:
            self._host_ports = None
            if self.docker_host:
                await self._remove_volume()

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended

    # ----------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        """Called by a server that persists kernels: what finds this container again."""
        info = await super().get_provisioner_info()
        info.update(
            {
                "container_id": self.container_id,
                "container_name": self.container_name,
                "image": self.image,
                "host_ports": self._host_ports,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Called by a restarted server: re-attach to the kernel's container and own it."""
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.container_name = provisioner_info.get("container_name")
        self.image = provisioner_info.get("image") or self.image
        self._host_ports = provisioner_info.get("host_ports")
        if self.container_id:
            orphans.adopt(self.container_id)

    # --------------------------------------------------------------- helpers
    def _python_command(self) -> str:
        argv = list(getattr(self.kernel_spec, "argv", None) or ["python3"])
        return str(argv[0])

    def _check_options(self) -> None:
        from ..docker.options import validate_options

        # What the kernelspec (or the server's config) set: a default is not a choice.
        config = {
            name: getattr(self, name)
            for name in ContainerOptions.option_names()
            if name == "image" or self.trait_has_value(name)
        }
        try:
            validate_options(config)
        except InvalidOption as exc:
            raise InvalidOption(
                exc.option,
                exc.value,
                f"{exc.reason} (kernelspec {getattr(self.kernel_spec, 'display_name', '?')!r})",
            ) from exc


def _uid_gid(user: str | None) -> tuple[int, int]:
    if not user:
        return 0, 0
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _docker_socket_path() -> str:
    """The daemon's socket on this host: mounted (raw) or forwarded to (guarded)."""
    host = config.docker_host()
    if not host.startswith("unix://"):
        raise InvalidOption(
            "docker_access",
            "guarded/raw",
            f"DOCKER_HOST is {host}, not a local socket that a kernel can be given; "
            "use docker_access 'none'",
        )
    path = host[len("unix://") :]
    if not os.path.exists(path) or not stat.S_ISSOCK(os.stat(path).st_mode):
        raise InvalidOption("docker_access", "guarded/raw", f"{path} is not a Docker socket")
    return path


def _local_image_id(ref: str) -> str | None:
    """The id of `ref` on this machine's engine (None: absent, or no engine here)."""
    try:
        return str(get_engine().get_image(ref).id)
    except NbcontainerError:
        return None


def _names_registry(ref: str) -> bool:
    """Whether an image reference names its registry (Docker's rule for the first part)."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _inner_ports(host_network: bool) -> dict[str, int]:
    """The kernel's ports inside its container: the fixed ones, published by Docker; on the
    host network (no publishing) free loopback ports, bound directly."""
    if not host_network:
        return dict(KERNEL_PORTS)
    from jupyter_client.localinterfaces import localhost
    from jupyter_client.provisioning.local_provisioner import (  # type: ignore[attr-defined]
        LocalPortCache,
    )

    lpc = LocalPortCache.instance()
    return {name: lpc.find_available_port(localhost()) for name in KERNEL_PORTS}

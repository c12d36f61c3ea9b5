"""A warm kernel pool: containers started ahead of time, waiting to become kernels.

A container's own start (create, network, init, Python, importing ipykernel and
IPython) is most of a containerized kernel's start. The provisioner keeps
``pool_size`` containers per *launch shape* already started: each runs a small
waiter (:data:`WAITER`) that has imported the kernel application and waits for
a claim. A waiting container holds no kernel's keys: its connection file and
environment arrive only when it is claimed, through the Docker API
(``put_archive``), and the waiter then starts the kernel in its own process.

A launch shape is what a container fixes when it is made: image id, user,
mounts, resources, network, init, the interpreter and the environment that
Python reads at start (``PYTHON*``, ``LD_*``, ``PATH``). Everything per kernel
(the connection file, the kernel's environment, its working directory) comes
with the claim, so one pool serves every notebook of a server.

The pool belongs to the process that made it (labels name it, as for every
container nbcontainer makes); claiming is lock-protected in that process. Its
waiting containers are removed when that process exits, and swept by
``nbcontainer gc`` or the next start when the process died (kill -9).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import labels
from ..contract import KERNEL_CONNECTION_DIR, KERNEL_CONNECTION_FILE
from ..engine import Engine
from ..errors import NbcontainerError

__all__ = [
    "CLAIM_FILE",
    "KernelPool",
    "WarmContainer",
    "close_all",
    "kernel_container_name",
    "kernel_containers",
    "launch_shape",
    "pool_for",
    "pools",
]

log = logging.getLogger(__name__)

#: Where a claim (the kernel's argv, environment and directory) is put for the waiter.
CLAIM_FILE = f"{KERNEL_CONNECTION_DIR}/claim.json"
#: What the waiter prints once the kernel application is imported.
READY_MARK = "nbcontainer-pool: ready"

# The waiter runs as `python -c WAITER CLAIM_FILE` in a pool container; standard library
# and ipykernel only. SIGUSR1 (sent after the claim is put in) wakes it at once; the
# one-second timeout makes a lost signal cost a second, not a kernel.
WAITER = r"""
import importlib, json, os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
import ipykernel.kernelapp, ipykernel.ipkernel  # the slow part of a kernel's start, done ahead
# What IPKernelApp.initialize imports on its way (the debugger alone is 0.1 s), when present.
for name in ("ipykernel.debugger", "ipykernel.zmqshell", "IPython.core.history", "pdb",
             "pydoc", "psutil", "nbcontainer_kernel.magics"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
print("@READY@", flush=True)
claim_file = sys.argv[1]
while not os.path.exists(claim_file):
    signal.sigtimedwait({signal.SIGUSR1}, 1.0)
with open(claim_file) as f:
    claim = json.load(f)
os.unlink(claim_file)
os.environ.update(claim["env"])
if claim.get("cwd"):
    os.chdir(claim["cwd"])
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
argv = claim["argv"]
if len(argv) >= 3 and argv[1] == "-m":
    import runpy
    sys.argv = [argv[0]] + argv[3:]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
else:
    os.execvp(argv[0], argv)
""".replace("@READY@", READY_MARK)

# What Python reads from the environment when it starts: fixed by the shape, since a
# waiting interpreter has started already.
_START_ENV_PREFIXES = ("PYTHON", "LD_")
_START_ENV_NAMES = ("PATH", "HOME", "IPYTHONDIR")
# Kept this long after a claim before refilling, so that a new waiter's start (a core for
# half a second) does not compete with the claimed kernel's own.
REFILL_DELAY = 1.0


def kernel_container_name(kernel_id: str) -> str:
    """The name a claimed pool container takes: gc, `docker ps` and re-attach find it by it."""
    return f"nbcontainer-kernel-{kernel_id}"


def kernel_containers(engine: Engine, kernel_id: str, all: bool = True) -> list[Any]:
    """A kernel's container: one started cold carries the kernel's id in a label, one
    claimed from the pool (made before its kernel existed) in its name."""
    by_label = engine.containers({labels.KERNEL_ID: kernel_id}, all=all)
    if by_label:
        return by_label
    claimed = engine.container(kernel_container_name(kernel_id))
    if claimed is None or (not all and claimed.status != "running"):
        return []
    return [claimed]


@dataclass(frozen=True)
class WarmContainer:
    """A pool container handed to a kernel."""

    container_id: str
    name: str
    host_ports: dict[str, int]


def start_env(env: dict[str, str]) -> dict[str, str]:
    """The part of a kernel's environment its interpreter reads at start (part of the shape)."""
    return {
        k: v for k, v in env.items() if k.startswith(_START_ENV_PREFIXES) or k in _START_ENV_NAMES
    }


def launch_shape(image_id: str, python: str, create_kwargs: dict[str, Any]) -> str:
    """A digest of what a container fixes at creation; kernels of one shape share a pool."""
    fixed = {
        k: v
        for k, v in create_kwargs.items()
        if k not in ("name", "labels", "environment", "entrypoint", "command", "working_dir")
    }
    if "ports" in fixed:  # which container ports are published, not at which host ports
        fixed["ports"] = sorted(fixed["ports"])
    fixed["environment"] = start_env(create_kwargs.get("environment") or {})
    text = json.dumps([image_id, python, fixed], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class KernelPool:
    """The waiting containers of one launch shape, owned by this process."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        shape: str,
        image: str,
        image_id: str,
        python: str,
        create_kwargs: dict[str, Any],
        size: int,
        published: list[str],
    ) -> None:
        """`create_kwargs` are a kernel's container arguments (the provisioner's); the
        pool's containers take the shape's part of them. `published` are the container
        ports ('52700/tcp', ...) a kernel needs reachable."""
        self._engine = engine
        self.shape = shape
        self.image = image
        self.image_id = image_id
        self.size = size
        self._published = published
        self._kwargs = self._pool_kwargs(python, create_kwargs)
        self._lock = threading.Lock()
        self._waiting: list[WarmContainer] = []
        self._making = 0
        self._closed = False
        self._timer: threading.Timer | None = None
        self._threads: list[threading.Thread] = []

    def _pool_kwargs(self, python: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: v
            for k, v in kwargs.items()
            if k not in ("name", "labels", "environment", "entrypoint", "command", "working_dir")
        }
        out["detach"] = True
        out["entrypoint"] = [python]
        out["command"] = ["-c", WAITER, CLAIM_FILE]
        out["environment"] = start_env(kwargs.get("environment") or {})
        if "ports" in out:
            out["ports"] = {p: ("127.0.0.1",) for p in out["ports"]}
        return out

    # --------------------------------------------------------------- claim
    def claim(
        self,
        kernel_id: str,
        connection: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        uid: int,
        gid: int,
    ) -> WarmContainer | None:
        """Called by the provisioner's launch_kernel: a waiting container becomes kernel
        `kernel_id`, or None when none is waiting (the caller starts one the usual way).

        The connection file and the claim go in through the Docker API, then SIGUSR1
        wakes the waiter; the container is renamed after the kernel.
        """
        engine = self._engine()
        files = {
            KERNEL_CONNECTION_FILE.lstrip("/"): json.dumps(connection).encode(),
            CLAIM_FILE.lstrip("/"): json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode(),
        }
        while True:
            with self._lock:
                if not self._waiting:
                    return None
                warm = self._waiting.pop(0)
            try:
                engine.put_files(
                    warm.container_id,
                    "/",
                    files,
                    uid=uid,
                    gid=gid,
                    mode=0o600,
                    dirs=[KERNEL_CONNECTION_DIR.lstrip("/")],
                )
                woken = engine.signal(warm.container_id, "SIGUSR1")
                if woken:
                    name = kernel_container_name(kernel_id)
                    engine.rename(warm.container_id, name)
                    return WarmContainer(warm.container_id, name, warm.host_ports)
            except NbcontainerError:
                pass  # removed under us: the next one, or a cold start
            except BaseException:
                engine.remove(warm.container_id)
                raise
            # It died while waiting (its files go with it): try the next one.
            engine.remove(warm.container_id)

    # -------------------------------------------------------------- refill
    def fill_later(self, delay: float = REFILL_DELAY) -> None:
        """Refill to `size` after `delay` seconds, in the background (never on a kernel's
        start path)."""
        with self._lock:
            if self._closed or self._timer is not None:
                return
            if len(self._waiting) + self._making >= self.size:
                return
            self._timer = threading.Timer(delay, self._fill_from_timer)
            self._timer.daemon = True
            self._timer.start()

    def _fill_from_timer(self) -> None:
        with self._lock:
            self._timer = None
        self.fill()

    def fill(self) -> None:
        """Start waiting containers until `size` wait or are being made (called from a
        timer thread; safe to call from several)."""
        while True:
            with self._lock:
                if self._closed or len(self._waiting) + self._making >= self.size:
                    return
                self._making += 1
                self._threads.append(threading.current_thread())
            try:
                warm = self._make_one()
            except NbcontainerError as exc:  # the next kernel starts cold; say why once
                log.warning("nbcontainer: could not start a pool container: %s", exc)
                return
            finally:
                with self._lock:
                    self._making -= 1
                    self._threads.remove(threading.current_thread())
            with self._lock:
                if not self._closed:
                    self._waiting.append(warm)
                    continue
            self._engine().remove(warm.container_id)  # closed while it was being made
            return

    def _make_one(self) -> WarmContainer:
        engine = self._engine()
        container = engine.create_container(
            self.image,
            name=f"nbcontainer-pool-{self.shape[:8]}-{secrets.token_hex(3)}",
            labels=labels.container_labels(
                labels.ROLE_KERNEL_POOL, image=self.image, pool_shape=self.shape
            ),
            **self._kwargs,
        )
        try:
            engine.start(container)
            info = engine.inspect(container.id) or {}
            ports = _published(info, self._published)
        except BaseException:
            engine.remove(container.id)
            raise
        return WarmContainer(container.id, container.name, ports)

    # ------------------------------------------------------------ queries
    def waiting(self) -> list[WarmContainer]:
        with self._lock:
            return list(self._waiting)

    def wait_ready(self, timeout: float = 60) -> bool:
        """Block until `size` containers wait with the kernel application imported (for
        benches and tests; kernels never wait on this)."""
        deadline = time.monotonic() + timeout
        engine = self._engine()
        while time.monotonic() < deadline:
            waiting = self.waiting()
            if len(waiting) >= self.size and all(
                READY_MARK in "\n".join(engine.logs_tail(w.container_id, 5)) for w in waiting
            ):
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------- closing
    def close(self, timeout: float = 30) -> int:
        """Remove every waiting container (called at exit and when the shape goes stale);
        returns how many. Containers being made are removed by their maker."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            waiting, self._waiting = self._waiting, []
            makers = list(self._threads)
        for t in makers:
            if t is not threading.current_thread():
                t.join(timeout)
        engine = self._engine()
        for warm in waiting:
            engine.remove(warm.container_id)
        return len(waiting)


def _published(info: dict[str, Any], ports: list[str]) -> dict[str, int]:
    """Container port ('52700/tcp') -> the host port Docker published it on (127.0.0.1)."""
    bound = (info.get("NetworkSettings") or {}).get("Ports") or {}
    out = {}
    for port in ports:
        host = next(
            (b for b in bound.get(port) or [] if b.get("HostIp") in ("127.0.0.1", "")), None
        )
        if host is None:
            raise NbcontainerError(f"Docker did not publish port {port} of a pool container.")
        out[port] = int(host["HostPort"])
    return out


_pools: dict[str, KernelPool] = {}
_pools_lock = threading.Lock()


def pool_for(
    engine: Callable[[], Engine],
    image: str,
    image_id: str,
    python: str,
    create_kwargs: dict[str, Any],
    size: int,
) -> KernelPool:
    """This process's pool for the launch shape of `create_kwargs` (made on first use).

    A pool of the same image name made from another image id (the tag moved) is closed.
    """
    shape = launch_shape(image_id, python, create_kwargs)
    stale: list[KernelPool] = []
    with _pools_lock:
        pool = _pools.get(shape)
        if pool is None:
            for key, other in list(_pools.items()):
                if other.image == image and other.image_id != image_id:
                    stale.append(_pools.pop(key))
            pool = KernelPool(
                engine,
                shape,
                image,
                image_id,
                python,
                create_kwargs,
                size,
                sorted(create_kwargs.get("ports") or {}),
            )
            _pools[shape] = pool
        pool.size = size
    for old in stale:
        threading.Thread(target=old.close, daemon=True).start()
    return pool


def pools() -> list[KernelPool]:
    with _pools_lock:
        return list(_pools.values())


@atexit.register
def close_all() -> int:
    """Remove every waiting container of this process (at exit; tests call it too)."""
    with _pools_lock:
        all_pools = list(_pools.values())
        _pools.clear()
    removed = 0
    for pool in all_pools:
        try:
            removed += pool.close()
        except NbcontainerError as exc:  # no daemon at exit: gc removes them later
            log.warning("nbcontainer: could not remove pool containers: %s", exc)
    return removed

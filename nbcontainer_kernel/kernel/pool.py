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

import json
from collections.abc import Callable
from typing import Any

from ..docker import labels, warm
from ..docker.archives import make_tar
from ..docker.engine import Engine
from ..docker.labels import kernel_container_name
from ..docker.warm import READY_MARK, WarmContainer, WarmPool
from ..runtime.contract import KERNEL_CONNECTION_DIR, KERNEL_CONNECTION_FILE

__all__ = [
    "CLAIM_FILE",
    "KernelPool",
    "WarmContainer",
    "close_all",
    "launch_shape",
    "pool_for",
    "pools",
]

#: Where a claim (the kernel's argv, environment and directory) is put for the waiter.
CLAIM_FILE = f"{KERNEL_CONNECTION_DIR}/claim.json"

# The waiter runs as `python -c WAITER CLAIM_FILE` in a pool container; standard library
# and ipykernel only. SIGWINCH (sent after the claim is put in) wakes it at once. Its
# default action is to be ignored, so one that comes before the waiter blocks it (a
# container claimed as it starts) is harmless: the waiter looks for the claim before it
# waits. The one-second timeout bounds what a lost signal could cost.
WAITER = r"""
import contextlib, importlib, json, os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
import ipykernel.kernelapp, ipykernel.ipkernel  # the slow part of a kernel's start, done ahead
# What IPKernelApp.initialize imports on its way (the debugger alone is 0.1 s), when the
# image has it: one it lacks, or that fails, is the kernel's to report when it starts. The
# extension registers every backend with %config at load: their modules too (57 ms).
for name in ("ipykernel.debugger", "ipykernel.zmqshell", "IPython.core.history", "pdb",
             "pydoc", "psutil", "nbcontainer_kernel.magics", "nbcontainer_kernel.backends.local",
             "nbcontainer_kernel.backends.batch", "nbcontainer_kernel.backends.sagemaker_local"):
    with contextlib.suppress(Exception):
        importlib.import_module(name)
print("@READY@", flush=True)
claim_file = sys.argv[1]
while not os.path.exists(claim_file):
    signal.sigtimedwait({signal.SIGWINCH}, 1.0)
with open(claim_file) as f:
    claim = json.load(f)
os.unlink(claim_file)
os.environ.update(claim["env"])
if claim.get("cwd"):
    os.chdir(claim["cwd"])
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGWINCH})
argv = claim["argv"]
if len(argv) >= 3 and argv[1] == "-m":
    import runpy
    sys.argv = [argv[0]] + argv[3:]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
else:
    os.execvp(argv[0], argv)
""".replace("@READY@", READY_MARK)

# A kernel's container arguments that are its own, not its shape's.
_PER_KERNEL = ("name", "labels", "environment", "entrypoint", "command", "working_dir")
# What Python reads from the environment when it starts: fixed by the shape, since a
# waiting interpreter has started already.
_START_ENV_PREFIXES = ("PYTHON", "LD_")
_START_ENV_NAMES = ("PATH", "HOME", "IPYTHONDIR")
# Kept this long after a claim before refilling, so that a new waiter's start (a core for
# half a second) does not compete with the claimed kernel's own.
REFILL_DELAY = 1.0


def start_env(env: dict[str, str]) -> dict[str, str]:
    """The part of a kernel's environment its interpreter reads at start (part of the shape)."""
    return {
        k: v for k, v in env.items() if k.startswith(_START_ENV_PREFIXES) or k in _START_ENV_NAMES
    }


def launch_shape(image_id: str, python: str, create_kwargs: dict[str, Any], where: str = "") -> str:
    """A digest of what a container fixes at creation; kernels of one shape share a pool."""
    fixed = {k: v for k, v in create_kwargs.items() if k not in _PER_KERNEL}
    if "ports" in fixed:  # which container ports are published, not at which host ports
        fixed["ports"] = sorted(fixed["ports"])
    fixed["environment"] = start_env(create_kwargs.get("environment") or {})
    # `where`: the engine (a remote host's), so that each host has pools of its own.
    return warm.shape_digest(image_id, python, fixed, *([where] if where else []))


class KernelPool(WarmPool):
    """The waiting kernel containers of one launch shape, owned by this process."""

    def claim_kernel(
        self,
        kernel_id: str,
        connection: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        uid: int,
        gid: int,
        prepare: Callable[[str], None] | None = None,
    ) -> WarmContainer | None:
        """Called by the provisioner's launch_kernel: a waiting container becomes kernel
        `kernel_id`, or None when none is waiting (the caller starts one the usual way).

        The connection file and the claim (owned by the kernel's user, 0600) go in
        through the Docker API, then SIGWINCH wakes the waiter; the container is renamed
        after the kernel.
        """
        archive = make_tar(
            {
                KERNEL_CONNECTION_FILE.lstrip("/"): json.dumps(connection).encode(),
                CLAIM_FILE.lstrip("/"): json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode(),
            },
            uid=uid,
            gid=gid,
            mode=0o600,
            dirs=[KERNEL_CONNECTION_DIR.lstrip("/")],
        )
        return self.claim(lambda: archive, kernel_container_name(kernel_id), prepare=prepare)

    def fill_later(self, delay: float = REFILL_DELAY) -> None:
        super().fill_later(delay)


def _pool_kwargs(python: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A waiting container's arguments: the kernel's, less what is per kernel."""
    out = {k: v for k, v in kwargs.items() if k not in _PER_KERNEL}
    out["entrypoint"] = [python]
    out["command"] = ["-c", WAITER, CLAIM_FILE]
    out["environment"] = start_env(kwargs.get("environment") or {})
    if "ports" in out:
        out["ports"] = {p: ("127.0.0.1",) for p in out["ports"]}
    return out


def pool_for(
    engine: Callable[[], Engine],
    image: str,
    image_id: str,
    python: str,
    create_kwargs: dict[str, Any],
    size: int,
    where: str = "",
) -> KernelPool:
    """This process's kernel pool for the launch shape of `create_kwargs` (made on first
    use); a kernel pool of the same image name made from another image id is closed."""
    shape = launch_shape(image_id, python, create_kwargs, where)

    def make() -> KernelPool:
        return KernelPool(
            engine,
            role=labels.ROLE_KERNEL_POOL,
            shape=shape,
            image=image,
            image_id=image_id,
            create_kwargs=_pool_kwargs(python, create_kwargs),
            size=size,
            published=sorted(create_kwargs.get("ports") or {}),
            claim_file=CLAIM_FILE,
        )

    pool = warm.pool_for(shape, make)
    assert isinstance(pool, KernelPool)
    pool.size = size
    return pool


def pools() -> list[KernelPool]:
    """This process's kernel pools."""
    return [p for p in warm.pools(labels.ROLE_KERNEL_POOL) if isinstance(p, KernelPool)]


close_all = warm.close_all

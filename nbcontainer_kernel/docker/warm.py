"""Warm pools: containers started ahead of time, each running a waiter that has done the
slow imports and waits to be handed its work.

Two kinds use it: kernels (:mod:`nbcontainer_kernel.kernel.pool`: a waiter that becomes
an IPython kernel) and ``%%remote_run --local`` runs (:mod:`nbcontainer_kernel.backends.
local`: a waiter that becomes the runner). Whatever makes a container one kernel's or one
run's (keys, environment, the snapshot) arrives only when it is claimed, as one archive
through the Docker API, followed by SIGWINCH (ignored by default, so harmless to a
waiter that has not started waiting yet: it looks for its claim before it waits); the
container is then renamed after its kernel or run.

A pool serves one *shape*: what a container fixes when it is made (image id, user,
mounts, resources, network, command). It belongs to the process that made it: its
containers carry that process as their owner (labels), claiming is lock-protected in it,
and its waiting containers are removed when the process exits (atexit), or by ``nbcontainer
gc`` and the next kernel start when the process died.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..runtime.contract import POOL_READY_MARK
from ..runtime.errors import NbcontainerError, WaiterDied
from . import labels

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "READY_MARK",
    "WarmContainer",
    "WarmPool",
    "close_all",
    "pool_for",
    "pools",
    "reaper",
    "shape_digest",
]

log = logging.getLogger(__name__)

READY_MARK = POOL_READY_MARK


@dataclass(frozen=True)
class WarmContainer:
    """A pool container: waiting, or handed to a kernel or a run."""

    container_id: str
    name: str
    host_ports: dict[str, int]


class WarmPool:
    """The waiting containers of one shape, owned by this process."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        *,
        role: str,
        shape: str,
        image: str,
        image_id: str,
        create_kwargs: dict[str, Any],
        size: int,
        published: list[str] | None = None,
        name_prefix: str = "nbcontainer-pool",
        claim_file: str = "",
    ) -> None:
        """`create_kwargs` make one waiting container (its waiter command included);
        `published` are the container ports ('52700/tcp', ...) whose host ports a claim
        needs. `engine` is called when the daemon is needed (it may be replaced in tests)."""
        self._engine = engine
        self.role = role
        self.shape = shape
        self.image = image
        self.image_id = image_id
        self.size = size
        self._kwargs = {**create_kwargs, "detach": True}
        self._published = list(published or [])
        self._name_prefix = name_prefix
        # Where a claim lands in the container; its waiter removes it once it has taken it,
        # so a container without it took its claim (whatever happened to the signal).
        self.claim_file = claim_file
        self._lock = threading.Lock()
        self._waiting: list[WarmContainer] = []
        self._making = 0
        self._closed = False
        self._timer: threading.Timer | None = None
        self._threads: list[threading.Thread] = []

    # --------------------------------------------------------------- claim
    def claim(
        self,
        archive: Callable[[], bytes | IO[bytes]],
        name: str,
        *,
        make: bool = False,
        prepare: Callable[[str], None] | None = None,
    ) -> WarmContainer | None:
        """Hand a waiting container its work: `archive()` (a tar, extracted at /) goes in
        through the Docker API, SIGWINCH wakes the waiter, and the container takes `name`.
        None when none waits (with `make`, one is made now instead). A container that died
        waiting is removed and the next one tried. `prepare(container_id)` runs first (a
        remote kernel's working directory is seeded so)."""
        engine = self._engine()
        while True:
            with self._lock:
                warm = self._waiting.pop(0) if self._waiting else None
            made = warm is None
            if warm is None:
                if not make:
                    return None
                warm = self.make()
            try:
                if prepare is not None:
                    prepare(warm.container_id)
                engine.put_archive(warm.container_id, "/", archive())
                if engine.signal(warm.container_id, "SIGWINCH") or self._taken(
                    engine, warm.container_id
                ):
                    engine.rename(warm.container_id, name)
                    return WarmContainer(warm.container_id, name, warm.host_ports)
            except NbcontainerError:
                if made:
                    raise
            except BaseException:
                engine.remove(warm.container_id)
                raise
            if made:  # made for this claim and already gone: another would go the same way
                tail = engine.logs_tail(warm.container_id, 20)
                engine.remove(warm.container_id)
                raise WaiterDied(self.image, tail)
            engine.remove(warm.container_id)  # it died waiting (its files go with it)

    def _taken(self, engine: Engine, container_id: str) -> bool:
        """A container the signal could not reach (not running): did its waiter take the
        claim first? A waiter looks for its claim before it waits, so a fast one finds it,
        does its work and ends before the signal comes: that is a claimed container whose
        work is done (its exit line, code and outputs are in it), not a dead waiter."""
        return bool(self.claim_file) and not engine.path_exists(container_id, self.claim_file)

    # -------------------------------------------------------------- refill
    def fill_later(self, delay: float = 1.0) -> None:
        """Refill to `size` after `delay` seconds, in the background (never on the path
        of the kernel or run that just claimed)."""
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
                warm = self.make()
            except NbcontainerError as exc:  # the next start goes without; say why
                log.warning("nbcontainer: could not start a pool container: %s", exc)
                return
            finally:
                with self._lock:
                    self._making -= 1
                    self._threads.remove(threading.current_thread())
            with self._lock:
                if not self._closed and len(self._waiting) < self.size:
                    self._waiting.append(warm)
                    continue
            # Closed, or shrunk, while it was being made.
            self._engine().remove(warm.container_id)
            return

    def make(self) -> WarmContainer:
        """Create and start one waiting container (not added to the pool)."""
        engine = self._engine()
        container = engine.create_container(
            self.image,
            name=f"{self._name_prefix}-{self.shape[:8]}-{secrets.token_hex(3)}",
            labels=labels.container_labels(self.role, image=self.image, pool_shape=self.shape),
            **self._kwargs,
        )
        try:
            engine.start(container)
            ports = {}
            if self._published:
                ports = _published(engine.inspect(container.id) or {}, self._published)
        except BaseException:
            engine.remove(container.id)
            raise
        return WarmContainer(container.id, container.name, ports)

    def shrink(self, size: int) -> int:
        """Keep at most `size` containers waiting from now on (a sweep that needed more
        has ended); the others are removed. Returns how many went."""
        with self._lock:
            self.size = size
            extra, self._waiting = self._waiting[size:], self._waiting[:size]
        engine = self._engine()
        for warm in extra:
            engine.remove(warm.container_id)
        return len(extra)

    # ------------------------------------------------------------ queries
    def waiting(self) -> list[WarmContainer]:
        with self._lock:
            return list(self._waiting)

    def wait_ready(self, timeout: float = 60) -> bool:
        """Block until `size` containers wait with their imports done (benches and tests;
        nothing else waits on this)."""
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
        """Remove every waiting container (at exit, and when the shape goes stale);
        returns how many. One being made is removed by its maker."""
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


class _Reaper:
    """Removes containers in the background: a finished run's container goes after its
    results are in, off the cell's path (a removal takes Docker a tenth of a second).
    What is still queued at exit is removed then."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Engine], str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, engine: Callable[[], Engine], container_id: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="nbcontainer-reaper", daemon=True
                )
                self._thread.start()
        self._queue.put((engine, container_id))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                engine, container_id = item
                engine().remove(container_id)
            except NbcontainerError as exc:  # gc removes it later; say so
                log.warning("nbcontainer: could not remove a container: %s", exc)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued removal is done (at exit; tests)."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if running:
            self._queue.join()


reaper = _Reaper()


def shape_digest(*parts: Any) -> str:
    """A shape's name: a digest of what its containers fix at creation (JSON, keys sorted)."""
    text = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_pools: dict[str, WarmPool] = {}
_pools_lock = threading.Lock()


def pool_for(shape: str, make: Callable[[], WarmPool]) -> WarmPool:
    """This process's pool of `shape`, made by `make()` on first use. A pool of the same
    role and image name made from another image id (the tag moved) is closed."""
    stale: list[WarmPool] = []
    with _pools_lock:
        pool = _pools.get(shape)
        if pool is None:
            pool = make()
            for key, other in list(_pools.items()):
                if (other.role, other.image) == (pool.role, pool.image) and (
                    other.image_id != pool.image_id
                ):
                    stale.append(_pools.pop(key))
            _pools[shape] = pool
    for old in stale:
        threading.Thread(target=old.close, daemon=True).start()
    return pool


def pools(role: str | None = None) -> list[WarmPool]:
    with _pools_lock:
        return [p for p in _pools.values() if role is None or p.role == role]


@atexit.register
def close_all() -> int:
    """Remove every waiting container of this process, and finish queued removals (at
    exit; tests call it too)."""
    reaper.drain()
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

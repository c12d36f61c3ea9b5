"""The local backend: run images in Docker on this machine (or DOCKER_HOST).

Files go in and out through the Docker API (get_archive), never bind mounts,
so it works inside a containerized kernel too. Logs are followed as they are
written; cancel kills and cleanup removes the container.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from traitlets import Int

from ..config import max_result_bytes
from ..docker import labels, warm
from ..docker.archives import context_member, extract_tar
from ..docker.options import resource_kwargs
from ..docker.warm import WarmPool
from ..runtime.contract import EXIT_MARK_ENV, ML_ROOT, POOL_READY_MARK, RUN_CLAIM_FILE, SNAPSHOT_DIR
from ..runtime.errors import InvalidOption
from ..runtime.main import WAIT_FLAG
from ..runtime.params import params_env
from .base import Backend, Job, Phase, RunSpec, write_log

if TYPE_CHECKING:
    from ..docker.engine import Engine


def get_engine() -> Engine:
    """The process's engine, imported when a run first needs Docker (docker-py is the
    slow part of importing this module, which %config reads for its settings)."""
    from ..docker.engine import get_engine as shared

    return shared()


__all__ = ["LocalBackend", "kernel_share", "run_containers", "run_pool", "snapshot_archive"]


class _LogFollower:
    """Collects a container's log lines in a thread while it runs (a warm container's
    ready line, printed before it was a run's, is not one of them)."""

    def __init__(self, engine: Engine, container_id: str, exit_mark: str | None = None) -> None:
        self.lines: list[str] = []
        self.done = threading.Event()  # the log ended (or the runner said it ended)
        self.exit_code: int | None = None  # what the runner's exit line said
        self._exit_line = (
            re.compile(rf"\[nbcontainer\] exit (\d+) {re.escape(exit_mark)}") if exit_mark else None
        )
        self._thread = threading.Thread(
            target=self._follow, args=(engine, container_id), daemon=True
        )
        self._thread.start()

    def _follow(self, engine: Engine, container_id: str) -> None:
        pending = b""
        for chunk in engine.follow_logs(container_id):  # ends when the container is gone
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                ended = self._exit_line.fullmatch(line) if self._exit_line else None
                if ended:
                    self.exit_code = int(ended.group(1))
                    self.done.set()
                elif line != POOL_READY_MARK:
                    self.lines.append(line)
        if pending:
            self.lines.append(pending.decode("utf-8", "replace"))
        self.done.set()

    def wait(self, timeout: float = 10) -> None:
        self.done.wait(timeout)


class LocalBackend(Backend):
    name = "local"
    needs_push = False
    runs_snapshots = True

    run_pool_size = Int(
        1,
        min=0,
        max=16,
        help="Runner containers of --local kept started and waiting (env "
        "NBCONTAINER_RUN_POOL_SIZE): a --local run copies its snapshot into one and builds no "
        "image (--rerun makes one when it is needed). 0 builds a run image for every run.",
    ).tag(config=True, env="NBCONTAINER_RUN_POOL_SIZE")

    def __init__(self, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = engine
        self._followers: dict[str, _LogFollower] = {}
        self._pool_of: dict[str, WarmPool] = {}  # container id -> the pool it came from
        self._running: dict[str, bool] = {}  # container id -> running at the last status
        self._said_running: set[str] = set()  # containers whose RUNNING a status reported
        self._pools: set[WarmPool] = set()  # the runner pools this backend has used
        self._sharing: set[str] = set()  # containers holding a share of the kernel's limits
        # Pool sizes the runs in flight asked for (a sweep's children: as many as run at
        # once), by container: a pool keeps the largest, and shrinks as they end.
        self._wanted: dict[str, int] = {}
        self._wanted_lock = threading.Lock()

    def _resources(self, spec: RunSpec) -> tuple[dict[str, Any], bool]:
        """A run's limits, and whether runner containers may wait for runs.

        In a guarded kernel with memory or CPU limits, the guard keeps all the kernel's
        containers within them together: a run that asks for none gets the kernel's
        limits shared among the runs that go at once (one, or a sweep's parallel
        children), and no container waits between runs (it would hold the share)."""
        memory, nano_cpus = kernel_share()
        if memory is None and nano_cpus is None:
            return resource_kwargs(cpus=spec.cpus, memory=spec.memory, gpus=spec.gpus), True
        at_once = max(1, _pool_size(spec))
        return (
            resource_kwargs(
                cpus=spec.cpus or (nano_cpus / at_once / 1e9 if nano_cpus else None),
                memory=spec.memory or (str(memory // at_once) if memory else None),
                gpus=spec.gpus,
            ),
            False,
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine()
        return self._engine

    def submit(self, spec: RunSpec) -> Job:
        if spec.snapshot is not None:
            return self._submit_snapshot(spec)
        env = dict(spec.env)
        env.update(params_env(spec.params))
        run_labels = {
            **labels.container_labels(labels.ROLE_RUN, image=spec.image),
            labels.RUN_ID: spec.run_id,
            **spec.labels,
        }
        if spec.detached:
            run_labels[labels.DETACHED] = "true"
        kwargs: dict[str, Any] = {
            "command": list(spec.command),
            "environment": env,
            "labels": run_labels,
            "detach": True,
            "init": True,
            "name": f"nbcontainer-run-{spec.run_id}-{labels.now_iso()[11:19].replace(':', '')}",
        }
        resources, may_wait = self._resources(spec)
        kwargs.update(resources)
        container = self.engine.create_container(spec.image, **kwargs)
        if not may_wait:
            self._sharing.add(container.id)
        try:
            self.engine.start(container)
            self._followers[container.id] = _LogFollower(self.engine, container.id)
            return Job(
                self.name,
                spec.run_id,
                {"container_id": container.id, "container_name": container.name},
            )
        except BaseException:  # Ctrl-C included: a half-submitted run leaves nothing behind
            self._followers.pop(container.id, None)
            self.engine.remove(container.id)
            raise

    def _submit_snapshot(self, spec: RunSpec) -> Job:
        """Run a snapshot in a warm container of its runtime image: no image is built. The
        snapshot (laid out as the run image's layer would hold it) and a claim with the
        run-time environment go in as one archive; then the runner, its imports done,
        runs it."""
        assert spec.snapshot is not None
        mark = secrets.token_hex(16)
        env = {**spec.env, EXIT_MARK_ENV: mark}
        env.update(params_env(spec.params))
        resources, may_wait = self._resources(spec)
        size = _pool_size(spec) if may_wait else 0  # else one is made per run, none waits
        pool = run_pool(self.engine, spec.image, resources, max(size, self._size_wanted()))
        self._pools.add(pool)
        name = f"nbcontainer-run-{spec.run_id}-{labels.now_iso()[11:19].replace(':', '')}"
        with snapshot_archive(Path(spec.snapshot), {"argv": list(spec.command), "env": env}) as f:

            def archive() -> IO[bytes]:
                f.seek(0)
                return f

            claimed = pool.claim(archive, name, make=True)
        assert claimed is not None  # make=True makes one when none waits
        if not may_wait:
            self._sharing.add(claimed.container_id)
        with self._wanted_lock:
            self._wanted[claimed.container_id] = size
        try:
            self._followers[claimed.container_id] = _LogFollower(
                self.engine, claimed.container_id, mark
            )
            self._pool_of[claimed.container_id] = pool
        except BaseException:
            self.engine.remove(claimed.container_id)
            raise
        return Job(
            self.name,
            spec.run_id,
            {"container_id": claimed.container_id, "container_name": claimed.name, "warm": True},
        )

    def attach(self, job: Job) -> None:
        """Follow a job submitted by an earlier process (after a kernel restart)."""
        cid = job.handle["container_id"]
        container = self.engine.container(cid)
        if container is not None and cid not in self._followers:
            self._followers[cid] = _LogFollower(self.engine, cid)

    def poll_interval(self, waited: float) -> float:
        return 0.0  # status() itself waits, on the log stream's end (the container's exit)

    def status(self, job: Job) -> tuple[Phase, int | None]:
        """The run's phase. A run whose container ran passes RUNNING once before it ends,
        however fast it was (its ledger row then has a running time, as every run's does)."""
        cid = job.handle["container_id"]
        phase, code = self._phase(cid)
        if phase is Phase.RUNNING:
            self._said_running.add(cid)
        elif phase in (Phase.SUCCEEDED, Phase.FAILED) and cid not in self._said_running:
            self._said_running.add(cid)
            if code is not None:  # it ran (a container that is gone says nothing)
                return Phase.RUNNING, None
        return phase, code

    def _phase(self, cid: str) -> tuple[Phase, int | None]:
        follower = self._followers.get(cid)
        if self._running.get(cid):  # wait here: the run's end is seen at once
            if follower is not None:
                follower.done.wait(0.1)
            else:
                time.sleep(0.1)
        if follower is not None and follower.exit_code is not None:
            # The runner said its outputs are sealed and it exits: no need to wait for
            # Docker to see the container stop.
            said = follower.exit_code
            return (Phase.SUCCEEDED if said == 0 else Phase.FAILED), said
        info = self.engine.inspect(cid)
        if info is None:
            return Phase.FAILED, None
        state = info.get("State") or {}
        self._running[cid] = bool(state.get("Running"))
        if state.get("Running"):
            return Phase.RUNNING, None
        if state.get("Status") == "created":
            return Phase.STARTING, None
        code = state.get("ExitCode")
        if follower is not None:
            follower.wait()
        return (Phase.SUCCEEDED if code == 0 else Phase.FAILED), code

    def logs(self, job: Job, since: int = 0) -> list[str]:
        follower = self._followers.get(job.handle["container_id"])
        if follower is None:
            return self.engine.logs_tail(job.handle["container_id"], "all")[since:]
        return follower.lines[since:]

    def end_reason(self, job: Job) -> str | None:
        info = self.engine.inspect(job.handle["container_id"]) or {}
        if (info.get("State") or {}).get("OOMKilled"):
            return "OOMKilled: it exceeded its memory limit (--memory)"
        return None

    def cancel(self, job: Job) -> None:
        self.engine.signal(job.handle["container_id"], "SIGKILL")

    def fetch_results(self, job: Job, dest: Path) -> None:
        """Stream /opt/ml/model and /opt/ml/output out of the container (one archive of
        /opt/ml, capped and checked; the rest of it is not unpacked)."""
        dest.mkdir(parents=True, exist_ok=True)
        stream = self.engine.get_archive(job.handle["container_id"], ML_ROOT)
        if stream is not None:
            extract_tar(
                stream,
                dest,
                max_bytes=max_result_bytes(),
                within=ML_ROOT.rsplit("/", 1)[-1],
                only=("model", "output"),
            )
        write_log(dest, self.logs(job, 0))

    def cleanup(self, job: Job) -> None:
        cid = job.handle["container_id"]
        follower = self._followers.pop(cid, None)
        self._running.pop(cid, None)
        self._said_running.discard(cid)
        pool = self._pool_of.pop(cid, None)
        shares_limits = cid in self._sharing
        self._sharing.discard(cid)
        with self._wanted_lock:
            self._wanted.pop(cid, None)
        target = max(self._size_wanted(), self._configured_size())
        if pool is not None and pool.size > target:
            pool.shrink(target)  # a sweep that needed more has ended
        if pool is None or follower is None or follower.exit_code != 0 or shares_limits:
            # Cancelled, timed out or failed: gone before the cell ends. And in a kernel whose
            # limits its runs share: gone before the next run asks for its share (a container
            # that said its exit line may still be stopping).
            self.engine.remove(cid)
        else:
            # A run that succeeded and whose results are in: removed in the background,
            # off the cell's path.
            warm.reaper.remove(get_engine, cid)
        if pool is not None and pool.size > 0:
            pool.fill_later(0.0)  # the next run finds a container waiting

    def _configured_size(self) -> int:
        try:
            return int(self.run_pool_size)
        except InvalidOption:  # a bad value in the environment: the run that reads it says so
            return 1

    def _size_wanted(self) -> int:
        """The largest pool size a run in flight asked for (0 with none in flight)."""
        with self._wanted_lock:
            return max(self._wanted.values(), default=0)


def _pool_size(spec: RunSpec) -> int:
    return int(spec.settings.get("run_pool_size", 1) or 0)


def kernel_share() -> tuple[int | None, int | None]:
    """This kernel's own memory (bytes) and CPU (nano-CPUs) limits when it reaches Docker
    through the guard, which holds all its containers within them together; None each
    outside a guarded kernel or without a limit. Read from the kernel's cgroup (v2, else
    v1), as the host set it."""
    if os.environ.get("NBCONTAINER_DOCKER_ACCESS") != "guarded":
        return None, None
    memory = _cgroup_number("memory.max") or _cgroup_number("memory/memory.limit_in_bytes")
    if memory is not None and memory >= 1 << 60:  # v1's "unlimited"
        memory = None
    nano = None
    cpu_max = _cgroup_text("cpu.max").split()
    if len(cpu_max) == 2 and cpu_max[0].isdigit():
        nano = int(int(cpu_max[0]) * 1e9 / int(cpu_max[1]))
    else:
        quota = _cgroup_number("cpu/cpu.cfs_quota_us")
        period = _cgroup_number("cpu/cpu.cfs_period_us")
        if quota and quota > 0 and period:
            nano = int(quota * 1e9 / period)
    return memory, nano


def _cgroup_text(name: str) -> str:
    try:
        return Path("/sys/fs/cgroup", name).read_text().strip()
    except OSError:
        return ""


def _cgroup_number(name: str) -> int | None:
    text = _cgroup_text(name)
    return int(text) if text.lstrip("-").isdigit() else None


def run_containers(engine: Engine, run_id: str) -> list[Any]:
    """A --local run's containers: one made for the run carries its id in a label, a warm
    one (made before the run) in its name."""
    named = re.compile(rf"nbcontainer-run-{re.escape(run_id)}-\d{{6}}")
    return engine.containers({labels.RUN_ID: run_id}) + [
        c for c in engine.containers({labels.ROLE: labels.ROLE_RUN_POOL}) if named.fullmatch(c.name)
    ]


def run_pool(engine: Engine, image: str, resources: dict[str, Any], size: int) -> WarmPool:
    """This process's pool of runner containers for a runtime image and the resources
    runs get (limits are fixed when a container is made)."""
    image_id = engine.get_image(image).id
    kwargs: dict[str, Any] = {
        "command": [WAIT_FLAG, RUN_CLAIM_FILE],  # the image's entry point is the runner
        "init": True,
        **resources,
    }
    shape = warm.shape_digest("run", image_id, kwargs)

    def make() -> WarmPool:
        return WarmPool(
            get_engine,
            role=labels.ROLE_RUN_POOL,
            shape=shape,
            image=image,
            image_id=image_id,
            create_kwargs=kwargs,
            size=size,
            name_prefix="nbcontainer-runpool",
            claim_file=RUN_CLAIM_FILE,
        )

    pool = warm.pool_for(shape, make)
    pool.size = size
    return pool


@contextlib.contextmanager
def snapshot_archive(directory: Path, claim: dict[str, Any]) -> Iterator[IO[bytes]]:
    """A tar (in a temporary file: a snapshot may be gigabytes) holding the snapshot under
    SNAPSHOT_DIR with the members a run image's COPY would give it (root's, 0644/0755), and
    the claim (0600) at RUN_CLAIM_FILE."""
    with tempfile.TemporaryFile(prefix="nbcontainer-snapshot-") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            tar.add(directory, arcname=SNAPSHOT_DIR.lstrip("/"), filter=context_member)
            data = json.dumps(claim).encode()
            info = tarfile.TarInfo(RUN_CLAIM_FILE.lstrip("/"))
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        f.seek(0)
        yield f

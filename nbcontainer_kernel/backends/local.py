"""The local backend: run images in Docker on this machine (or DOCKER_HOST).

Files go in and out through the Docker API (get_archive), never bind mounts,
so it works inside a containerized kernel too. Logs are followed as they are
written; cancel kills and cleanup removes the container.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from .. import labels
from ..config import max_result_bytes
from ..engine import Engine, extract_tar, get_engine
from ..kernel.options import resource_kwargs
from .base import Backend, Job, Phase, RunSpec, write_log

__all__ = ["LocalBackend"]


class _LogFollower:
    """Collects a container's log lines in a thread while it runs."""

    def __init__(self, engine: Engine, container_id: str) -> None:
        self.lines: list[str] = []
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, args=(engine, container_id), daemon=True
        )
        self._thread.start()

    def _follow(self, engine: Engine, container_id: str) -> None:
        pending = b""
        for chunk in engine.follow_logs(container_id):  # ends when the container is gone
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(raw.decode("utf-8", "replace") for raw in complete)
        if pending:
            self.lines.append(pending.decode("utf-8", "replace"))
        self.done.set()

    def wait(self, timeout: float = 10) -> None:
        self.done.wait(timeout)


class LocalBackend(Backend):
    name = "local"
    needs_push = False

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._followers: dict[str, _LogFollower] = {}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine()
        return self._engine

    def submit(self, spec: RunSpec) -> Job:
        env = dict(spec.env)
        if spec.params:
            env["NBCONTAINER_PARAMS"] = json.dumps(spec.params, default=str)
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
        kwargs.update(resource_kwargs(cpus=spec.cpus, memory=spec.memory, gpus=spec.gpus))
        container = self.engine.create_container(spec.image, **kwargs)
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

    def attach(self, job: Job) -> None:
        """Follow a job submitted by an earlier process (after a kernel restart)."""
        cid = job.handle["container_id"]
        container = self.engine.container(cid)
        if container is not None and cid not in self._followers:
            self._followers[cid] = _LogFollower(self.engine, cid)

    def status(self, job: Job) -> tuple[Phase, int | None]:
        info = self.engine.inspect(job.handle["container_id"])
        if info is None:
            return Phase.FAILED, None
        state = info.get("State") or {}
        if state.get("Running"):
            return Phase.RUNNING, None
        if state.get("Status") == "created":
            return Phase.STARTING, None
        code = state.get("ExitCode")
        follower = self._followers.get(job.handle["container_id"])
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
        """Stream /opt/ml/model and /opt/ml/output out of the container (capped, checked)."""
        dest.mkdir(parents=True, exist_ok=True)
        budget = max_result_bytes()
        for src in ("/opt/ml/model", "/opt/ml/output"):
            stream = self.engine.get_archive(job.handle["container_id"], src)
            if stream is not None:
                budget -= extract_tar(stream, dest, max_bytes=budget)
        write_log(dest, self.logs(job, 0))

    def cleanup(self, job: Job) -> None:
        cid = job.handle["container_id"]
        self._followers.pop(cid, None)
        self.engine.remove(cid)

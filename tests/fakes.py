"""Fakes behind the project's own seams, for unit tests of its state machines.

:class:`ScriptedBackend` is a Backend whose jobs follow a script: phases one
status call at a time, log pages, outputs copied from a prepared directory,
and errors raised on demand at any step. It is registered by name through
the backend registry's ``register()``, like any backend. The real-daemon
tests stay; these run in milliseconds and reach branches a daemon cannot be
made to take.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbcontainer_kernel.backends.base import Backend, Job, Phase, RunSpec


@dataclass
class Script:
    """What one job does: the phases its status calls report (the last one repeats), its
    exit code at the end, log lines (one more per status call), and its outputs."""

    phases: list[Phase] = field(
        default_factory=lambda: [Phase.QUEUED, Phase.RUNNING, Phase.SUCCEEDED]
    )
    exit_code: int = 0
    logs: list[str] = field(default_factory=list)
    # A directory holding model/ and output/, or a callable (spec, dest) that writes them.
    outputs: Path | Callable[[RunSpec, Path], None] | None = None
    fail_on: dict[str, BaseException] = field(default_factory=dict)  # step name -> error to raise
    wait_for_cancel: bool = False  # stay RUNNING until cancelled
    polls_to_stop: int = 0  # status calls that still say RUNNING after a cancel (a slow platform)


class ScriptedBackend(Backend):
    """A backend that plays scripts; `calls` records every step it was asked for."""

    name = "scripted"

    def __init__(
        self, scripts: dict[str, Script] | Callable[[RunSpec], Script] | None = None
    ) -> None:
        self.scripts = scripts or {}
        self.calls: list[tuple[str, str]] = []
        self.specs: dict[str, RunSpec] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def poll_interval(self, waited: float) -> float:
        return 0.01  # the scripts answer at once: no platform to spare

    def script_for(self, spec: RunSpec) -> Script:
        if callable(self.scripts):
            return self.scripts(spec)
        return self.scripts.get(spec.run_id) or self.scripts.get("*") or Script()

    def _step(self, name: str, job_or_id: Job | str) -> dict[str, Any]:
        run_id = job_or_id if isinstance(job_or_id, str) else job_or_id.run_id
        with self._lock:
            self.calls.append((name, run_id))
            state = self._state.get(run_id, {})
        error = state.get("script", Script()).fail_on.get(name) if state else None
        if error is not None:
            raise error
        return state

    def _accept(self, spec: RunSpec) -> None:
        script = self.script_for(spec)
        with self._lock:
            self.specs[spec.run_id] = spec
            self._state[spec.run_id] = {
                "script": script,
                "calls": 0,
                "cancelled": False,
                "cleaned": False,
            }

    def submit(self, spec: RunSpec) -> Job:
        self._accept(spec)
        self._step("submit", spec.run_id)
        return Job(self.name, spec.run_id, {"fake_id": f"job-{spec.run_id}"})

    def status(self, job: Job) -> tuple[Phase, int | None]:
        state = self._step("status", job)
        script: Script = state["script"]
        if state["cancelled"]:
            if state.setdefault("stopping", script.polls_to_stop) > 0:
                state["stopping"] -= 1
                return Phase.RUNNING, None
            return Phase.CANCELLED, 137
        if script.wait_for_cancel:
            return Phase.RUNNING, None
        i = min(state["calls"], len(script.phases) - 1)
        state["calls"] += 1
        phase = script.phases[i]
        return phase, (script.exit_code if phase.terminal else None)

    def logs(self, job: Job, since: int = 0) -> list[str]:
        state = self._step("logs", job)
        lines = state["script"].logs
        done = state["cancelled"] or state["calls"] >= len(state["script"].phases)
        return (lines if done else lines[: state["calls"]])[since:]

    def cancel(self, job: Job) -> None:
        state = self._step("cancel", job)
        state["cancelled"] = True

    def fetch_results(self, job: Job, dest: Path) -> None:
        state = self._step("fetch_results", job)
        dest.mkdir(parents=True, exist_ok=True)
        outputs = state["script"].outputs
        if callable(outputs):
            outputs(self.specs[job.run_id], dest)
        elif outputs is not None:
            for sub in ("model", "output"):
                if (outputs / sub).is_dir():
                    shutil.copytree(outputs / sub, dest / sub, dirs_exist_ok=True)

    def cleanup(self, job: Job) -> None:
        state = self._step("cleanup", job)
        state["cleaned"] = True

    def cleaned(self, run_id: str) -> bool:
        return bool(self._state.get(run_id, {}).get("cleaned"))


def sealed_outputs(
    values: dict[str, Any], *, failure: str | None = None, key: str | None = None
) -> Callable[[RunSpec, Path], None]:
    """Outputs as a real run writes them: `values` as results, sealed with the run's key
    (from its spec's environment, as the runner gets it) or with `key`."""
    from nbcontainer_kernel.runtime.cell import write_results
    from nbcontainer_kernel.runtime.paths import Paths
    from nbcontainer_kernel.runtime.trust import KEY_ENV, seal

    def write(spec: RunSpec, dest: Path) -> None:
        paths = Paths(snapshot=dest / "unused", ml=dest)
        index = write_results(dict(values), list(values), None, [], spec.params, paths)
        if failure is not None:
            paths.failure.write_text(failure)
        seal(dest, key or spec.env.get(KEY_ENV), index)

    return write


def fake_image_builder(snap: Any, **_: Any) -> Any:
    """Stands in for build_run_image: no Docker, a made-up tag per snapshot."""
    from nbcontainer_kernel.images.runs import RunImage

    return RunImage(
        tag=f"fake/run:{snap.digest[:12]}",
        image_id="sha256:fake",
        digest=snap.digest,
        deps_image="fake/deps:1",
        deps_reused=True,
    )


# ---------------------------------------------------------------- a fake Docker daemon
class _Response:
    def __init__(self, status: int, reason: str = "") -> None:
        self.status_code = status
        self.reason = reason
        self.url = "http+docker://localhost/fake"

    def json(self) -> dict[str, Any]:
        return {"message": self.reason}


def api_error(status: int, explanation: str) -> Exception:
    """A docker-py APIError as the daemon raises it (status code and explanation)."""
    import docker.errors

    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(
        f"{status} Client Error", response=_Response(status, explanation), explanation=explanation
    )


class FakeContainer:
    def __init__(
        self, daemon: FakeDocker, cid: str, name: str, image: str, kwargs: dict[str, Any]
    ) -> None:
        self.daemon, self.id, self.name, self.image = daemon, cid, name, image
        self.kwargs = kwargs
        self.labels = dict(kwargs.get("labels") or {})
        self.state: dict[str, Any] = {
            "Status": "created",
            "Running": False,
            "ExitCode": 0,
            "OOMKilled": False,
        }
        self.files: dict[str, bytes] = {}
        self.signals: list[Any] = []
        self.ports: dict[str, list[dict[str, str]]] = {}
        self.log = b""

    @property
    def status(self) -> str:
        return self.state["Status"]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.daemon.api.inspect_container(self.id)

    def start(self) -> None:
        self.daemon.api.start(self.id)

    def exit(self, code: int, oom: bool = False, log: bytes = b"") -> None:
        """What the test makes the container do: exit with a code (or be OOM-killed)."""
        self.state.update(Status="exited", Running=False, ExitCode=code, OOMKilled=oom)
        self.log += log


FAKE_KERNEL_IMAGE = "nbc/fake-kernel:1"


class FakeDocker:
    """The part of docker-py's DockerClient the Engine uses, over in-memory state.

    `fail` maps an operation name ("create", "start", "kill", "remove", "put_archive",
    "inspect") to a list of errors raised by its next calls, in order.
    """

    def __init__(self, images: dict[str, dict[str, str]] | None = None) -> None:
        self.containers_by_id: dict[str, FakeContainer] = {}
        self.image_labels = dict(images or {})
        self.fail: dict[str, list[Exception]] = {}
        self.calls: list[tuple[str, str]] = []
        self.next_port = 40000
        self.made = 0
        self.taken_ports: set[int] = set()
        self.api = _FakeAPI(self)
        self.containers = _FakeContainers(self)
        self.images = _FakeImages(self)

    def ping(self) -> bool:
        return True

    def _check(self, op: str, ident: str = "") -> None:
        self.calls.append((op, ident))
        errors = self.fail.get(op)
        if errors:
            raise errors.pop(0)

    def get(self, ident: str) -> FakeContainer:
        c = self.containers_by_id.get(ident) or next(
            (c for c in self.containers_by_id.values() if c.name == ident), None
        )
        if c is None:
            raise api_error(404, f"No such container: {ident}")
        return c


class _FakeContainers:
    def __init__(self, daemon: FakeDocker) -> None:
        self.daemon = daemon

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        self.daemon._check("create", image)
        if image not in self.daemon.image_labels:
            import docker.errors

            raise docker.errors.ImageNotFound(f"No such image: {image}", response=_Response(404))
        self.daemon.made += 1  # ids are never reused, as Docker's are not
        cid = f"{self.daemon.made:064x}"
        c = FakeContainer(self.daemon, cid, kwargs.get("name") or f"fake-{cid[:8]}", image, kwargs)
        self.daemon.containers_by_id[cid] = c
        return c

    def get(self, ident: str) -> FakeContainer:
        return self.daemon.get(ident)

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[FakeContainer]:
        wanted = (filters or {}).get("label", [])
        out = []
        for c in self.daemon.containers_by_id.values():
            ok = all or c.state["Running"]
            for f in wanted:
                k, sep, v = f.partition("=")
                ok = ok and k in c.labels and (not sep or c.labels[k] == v)
            if ok:
                out.append(c)
        return out


class _FakeImage:
    def __init__(self, ref: str, labels: dict[str, str]) -> None:
        self.id = f"sha256:{abs(hash(ref)):064x}"[:71]
        self.short_id = self.id[:19]
        self.tags = [ref]
        self.labels = labels
        self.attrs = {"Size": 0, "Created": ""}


class _FakeImages:
    def __init__(self, daemon: FakeDocker) -> None:
        self.daemon = daemon

    def get(self, ref: str) -> _FakeImage:
        self.daemon._check("image", ref)
        if ref not in self.daemon.image_labels:
            import docker.errors

            raise docker.errors.ImageNotFound(f"No such image: {ref}", response=_Response(404))
        return _FakeImage(ref, self.daemon.image_labels[ref])

    def list(self, filters: dict[str, Any] | None = None) -> list[_FakeImage]:
        return []


class _FakeAPI:
    def __init__(self, daemon: FakeDocker) -> None:
        self.daemon = daemon

    def start(self, ident: str) -> None:
        self.daemon._check("start", ident)
        c = self.daemon.get(ident)
        wanted = c.kwargs.get("ports") or {}
        for binding in wanted.values():
            host_port = binding[1] if len(binding) > 1 else None
            if host_port is not None and host_port in self.daemon.taken_ports:
                raise api_error(
                    500,
                    "driver failed programming external connectivity on endpoint "
                    f"{c.name}: Bind for 127.0.0.1:{host_port} failed: port is already allocated",
                )
        for inner, binding in wanted.items():
            port = binding[1] if len(binding) > 1 else self.daemon.next_port
            self.daemon.next_port += 1
            c.ports[inner] = [{"HostIp": binding[0], "HostPort": str(port)}]
        c.state.update(Status="running", Running=True)

    def inspect_container(self, ident: str) -> dict[str, Any]:
        self.daemon._check("inspect", ident)
        c = self.daemon.get(ident)
        return {
            "Id": c.id,
            "Name": "/" + c.name,
            "State": dict(c.state),
            "Config": {
                "Labels": c.labels,
                "Env": [f"{k}={v}" for k, v in (c.kwargs.get("environment") or {}).items()],
            },
            "HostConfig": {"NetworkMode": c.kwargs.get("network_mode", "default")},
            "NetworkSettings": {"Ports": dict(c.ports)},
        }

    def kill(self, ident: str, signal: Any = None) -> None:
        self.daemon._check("kill", ident)
        c = self.daemon.get(ident)
        if not c.state["Running"]:
            raise api_error(409, f"Container {ident} is not running")
        c.signals.append(signal)
        if signal in ("SIGKILL", 9, 15, "SIGTERM"):
            c.exit(137 if signal in ("SIGKILL", 9) else 143)

    def rename(self, ident: str, name: str) -> None:
        self.daemon._check("rename", ident)
        if any(c.name == name for c in self.daemon.containers_by_id.values()):
            raise api_error(409, f'Conflict. The container name "/{name}" is already in use')
        self.daemon.get(ident).name = name

    def remove_container(self, ident: str, force: bool = False, v: bool = False) -> None:
        self.daemon._check("remove", ident)
        c = self.daemon.get(ident)
        del self.daemon.containers_by_id[c.id]

    def put_archive(self, ident: str, path: str, data: Any) -> bool:
        self.daemon._check("put_archive", ident)
        import io
        import tarfile

        c = self.daemon.get(ident)
        fileobj = io.BytesIO(data) if isinstance(data, bytes) else data
        with tarfile.open(fileobj=fileobj) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    c.files[f"{path.rstrip('/')}/{m.name}"] = tar.extractfile(m).read()
        return True

    def logs(
        self, ident: str, stdout: bool = True, stderr: bool = True, tail: Any = "all"
    ) -> bytes:
        return self.daemon.get(ident).log

    def get_archive(self, ident: str, path: str, chunk_size: int = 0) -> tuple[Any, Any]:
        """A file the container holds, as a one-member tar (404 when it has none)."""
        import io
        import tarfile

        c = self.daemon.get(ident)
        key = "/" + path.lstrip("/")
        found = {("/" + k.lstrip("/")): v for k, v in c.files.items()}
        if key not in found:
            raise api_error(404, f"Could not find the file {path} in container {ident}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(key.rsplit("/", 1)[-1])
            info.size = len(found[key])
            tar.addfile(info, io.BytesIO(found[key]))
        return iter([buf.getvalue()]), {"name": info.name, "size": info.size}

    def diff(self, ident: str) -> list[dict[str, Any]]:
        return []


class ArrayScriptedBackend(ScriptedBackend):
    """A ScriptedBackend that takes a whole sweep in one step, as AWS Batch's array jobs do."""

    name = "scripted-array"
    one_job_per_sweep = True

    def submit_sweep(self, parent: str, specs: list[RunSpec]) -> list[Job]:
        with self._lock:
            self.calls.append(("submit_sweep", parent))
        jobs: list[Job] = []
        for spec in specs:
            self._accept(spec)
            jobs.append(Job(self.name, spec.run_id, {"fake_id": f"{parent}:{len(jobs)}"}))
        return jobs

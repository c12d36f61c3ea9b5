"""``--backend sagemaker-local``: the SageMaker backend's CreateTrainingJob request, run by
SageMaker's own local mode (``LocalSagemakerClient`` from the sagemaker-core
distribution, with Docker Compose) on this machine.

So SageMaker's own code starts the run image with ``train``, writes
``hyperparameters.json`` and packs ``/opt/ml/model`` into ``model.tar.gz``: every
run proves that a run image is a SageMaker training image. How local mode behaves
(measured; ../DESIGN.md) decides the shape of this module:

* ``create_training_job`` blocks until the container exits and keeps nothing a
  later call can describe after a failure: it runs in a worker thread and this
  backend keeps the job's state itself.
* It has no stop call and ignores MaxRuntimeInSeconds: Cancel and --timeout kill
  the job's container, found by the labels we give it (``container_config``).
* It prints the container's output to ``sys.stdout``, through a TTY: we take its
  output stream function over for the jobs we run and keep clean lines per job.
* It writes the boto session's credentials into the compose file: the session we
  give it has a region and no credentials, telemetry is off, and no user config
  file is read. Everything it writes lives in the run's private directory,
  removed at cleanup.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..docker import labels
from ..runtime.errors import ImageNotFound, InvalidOption, NbcontainerError
from ..runtime.run_key import KEY_FILE
from ..runtime.training import PARAMS_CHANNEL, PARAMS_FILE
from ..runtime.trust import KEY_ENV
from .base import Hooks, Job, RunSpec, Settings, write_log
from .run_keys import KEY_CHANNEL
from .sagemaker import (
    SageMakerBackend,
    has_gpus,
    hyperparameters_for,
    job_name_for,
    training_job_request,
    unpack_training_outputs,
)

__all__ = [
    "NETWORK",
    "SageMakerLocalBackend",
    "clean_compose_line",
    "compose_command",
]

log = logging.getLogger(__name__)

#: A role ARN for the request when none is set: local mode never assumes it.
LOCAL_ROLE = "arn:aws:iam::000000000000:role/nbcontainer-sagemaker-local"
#: Local mode's compose files attach every job to this network (made here, once, first).
NETWORK = "sagemaker-local"
NETWORK_LABELS = {"com.docker.compose.network": NETWORK, labels.ROLE: "sagemaker-local-network"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SERVICE_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-algo-\d+-[A-Za-z0-9]+\s+\|\s?")
_TELEMETRY_OFF = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}
_tls = threading.local()  # the job whose local-mode call runs on this thread
_patch_lock = threading.Lock()
_patched = False


def compose_command() -> list[str]:
    """Docker Compose as local mode runs it: the `docker compose` plugin (v2), else the
    `docker-compose` program; NbcontainerError saying how to get one when neither is here."""
    if shutil.which("docker") and _compose_plugin_answers():
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise NbcontainerError(
        "--backend sagemaker-local runs SageMaker's local mode, which needs Docker Compose, and "
        "none is installed here: install Debian's docker-compose (apt-get install docker-compose)"
        " or the docker compose plugin, or run with --local"
    )


def _compose_plugin_answers() -> bool:
    """Whether `docker compose version` names Compose v2 or later (a CLI without the
    plugin, or one that hangs, means no)."""
    try:
        out = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(re.search(r"version\s+v?([2-9]|\d\d)", out.stdout))


def clean_compose_line(raw: str) -> str | None:
    """One line of compose's TTY output as a log line: colours and CRs gone, the
    ``<container> |`` prefix off the container's own lines; compose's own lines marked."""
    line = _ANSI.sub("", raw).replace("\r", "").rstrip("\n")
    if not line.strip():
        return None
    stripped = _SERVICE_PREFIX.sub("", line, count=1)
    if stripped != line:
        return stripped
    return f"[sagemaker-local] {line.strip()}"


class _LocalJob:
    """A local-mode training job, as this process runs it."""

    def __init__(self, job_name: str, run_id: str, root: Path) -> None:
        self.job_name, self.run_id, self.root = job_name, run_id, root
        self.lines: list[str] = []
        self.status = "InProgress"
        self.secondary = "Starting"
        self.error: str | None = None
        self.cancelled = False
        self.process: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.killed_at = 0.0

    @property
    def out_dir(self) -> Path:
        return self.root / "artifacts"


def _follow(process: subprocess.Popen[bytes]) -> int:
    """Local mode's output streamer, taken over for our jobs: lines go to the job's log,
    not the kernel's stdout."""
    job: _LocalJob | None = getattr(_tls, "job", None)
    if job is None:
        return int(_original_stream(process))  # someone else's local-mode call
    job.process = process
    job.secondary = "Training"
    assert process.stdout is not None
    with process.stdout:  # local mode never closes it
        for raw in iter(process.stdout.readline, b""):
            line = clean_compose_line(raw.decode("utf-8", "replace"))
            if line is not None:
                job.lines.append(line)
    code = process.wait()
    if code not in (0, 130):
        # Local mode's own failure, as its streamer raises it: its caller (inside
        # sagemaker-core) reads this error, not ours.
        raise RuntimeError(f"Failed to run: {process.args!r}. Process exited with code: {code}")
    return code


_original_stream: Any = None


def _patch_local_mode() -> None:
    """Take local mode's output streamer and compose lookup over (once per process)."""
    global _patched, _original_stream
    with _patch_lock:
        if _patched:
            return
        import sagemaker.core.local.image as image

        _original_stream = image._stream_output
        image._stream_output = _follow
        # Its own lookup calls `docker compose version` and fails on a missing docker CLI.
        image._SageMakerContainer._get_compose_cmd_prefix = staticmethod(compose_command)
        _patched = True


def _local_session(region_name: str, root: Path, container_config: Mapping[str, Any]) -> Any:
    """A LocalSession that holds no credentials, reads no user config and sends no telemetry;
    `container_config` is merged into the compose service (labels, limits)."""
    import boto3
    import botocore.credentials
    import botocore.session
    from sagemaker.core.local.local_session import LocalSession

    core = botocore.session.Session()
    # No credentials at all: local mode would write them into the compose file.
    core.register_component("credential_provider", botocore.credentials.CredentialResolver([]))
    session = LocalSession(
        boto_session=boto3.session.Session(botocore_session=core, region_name=region_name),
        sagemaker_config=_TELEMETRY_OFF,
    )
    session.config = {
        "local": {
            "local_code": True,
            "container_root": str(root),
            "container_config": dict(container_config),
        }
    }
    return session


class SageMakerLocalBackend(SageMakerBackend):
    """The SageMaker request, run by SageMaker's local mode on this Docker engine."""

    name = "sagemaker-local"
    needs_push = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local: dict[str, _LocalJob] = {}

    def check(self, settings: Settings) -> None:
        """Nothing is required: no role, bucket or registry (local mode needs none)."""
        try:
            import sagemaker.core.local.local_session  # noqa: F401
        except ImportError as exc:
            raise NbcontainerError(
                "--backend sagemaker-local needs sagemaker-core: "
                "pip install 'nbcontainer-kernel[sagemaker]'"
            ) from exc
        self._check_shape(settings)
        compose_command()

    def check_resources(
        self, cpus: float | None, memory: str | None, gpus: str | None, settings: Settings
    ) -> None:
        instance_type = str(settings.get("instance_type") or "local")
        if instance_type not in ("local", "local_gpu") and not instance_type.startswith("ml."):
            raise InvalidOption("--instance-type", instance_type, "expected local or local_gpu")
        if gpus and not (instance_type == "local_gpu" or has_gpus(instance_type)):
            raise InvalidOption(
                "--gpus",
                gpus,
                f"the instance type {instance_type} has no GPU: use --instance-type local_gpu",
            )

    def poll_interval(self, waited: float) -> float:
        return 0.2  # no API to spare: this process holds the state

    def push(
        self, image: str, settings: Settings, hooks: Hooks | None = None, run_id: str = ""
    ) -> str:
        return image

    # ------------------------------------------------------------------ submit
    def submit(self, spec: RunSpec) -> Job:
        from ..docker.engine import get_engine

        self._check_can_run(spec)
        job_name = job_name_for(spec.run_id)
        # Under the run's directory: private, and at the same path on the host and in a
        # containerized kernel (the ledger's directory is mounted there), as compose's
        # bind mounts need.
        assert spec.workdir is not None  # _check_can_run
        root = Path(spec.workdir) / "sagemaker-local"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, mode=0o700)
        job = _LocalJob(job_name, spec.run_id, root)
        request = self._request(spec, job)
        _patch_local_mode()
        with _patch_lock:  # compose runs of one sweep would each make the network otherwise
            get_engine().ensure_network(NETWORK, NETWORK_LABELS)
        session = _local_session(_region_name(), root, _container_config(spec))

        def work() -> None:
            from sagemaker.core.local.local_session import LocalSagemakerClient

            _tls.job = job
            try:
                LocalSagemakerClient(session).create_training_job(**request)
                job.status = "Completed"
            except Exception as exc:  # local mode's RuntimeError ends with the exit code
                job.error = f"{type(exc).__name__}: {exc}"
                job.status = "Stopped" if job.cancelled else "Failed"
            finally:
                job.secondary = job.status
                job.ended = time.time()
                _tls.job = None
                LocalSagemakerClient._training_jobs.pop(job_name, None)  # a class-level dict

        job.thread = threading.Thread(target=work, name=f"sagemaker-local-{job_name}", daemon=True)
        self._local[job_name] = job
        job.thread.start()
        return Job(self.name, spec.run_id, {"job_name": job_name, "local_dir": str(root)})

    @staticmethod
    def _check_can_run(spec: RunSpec) -> None:
        from ..docker.engine import get_engine

        if os.environ.get("NBCONTAINER_DOCKER_ACCESS") == "guarded":
            raise InvalidOption(
                "docker_access",
                "guarded",
                "SageMaker's local mode runs docker-compose, which makes a network and binds "
                "the run's directory: a kernel reaching Docker through nbcontainer's guard may "
                "not. Run it from a kernelspec with docker_access 'raw' (single-user machines) "
                "or from the host, or use --backend sagemaker",
            )
        if not get_engine().has_image(spec.image):  # compose would try Docker Hub for it
            raise ImageNotFound(spec.image, "sagemaker-local runs images of this engine only")
        if not spec.workdir:
            raise NbcontainerError(
                "sagemaker-local needs the run's private directory (RunSpec.workdir)"
            )

    @staticmethod
    def _request(spec: RunSpec, job: _LocalJob) -> dict[str, Any]:
        """The CreateTrainingJob request SageMaker would get, its channels local files."""
        root = job.root
        hyper, document = hyperparameters_for(spec.params)
        channel = None
        if document is not None:
            (root / PARAMS_CHANNEL).mkdir()
            (root / PARAMS_CHANNEL / PARAMS_FILE).write_bytes(document)
            channel = f"file://{root / PARAMS_CHANNEL}"
        key_channel = None
        if spec.env.get(KEY_ENV):
            # As on SageMaker, the key is a channel, not in the job's Environment (which
            # local mode writes into its compose file).
            (root / KEY_CHANNEL).mkdir(mode=0o700)
            key_file = root / KEY_CHANNEL / KEY_FILE
            key_file.write_text(spec.env[KEY_ENV])
            key_file.chmod(0o600)
            key_channel = f"file://{root / KEY_CHANNEL}"
        job.out_dir.mkdir()
        local_settings = {
            **spec.settings,
            "instance_type": "local_gpu" if spec.gpus else "local",
            "spot": False,  # no spot capacity on this machine
        }
        return training_job_request(
            spec,
            job_name=job.job_name,
            role=str(spec.settings.get("role") or LOCAL_ROLE),
            output_path=f"file://{job.out_dir}",
            settings=local_settings,
            params_channel_uri=channel,
            hyperparameters=hyper,
            key_channel_uri=key_channel,
        )

    # ------------------------------------------------------------------- watch
    def _job(self, job: Job) -> _LocalJob | None:
        return self._local.get(job.handle["job_name"])

    def describe(self, job: Job, fresh: bool = False) -> dict[str, Any]:
        local = self._job(job)
        # A cancel that came before compose made the container: kill it once it exists.
        if (
            local is not None
            and local.cancelled
            and local.status == "InProgress"
            and time.monotonic() - local.killed_at >= 1.0
        ):
            local.killed_at = time.monotonic()
            self._kill(job)
        if local is None:
            return {
                "TrainingJobStatus": "Failed",
                "FailureReason": "a sagemaker-local job lives in the process that started it, "
                "and that process is gone (a kernel restart ends it)",
            }
        return {
            "TrainingJobStatus": local.status,
            "SecondaryStatus": local.secondary,
            "FailureReason": local.error,
            "ResourceConfig": {"InstanceType": "local"},
        }

    def logs(self, job: Job, since: int = 0) -> list[str]:
        local = self._job(job)
        return local.lines[since:] if local is not None else []

    def end_reason(self, job: Job) -> str | None:
        local = self._job(job)
        if local is None:
            return str(self.describe(job)["FailureReason"])
        return f"SageMaker local mode: {local.error}" if local.error else None

    def accounting(self, job: Job) -> dict[str, Any]:
        local = self._job(job)
        out: dict[str, Any] = {"instance_type": "local", "job_name": job.handle["job_name"]}
        if local is not None and local.ended is not None:
            out["training_seconds"] = round(local.ended - local.started, 3)
        return out

    def _containers(self, job: Job) -> list[Any]:
        from ..docker.engine import get_engine

        return get_engine().containers({labels.RUN_ID: job.run_id})

    def cancel(self, job: Job) -> None:
        """Kill the job's container (local mode has no stop call); compose then exits and the
        worker records the job Stopped. Until then each status poll kills it again (a cancel
        may come before compose made the container)."""
        local = self._job(job)
        if local is not None:
            local.cancelled = True
            local.killed_at = time.monotonic()
        self._kill(job)

    def _kill(self, job: Job) -> None:
        from ..docker.engine import get_engine

        engine = get_engine()
        for container in self._containers(job):
            engine.signal(container.id, "SIGKILL")

    # ----------------------------------------------------------------- results
    def fetch_results(self, job: Job, dest: Path) -> None:
        local = self._job(job)
        if local is not None and local.thread is not None:
            local.thread.join(60)  # its artifacts are packed in the worker's `finally`
        root = Path(job.handle["local_dir"]) / "artifacts"
        with _opened(root / "model.tar.gz") as model, _opened(root / "output.tar.gz") as output:
            unpack_training_outputs(model, output, dest, output_holds_data_dir=True)
        write_log(dest, self.logs(job, 0))

    def cleanup(self, job: Job) -> None:
        """The job's containers, and its directory (the compose file holds the run's key)."""
        from ..docker.engine import get_engine

        engine = get_engine()
        for container in self._containers(job):
            engine.remove(container.id)
        local = self._local.pop(job.handle["job_name"], None)
        if local is not None and local.thread is not None:
            local.thread.join(10)
        shutil.rmtree(job.handle["local_dir"], ignore_errors=True)
        # Local mode's shared network stays, as SageMaker's local mode leaves it: removing it
        # here would race the next job's compose; `nbcontainer gc` removes it when idle.


class _opened:
    """A file's chunks while the block runs, or None when there is no such file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: Any = None

    def __enter__(self) -> Iterator[bytes] | None:
        if not self.path.is_file():
            return None
        self.fh = open(self.path, "rb")  # noqa: SIM115 - closed in __exit__
        return iter(lambda: self.fh.read(1 << 20), b"")

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()


def _region_name() -> str:
    from .aws import region

    try:
        return region()
    except NbcontainerError:
        return "us-east-1"  # local mode needs one; it only names it to the container


def _container_config(spec: RunSpec) -> dict[str, Any]:
    """What local mode gives docker-compose for the run's container: its labels, an init,
    and --cpus and --memory, which hold here as for --local."""
    run_labels = {
        **labels.container_labels(labels.ROLE_RUN, image=spec.image),
        labels.RUN_ID: spec.run_id,
        **spec.labels,
    }
    config: dict[str, Any] = {"labels": run_labels, "init": True}
    if spec.cpus:
        config["cpus"] = float(spec.cpus)
    if spec.memory:
        config["mem_limit"] = str(spec.memory)
    return config

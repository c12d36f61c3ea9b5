"""The SageMaker backend: the run image, pushed by digest, runs as a SageMaker training job.

A run image is a SageMaker training image by construction (the container contract):
SageMaker starts it as ``IMAGE train``, writes the run's parameters to
``/opt/ml/input/config/hyperparameters.json``, uploads ``/opt/ml/model`` as
``model.tar.gz`` and ``/opt/ml/output/data`` as ``output.tar.gz``, and turns
``/opt/ml/output/failure`` into the job's FailureReason.

Settings (its traits: ``c.SageMakerBackend.role``, ...; frozen per run in
RunSpec.settings): ``role`` (the execution role's ARN: the job's credentials; required),
``s3_prefix`` (where outputs go; required), ``registry`` (required), ``instance_type``
(ml.m5.large), ``instance_count`` (1), ``volume_size`` (GB) and ``spot`` (managed spot
training). Nothing outside backends/ knows any of this.

The request is made by :func:`training_job_request`, a pure function, so the
backend and SageMaker's own local mode (sagemaker_local.py) send the same one.
SageMaker has no array jobs: a sweep is one training job per child, at most
``--max-parallel`` at once (RemoteRunner's pool).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Int, Unicode

from ..config import max_result_bytes
from ..docker import labels
from ..docker.archives import extract_tar
from ..runtime.errors import CloudError, InvalidOption
from ..runtime.metrics import metric_regex
from ..runtime.params import hyperparameters_for
from ..runtime.run_key import KEY_REF_ENV
from ..runtime.training import (
    PARAMS_CHANNEL,
    PARAMS_FILE,
    PLATFORM_ENV,
    restore_carried,
)
from ..runtime.trust import KEY_ENV
from .aws import (
    AWSBackend,
    Clients,
    aws_errors,
    check_credentials,
    poll_interval,
    read_log_forward,
    region,
    run_prefix,
    s3_chunks,
    split_s3_uri,
    tag_value,
)
from .base import Hooks, Job, Phase, RunSpec, Settings, write_log
from .push import parse_registry, push_to_registry
from .run_keys import KEY_CHANNEL, delete_key_object, put_key_object

__all__ = [
    "DEFAULT_INSTANCE_TYPE",
    "SageMakerBackend",
    "has_gpus",
    "hyperparameters_for",
    "job_name_for",
    "sagemaker_phase",
    "training_job_request",
    "unpack_training_outputs",
]

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_VOLUME_GB = 30
#: SageMaker's own default MaxRuntimeInSeconds (one day) when the run has no --timeout.
DEFAULT_MAX_RUNTIME = 86400
#: At most 40 metric definitions per training job.
MAX_METRIC_DEFINITIONS = 40
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
_JOB_NAME_MAX = 63
#: GPU instance families (ml.p3.2xlarge, ml.g5.xlarge, ...); local_gpu in local mode.
_GPU_TYPE = re.compile(r"^ml\.(p\d+[a-z]*|g\d+[a-z]*)\.|^local_gpu$")

#: SageMaker's SecondaryStatus onto the one status model (TrainingJobStatus decides the end).
_SECONDARY = {
    "Pending": Phase.QUEUED,
    "Starting": Phase.STARTING,
    "LaunchingMLInstances": Phase.STARTING,
    "PreparingTrainingStack": Phase.STARTING,
    "Downloading": Phase.STARTING,
    "DownloadingTrainingImage": Phase.STARTING,
    "Restarting": Phase.STARTING,
    "Training": Phase.RUNNING,
    "Uploading": Phase.RUNNING,  # still in the job: COLLECTING is the host's own step
    "Updating": Phase.RUNNING,
    "Stopping": Phase.RUNNING,
}


def sagemaker_phase(status: str, secondary: str | None = None) -> Phase:
    """TrainingJobStatus (and SecondaryStatus while in progress) as a Phase."""
    if status == "Completed":
        return Phase.SUCCEEDED
    if status == "Failed":
        return Phase.FAILED
    if status == "Stopped":
        return Phase.CANCELLED
    if status == "Stopping":
        return Phase.RUNNING
    return _SECONDARY.get(
        secondary or "", Phase.STARTING if status == "InProgress" else Phase.QUEUED
    )


def job_name_for(run_id: str, token: str | None = None) -> str:
    """A training job name: ``nbc-<run id>-<8 hex>``, letters, digits and single hyphens,
    at most 63 characters, unique per submission (SageMaker refuses a name twice)."""
    token = token or secrets.token_hex(4)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", run_id).strip("-") or "run"
    stem = stem[: _JOB_NAME_MAX - len("nbc--") - len(token)].strip("-")
    return f"nbc-{stem}-{token}"


def has_gpus(instance_type: str) -> bool:
    return bool(_GPU_TYPE.match(instance_type))


def training_job_request(
    spec: RunSpec,
    *,
    job_name: str,
    role: str,
    output_path: str,
    settings: Mapping[str, Any],
    params_channel_uri: str | None = None,
    hyperparameters: Mapping[str, str] | None = None,
    checkpoint_uri: str | None = None,
    key_channel_uri: str | None = None,
) -> dict[str, Any]:
    """The CreateTrainingJob request of a run (the same for SageMaker and its local mode).
    The run's key is never in it (DescribeTrainingJob returns `Environment` to anyone who
    may describe jobs): with `key_channel_uri` the key is an input channel, and the
    environment names the channel."""
    instance_type = str(settings.get("instance_type") or DEFAULT_INSTANCE_TYPE)
    max_runtime = math.ceil(spec.timeout) if spec.timeout else DEFAULT_MAX_RUNTIME
    env = {k: v for k, v in spec.env.items() if k != KEY_ENV}
    env[PLATFORM_ENV] = "sagemaker"
    if key_channel_uri:
        env[KEY_REF_ENV] = f"channel:{KEY_CHANNEL}"
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": name, "Regex": metric_regex(name)}
                for name in spec.metric_names[:MAX_METRIC_DEFINITIONS]
            ],
        },
        "RoleArn": role,
        "HyperParameters": dict(hyperparameters or {}),
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": int(settings.get("instance_count") or 1),
            "VolumeSizeInGB": int(settings.get("volume_size") or DEFAULT_VOLUME_GB),
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max(1, max_runtime)},
        "Environment": env,
        "Tags": _tags(spec),
    }
    channels = _channels(params_channel_uri, key_channel_uri)
    if channels:
        request["InputDataConfig"] = channels
    if settings.get("spot"):
        request["EnableManagedSpotTraining"] = True
        wait = int(settings.get("spot_max_wait") or 2 * max_runtime)
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = max(wait, max_runtime)
        if checkpoint_uri:
            request["CheckpointConfig"] = {"S3Uri": checkpoint_uri}
    return request


def _tags(spec: RunSpec) -> list[dict[str, str]]:
    tags = [
        {"Key": labels.RUN_ID, "Value": tag_value(spec.run_id)},
        {"Key": labels.OWNER_USER, "Value": tag_value(labels.user())},
    ]
    if spec.notebook:
        tags.append({"Key": "io.nbcontainer.notebook", "Value": tag_value(spec.notebook)})
    return tags


def _channels(params_uri: str | None, key_uri: str | None) -> list[dict[str, Any]]:
    """The input channels: the parameters (a set beyond the hyperparameters' limits) and
    the run's key, each an S3 prefix (a file:// one in local mode)."""
    return [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": content_type,
        }
        for name, uri, content_type in (
            (PARAMS_CHANNEL, params_uri, "application/json"),
            (KEY_CHANNEL, key_uri, "text/plain"),
        )
        if uri
    ]


def unpack_training_outputs(
    model_tar: Iterable[bytes] | None,
    output_tar: Iterable[bytes] | None,
    dest: Path,
    *,
    output_holds_data_dir: bool = False,
) -> None:
    """model.tar.gz into dest/model, output.tar.gz into dest/output/data (safely, capped),
    then the carried files back where the runner sealed them.

    SageMaker's output.tar.gz holds the files of /opt/ml/output/data; local mode packs all of
    /opt/ml/output (`output_holds_data_dir`): only its data/ is taken, so both look alike.
    """
    import shutil

    budget = max_result_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    if model_tar is not None:
        budget -= extract_tar(model_tar, dest / "model", max_bytes=budget)
    if output_tar is not None:
        staging = dest / ".output-unpacked"
        shutil.rmtree(staging, ignore_errors=True)
        extract_tar(output_tar, staging, max_bytes=budget)
        data = staging / "data" if output_holds_data_dir else staging
        target = dest / "output" / "data"
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        if data.is_dir():
            data.replace(target)
        else:
            target.mkdir()
        shutil.rmtree(staging, ignore_errors=True)
    restore_carried(dest)


class _JobState:
    """What this process knows of one training job: its last description, the log read so
    far, and which status transitions were said."""

    def __init__(self) -> None:
        self.desc: dict[str, Any] = {}
        self.fetched = 0.0
        self.lines: list[str] = []
        self.transitions_said = 0
        self.stream: str | None = None
        self.token: str | None = None
        self.log_read = 0.0


class SageMakerBackend(AWSBackend):
    name = "sagemaker"
    needs_push = True

    role = Unicode(
        None,
        allow_none=True,
        help="ARN of the SageMaker execution role training jobs run as: the job's credentials, "
        "never yours (env NBCONTAINER_SAGEMAKER_ROLE).",
    ).tag(config=True, env="NBCONTAINER_SAGEMAKER_ROLE", setting="sagemaker_role")
    instance_type = Unicode(
        DEFAULT_INSTANCE_TYPE,
        help="SageMaker instance type of --backend sagemaker (--instance-type; env "
        "NBCONTAINER_INSTANCE_TYPE). sagemaker-local runs on this machine whatever it says.",
    ).tag(config=True, env="NBCONTAINER_INSTANCE_TYPE")
    instance_count = Int(
        1, help="Instances of a training job (--instance-count): a cell runs on one."
    ).tag(config=True)
    volume_size = Int(
        DEFAULT_VOLUME_GB,
        min=1,
        max=16384,
        help="GB of storage of a SageMaker training instance (--volume-size; env "
        "NBCONTAINER_VOLUME_SIZE).",
    ).tag(config=True, env="NBCONTAINER_VOLUME_SIZE")
    spot = Bool(
        False,
        help="Managed spot training on SageMaker (--spot; env NBCONTAINER_SPOT): cheaper, may "
        "wait for capacity; checkpoints go under the run's S3 prefix.",
    ).tag(config=True, env="NBCONTAINER_SPOT")
    spot_max_wait = Int(
        None,
        allow_none=True,
        min=1,
        help="Seconds a spot job may wait for capacity and run in all (default: twice "
        "its time limit).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jobs: dict[str, _JobState] = {}
        self._lock = threading.Lock()
        self._clients = Clients()
        self.last_push: Any = None

    # ---------------------------------------------------------------- settings
    def check(self, settings: Settings) -> None:
        """Check the settings a SageMaker run needs (called by RemoteRunner before a run)."""
        self.require(
            settings, {"role": "the ARN of the SageMaker execution role a training job runs as"}
        )
        split_s3_uri(str(settings["s3_prefix"]))
        parse_registry(str(settings["registry"]))
        self._check_shape(settings)
        self._clients.refresh()
        check_credentials("sagemaker")
        region()

    def _check_shape(self, settings: Mapping[str, Any]) -> None:
        count = int(settings.get("instance_count") or 1)
        if count != 1:
            raise InvalidOption(
                "--instance-count",
                count,
                "a cell runs on one instance (a run image is not a distributed training script)",
            )
        volume = int(settings.get("volume_size") or DEFAULT_VOLUME_GB)
        if not 1 <= volume <= 16384:
            raise InvalidOption("--volume-size", volume, "SageMaker takes 1 to 16384 GB")

    def check_resources(
        self, cpus: float | None, memory: str | None, gpus: str | None, settings: Mapping[str, Any]
    ) -> None:
        instance_type = str(settings.get("instance_type") or DEFAULT_INSTANCE_TYPE)
        if gpus and not has_gpus(instance_type):
            raise InvalidOption(
                "--gpus",
                gpus,
                f"the instance type {instance_type} has no GPU: pick a GPU instance type with "
                "--instance-type (e.g. ml.g5.xlarge, ml.p3.2xlarge)",
            )

    def _client(self, service: str) -> Any:
        return self._clients.get(service)

    @property
    def sagemaker(self) -> Any:
        return self._client("sagemaker")

    def poll_interval(self, waited: float) -> float:
        return poll_interval(waited)

    def push(
        self, image: str, settings: Settings, hooks: Hooks | None = None, run_id: str = ""
    ) -> str:
        ref, self.last_push = push_to_registry(str(settings["registry"]), image, hooks, run_id)
        return ref

    def request_for(self, spec: RunSpec, job_name: str) -> dict[str, Any]:
        """The CreateTrainingJob request (a params channel object, when needed, is put in S3
        here, before the job exists)."""
        settings = spec.settings
        hyper, document = hyperparameters_for(spec.params)
        run_uri = run_prefix(str(settings["s3_prefix"]), spec.run_id)
        channel = None
        if document is not None:
            bucket, prefix = split_s3_uri(f"{run_uri}/{PARAMS_CHANNEL}/")
            with aws_errors("s3", "PutObject"):
                self._client("s3").put_object(
                    Bucket=bucket, Key=f"{prefix.rstrip('/')}/{PARAMS_FILE}", Body=document
                )
            channel = f"{run_uri}/{PARAMS_CHANNEL}/"
        key = spec.env.get(KEY_ENV)
        key_channel = None
        if key:
            kms_key = str(settings["kms_key"]) if settings.get("kms_key") else None
            key_channel = put_key_object(self._client("s3"), run_uri, key, kms_key)
        return training_job_request(
            spec,
            job_name=job_name,
            role=str(settings["role"]),
            output_path=f"{run_uri}/",
            settings=settings,
            params_channel_uri=channel,
            hyperparameters=hyper,
            checkpoint_uri=f"{run_uri}/checkpoints/",
            key_channel_uri=key_channel,
        )

    def submit(self, spec: RunSpec) -> Job:
        job_name = job_name_for(spec.run_id)
        request = self.request_for(spec, job_name)
        key_channel = next(
            (
                c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in request.get("InputDataConfig", [])
                if c["ChannelName"] == KEY_CHANNEL
            ),
            None,
        )
        try:
            with aws_errors("sagemaker", "CreateTrainingJob"):
                self.sagemaker.create_training_job(**request)
        except BaseException:
            if key_channel:  # no job will read it
                delete_key_object(self._client("s3"), key_channel)
            raise
        output_path = request["OutputDataConfig"]["S3OutputPath"]
        handle = {"job_name": job_name, "output_path": output_path}
        if key_channel:
            handle["key_channel"] = key_channel
        job = Job(self.name, spec.run_id, handle)
        with self._lock:
            self._jobs[job_name] = _JobState()
        return job

    # ------------------------------------------------------------------- watch
    def _state(self, job: Job) -> _JobState:
        with self._lock:
            return self._jobs.setdefault(job.handle["job_name"], _JobState())

    def describe(self, job: Job, fresh: bool = False) -> dict[str, Any]:
        """The job's DescribeTrainingJob answer, at most once a second unless `fresh`."""
        state = self._state(job)
        if fresh or not state.desc or time.monotonic() - state.fetched >= 1.0:
            with aws_errors("sagemaker", "DescribeTrainingJob"):
                state.desc = self.sagemaker.describe_training_job(
                    TrainingJobName=job.handle["job_name"]
                )
            state.fetched = time.monotonic()
        return state.desc

    def status(self, job: Job) -> tuple[Phase, int | None]:
        desc = self.describe(job)
        phase = sagemaker_phase(str(desc.get("TrainingJobStatus", "")), desc.get("SecondaryStatus"))
        if phase == Phase.SUCCEEDED:
            return phase, 0
        if phase in (Phase.FAILED, Phase.CANCELLED):
            return phase, _exit_code(str(desc.get("FailureReason") or ""))
        return phase, None

    def end_reason(self, job: Job) -> str | None:
        desc = self.describe(job)
        status = desc.get("TrainingJobStatus")
        secondary = desc.get("SecondaryStatus")
        if secondary == "MaxRuntimeExceeded":
            return "SageMaker: the job ran past MaxRuntimeInSeconds (--timeout) and was stopped"
        if secondary == "MaxWaitTimeExceeded":
            return "SageMaker: spot capacity did not come within MaxWaitTimeInSeconds"
        if status == "Stopped":
            return "SageMaker: the training job was stopped (StopTrainingJob) outside this run"
        reason = str(desc.get("FailureReason") or "")
        return f"SageMaker: {reason.splitlines()[0]}" if reason else None

    def accounting(self, job: Job) -> dict[str, Any]:
        desc = self.describe(job, fresh=True)
        out: dict[str, Any] = {
            "instance_type": (desc.get("ResourceConfig") or {}).get("InstanceType"),
            "job_name": job.handle["job_name"],
        }
        billable = desc.get("BillableTimeInSeconds")
        training = desc.get("TrainingTimeInSeconds")
        if billable is not None:
            out["billable_seconds"] = int(billable)
        if desc.get("EnableManagedSpotTraining") and billable is not None and training:
            out["spot_savings"] = round(1 - int(billable) / int(training), 4)
        return {k: v for k, v in out.items() if v is not None}

    def logs(self, job: Job, since: int = 0) -> list[str]:
        state = self._state(job)
        desc = state.desc
        transitions = desc.get("SecondaryStatusTransitions") or []
        for t in transitions[state.transitions_said :]:
            message = t.get("StatusMessage") or ""
            state.lines.append(f"[sagemaker] {t.get('Status')}: {message}".rstrip(": "))
        state.transitions_said = len(transitions)
        ended = desc.get("TrainingJobStatus") in ("Completed", "Failed", "Stopped")
        if ended or (
            desc.get("SecondaryStatus") in ("Training", "Uploading")
            and time.monotonic() - state.log_read >= 1.0
        ):
            self._read_log(job, state)
        return state.lines[since:]

    def _read_log(self, job: Job, state: _JobState) -> None:
        """Follow ``<job name>/algo-1-*`` in /aws/sagemaker/TrainingJobs forward."""
        state.log_read = time.monotonic()
        logs = self._client("logs")
        try:
            if state.stream is None:
                with aws_errors("logs", "DescribeLogStreams"):
                    found = logs.describe_log_streams(
                        logGroupName=LOG_GROUP,
                        logStreamNamePrefix=f"{job.handle['job_name']}/algo-1-",
                    ).get("logStreams", [])
                if not found:
                    return
                state.stream = sorted(s["logStreamName"] for s in found)[0]
            lines, state.token = read_log_forward(logs, LOG_GROUP, state.stream, state.token)
            state.lines.extend(lines)
        except CloudError as exc:  # logs are a view: no group yet, or a failed read, is not fatal
            log.debug("log read of %s failed: %s", job.handle["job_name"], exc)

    # ------------------------------------------------------------------ cancel
    def cancel(self, job: Job) -> None:
        """StopTrainingJob (SageMaker stops the instance, still uploads what it has)."""
        try:
            with aws_errors("sagemaker", "StopTrainingJob"):
                self.sagemaker.stop_training_job(TrainingJobName=job.handle["job_name"])
        except CloudError as exc:
            if exc.code == "ValidationException" and "status" in exc.explanation.lower():
                return  # it ended meanwhile: nothing to stop
            raise

    # ----------------------------------------------------------------- results
    def fetch_results(self, job: Job, dest: Path) -> None:
        """model.tar.gz and output.tar.gz from S3 (capped, unpacked safely) and the log. A
        job that left neither (it never started; moto runs no container) leaves only its
        log: verification then says what is missing."""
        desc = self.describe(job)
        s3 = self._client("s3")
        base = f"{job.handle['output_path'].rstrip('/')}/{job.handle['job_name']}/output/"
        model_uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or (
            base + "model.tar.gz"
        )
        unpack_training_outputs(
            s3_chunks(s3, model_uri), s3_chunks(s3, base + "output.tar.gz"), dest
        )
        write_log(dest, self.logs(job, 0))

    def cleanup(self, job: Job) -> None:
        """SageMaker keeps no container to remove; this process forgets the job, and the
        run's key object goes (the job has read its channel, or will never run)."""
        with self._lock:
            self._jobs.pop(job.handle["job_name"], None)
        if job.handle.get("key_channel"):
            delete_key_object(self._client("s3"), job.handle["key_channel"])


def _exit_code(reason: str) -> int:
    """The container's exit code where SageMaker's FailureReason says it, else 1."""
    m = re.search(r"exit(?:ed with)? code:?\s*(\d+)", reason, re.IGNORECASE)
    return int(m.group(1)) if m else 1

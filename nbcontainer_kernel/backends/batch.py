"""The AWS Batch backend: the run image, pushed by digest, runs as a Batch job; a sweep
is ONE array job; logs come from CloudWatch Logs; results come back from S3.

Settings (its traits: ``c.BatchBackend.queue``, ...; frozen per run in RunSpec.settings):
``queue`` (required), ``job_role`` (the job's IAM role: the container's credentials come
from it, never from the user's keys; required), ``s3_prefix`` (``s3://bucket/prefix``,
where outputs go; required), ``registry`` (required), ``retries``, ``platform`` (EC2 or
FARGATE) and ``execution_role`` (Fargate's). Nothing outside backends/ knows any of this.

API use, for sweeps of up to Batch's 10,000 children: one ``submit_job`` per run or
per sweep; job status through one shared view refreshed at most once per poll
interval: ``describe_jobs`` for up to 100 plain jobs per call and
``list_jobs(arrayJobId=...)`` (pages of up to 1,000) for all children of an array;
never one call per child per poll. Polling starts at 1 s and backs off to 10 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import CaselessStrEnum, Int, Unicode

from ..config import max_result_bytes
from ..docker import labels
from ..docker.archives import extract_tar
from ..docker.options import parse_bytes
from ..runtime.errors import CloudError, InvalidOption, MissingSetting, NbcontainerError
from ..runtime.params import params_env, sweep_table
from ..runtime.run_key import KEY_REF_ENV
from ..runtime.sweep import SWEEP_ENV, SWEEP_SHA256_ENV, SWEEP_URI_ENV, SWEEP_URL_ENV
from ..runtime.trust import KEY_ENV
from ..runtime.upload import OUTPUTS_OBJECT, URI_ENV
from .aws import (
    AWSBackend,
    Clients,
    aws_errors,
    check_credentials,
    client,
    poll_interval,
    read_log_forward,
    region,
    run_prefix,
    s3_chunks,
    s3_endpoint,
    split_s3_uri,
    tag_value,
)
from .base import Hooks, Job, Phase, RunSpec, Settings, write_log
from .push import parse_registry, push_to_registry
from .run_keys import delete_ssm_key, put_ssm_key

__all__ = ["BatchBackend", "batch_phase", "deregister_old_definitions", "job_definition_name"]

log = logging.getLogger(__name__)

#: Batch's job states onto the one status model.
_PHASES = {
    "SUBMITTED": Phase.QUEUED,
    "PENDING": Phase.QUEUED,
    "RUNNABLE": Phase.QUEUED,
    "STARTING": Phase.STARTING,
    "RUNNING": Phase.RUNNING,
    "SUCCEEDED": Phase.SUCCEEDED,
    "FAILED": Phase.FAILED,
}
_BEFORE_RUNNING = ("SUBMITTED", "PENDING", "RUNNABLE")
#: Environment values above this travel as an S3 object (Batch caps a request's size).
MAX_INLINE_SWEEP = 6000
#: How long the presigned GET of a large sweep table lasts: SigV4's longest (a week; a
#: session's credentials end it sooner, then the job role's own credentials read it).
PRESIGNED_SWEEP_SECONDS = 7 * 24 * 3600
#: Array children whose logs are followed while they run; larger sweeps read each
#: child's log once, when it ends (the panel cannot show 10,000 logs anyway).
LIVE_LOG_CHILDREN = 10
DEFAULT_MEMORY_MIB = 2048


def batch_phase(status: str) -> Phase:
    """A Batch job status as a Phase (unknown states wait as QUEUED)."""
    return _PHASES.get(status, Phase.QUEUED)


def job_definition_name(run_name: str) -> str:
    """``nbcontainer-<name>``: letters, digits, '-' and '_', at most 128 characters."""
    return ("nbcontainer-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run_name))[:128]


class _JobView:
    """The last known description of every job this process waits on, refreshed at most
    once per `every` seconds, in as few calls as the API allows."""

    def __init__(self, backend: BatchBackend) -> None:
        self.backend = backend
        self.every = 1.0
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}  # job id -> summary or description
        self.plain: set[str] = set()  # plain jobs waited on (described 100 per call)
        self.arrays: set[str] = set()  # array jobs whose children are waited on
        self.fetched = 0.0

    def watch(self, job: Job) -> None:
        with self.lock:
            if job.handle.get("array_job_id"):
                self.arrays.add(job.handle["array_job_id"])
            else:
                self.plain.add(job.handle["job_id"])

    def get(self, job: Job) -> dict[str, Any]:
        self.watch(job)
        with self.lock:
            if (
                time.monotonic() - self.fetched >= self.every
                or job.handle["job_id"] not in self.jobs
            ):
                self._refresh()
            return self.jobs.get(job.handle["job_id"], {})

    def details(self, job: Job) -> dict[str, Any]:
        """A job's full description (its log stream, reasons). Array children are listed in
        summaries: this describes the job and up to 99 other ended children still lacking
        theirs in the same call, so an array's details cost one call per 100 children."""
        job_id = job.handle["job_id"]
        with self.lock:
            known = self.jobs.get(job_id, {})
            if (known.get("container") or {}).get("logStreamName"):
                return known
            if not job.handle.get("array_job_id") and known:
                return known  # plain jobs are described in full by every refresh
            others = [
                j
                for j, d in self.jobs.items()
                if j != job_id
                and d.get("status") in ("SUCCEEDED", "FAILED")
                and not (d.get("container") or {}).get("logStreamName")
                and j.rpartition(":")[0] == job_id.rpartition(":")[0]
            ][:99]
        with aws_errors("batch", "DescribeJobs"):
            found = self.backend.batch.describe_jobs(jobs=[job_id, *others])["jobs"]
        with self.lock:
            for desc in found:
                self.jobs[desc["jobId"]] = {**self.jobs.get(desc["jobId"], {}), **desc}
            return self.jobs.get(job_id, {})

    def forget(self, job: Job) -> None:
        with self.lock:
            self.plain.discard(job.handle["job_id"])

    def _refresh(self) -> None:
        batch = self.backend.batch
        done = {"SUCCEEDED", "FAILED"}
        ids = sorted(i for i in self.plain if self.jobs.get(i, {}).get("status") not in done)
        for start in range(0, len(ids), 100):
            with aws_errors("batch", "DescribeJobs"):
                found = batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]
            for desc in found:
                self.jobs[desc["jobId"]] = desc
        for array_id in sorted(self.arrays):
            children = [j for j in self.jobs if j.startswith(array_id + ":")]
            if children and all(self.jobs[j].get("status") in done for j in children):
                continue
            token = None
            while True:
                kwargs: dict[str, Any] = {"arrayJobId": array_id, "maxResults": 1000}
                if token:
                    kwargs["nextToken"] = token
                with aws_errors("batch", "ListJobs"):
                    page = batch.list_jobs(**kwargs)
                for summary in page.get("jobSummaryList", []):
                    known = self.jobs.get(summary["jobId"], {})
                    self.jobs[summary["jobId"]] = {**known, **summary}
                token = page.get("nextToken")
                if not token:
                    break
        self.fetched = time.monotonic()


class _LogStream:
    """One job's CloudWatch log, read forward with nextForwardToken."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.token: str | None = None
        self.lines: list[str] = []
        self.read_at = 0.0
        self.finished = False


class BatchBackend(AWSBackend):
    name = "batch"
    needs_push = True
    one_job_per_sweep = True

    queue = Unicode(
        None,
        allow_none=True,
        help="The AWS Batch job queue of --backend batch (env NBCONTAINER_BATCH_QUEUE).",
    ).tag(config=True, env="NBCONTAINER_BATCH_QUEUE", setting="batch_queue")
    job_role = Unicode(
        None,
        allow_none=True,
        help="ARN of the IAM role Batch jobs run as: the job's credentials, never yours "
        "(env NBCONTAINER_BATCH_JOB_ROLE).",
    ).tag(config=True, env="NBCONTAINER_BATCH_JOB_ROLE", setting="batch_job_role")
    retries = Int(
        0,
        min=0,
        max=9,
        help="Batch attempts after a failed one (env NBCONTAINER_BATCH_RETRIES).",
    ).tag(config=True, env="NBCONTAINER_BATCH_RETRIES", setting="batch_retries")
    platform = CaselessStrEnum(
        ["EC2", "FARGATE"],
        default_value="EC2",
        help="Batch compute: EC2 or FARGATE (env NBCONTAINER_BATCH_PLATFORM).",
    ).tag(config=True, env="NBCONTAINER_BATCH_PLATFORM", setting="batch_platform")
    execution_role = Unicode(
        None,
        allow_none=True,
        help="ARN of the execution role of Fargate jobs (env NBCONTAINER_BATCH_EXECUTION_ROLE).",
    ).tag(config=True, env="NBCONTAINER_BATCH_EXECUTION_ROLE", setting="batch_execution_role")
    schedule_role = Unicode(
        None,
        allow_none=True,
        help="ARN of the IAM role EventBridge Scheduler and rules submit a schedule's or "
        "trigger's Batch jobs with: `nbcontainer schedule create` only "
        "(env NBCONTAINER_SCHEDULE_ROLE).",
    ).tag(config=True, env="NBCONTAINER_SCHEDULE_ROLE", setting="schedule_role")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view = _JobView(self)
        self._logs: dict[str, _LogStream] = {}
        self._terminated_arrays: set[str] = set()
        self._key_users: dict[str, set[str]] = {}  # run key parameter -> jobs that read it
        self._key_lock = threading.Lock()
        self._clients = Clients()
        self.last_push: Any = None  # what the last push did (layers, bytes)

    # ---------------------------------------------------------------- settings
    def check(self, settings: Settings) -> None:
        """Check the settings a Batch run needs (called by RemoteRunner before a run)."""
        self.require(
            settings,
            {
                "queue": "the AWS Batch job queue runs go to",
                "job_role": "the IAM role a job runs as (its credentials write the results to S3)",
            },
        )
        if settings["platform"] == "FARGATE" and not settings.get("execution_role"):
            raise MissingSetting(
                "BatchBackend.execution_role",
                "NBCONTAINER_BATCH_EXECUTION_ROLE",
                "Fargate jobs need an execution role (to pull the image and write logs)",
            )
        split_s3_uri(str(settings["s3_prefix"]))
        parse_registry(str(settings["registry"]))
        self._clients.refresh()  # new credentials or endpoints: new clients
        check_credentials("batch")
        region()

    @property
    def batch(self) -> Any:
        return self._client("batch")

    def _client(self, service: str) -> Any:
        return self._clients.get(service)

    def poll_interval(self, waited: float) -> float:
        return poll_interval(waited)

    # -------------------------------------------------------------------- push
    def push(
        self, image: str, settings: Settings, hooks: Hooks | None = None, run_id: str = ""
    ) -> str:
        ref, self.last_push = push_to_registry(str(settings["registry"]), image, hooks, run_id)
        return ref

    # ---------------------------------------------------------- job definition
    def _shape(self, spec: RunSpec) -> dict[str, Any]:
        """What a job definition fixes: image, resources, roles, platform, retries."""
        if spec.gpus and not str(spec.gpus).isdigit():
            raise InvalidOption("--gpus", spec.gpus, "on Batch, --gpus is a number of GPUs")
        memory = (
            max(1, parse_bytes("--memory", spec.memory) // (1024 * 1024))
            if spec.memory
            else DEFAULT_MEMORY_MIB
        )
        requirements = [
            {"type": "VCPU", "value": f"{spec.cpus:g}" if spec.cpus else "1"},
            {"type": "MEMORY", "value": str(memory)},
        ]
        if spec.gpus:
            requirements.append({"type": "GPU", "value": str(int(spec.gpus))})
        container: dict[str, Any] = {
            "image": spec.image,
            "resourceRequirements": requirements,
            "jobRoleArn": spec.settings["job_role"],
        }
        if spec.settings["platform"] == "FARGATE":
            container["executionRoleArn"] = spec.settings["execution_role"]
            container["networkConfiguration"] = {"assignPublicIp": "ENABLED"}
        shape: dict[str, Any] = {"containerProperties": container}
        retries = int(spec.settings.get("retries") or 0)
        if retries:
            shape["retryStrategy"] = {"attempts": min(10, retries + 1)}
        shape["platformCapabilities"] = [spec.settings["platform"]]
        return shape

    def job_definition(self, spec: RunSpec) -> str:
        """The ARN of an active job definition of this shape, registered when none is."""
        shape = self._shape(spec)
        digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        name = job_definition_name(spec.name)
        token = None
        while True:
            kwargs: dict[str, Any] = {"jobDefinitionName": name, "status": "ACTIVE"}
            if token:
                kwargs["nextToken"] = token
            with aws_errors("batch", "DescribeJobDefinitions"):
                page = self.batch.describe_job_definitions(**kwargs)
            for jd in page.get("jobDefinitions", []):
                if (jd.get("parameters") or {}).get("nbcontainerShape") == digest:
                    return str(jd["jobDefinitionArn"])
            token = page.get("nextToken")
            if not token:
                break
        with aws_errors("batch", "RegisterJobDefinition"):
            made = self.batch.register_job_definition(
                jobDefinitionName=name,
                type="container",
                parameters={"nbcontainerShape": digest},
                propagateTags=True,
                tags={labels.ROLE: labels.ROLE_RUN, labels.OWNER_USER: tag_value(labels.user())},
                **shape,
            )
        return str(made["jobDefinitionArn"])

    # ------------------------------------------------------------------ submit
    def _output_uri(self, spec: RunSpec, run_id: str) -> str:
        return run_prefix(str(spec.settings["s3_prefix"]), run_id) + "/"

    def _environment(self, spec: RunSpec, output_uri: str, key_owner: str) -> dict[str, str]:
        """The job's environment. The run's key is not in it (DescribeJobs would show it
        to anyone who may describe jobs): an SSM parameter made for `key_owner` (the run,
        or a sweep's parent) holds it, and the environment names the parameter."""
        env = {**spec.env, URI_ENV: output_uri, "AWS_DEFAULT_REGION": region()}
        key = env.pop(KEY_ENV, None)
        if key:
            kms_key = spec.settings.get("kms_key") or None
            env.update(put_ssm_key(self._client("ssm"), key_owner, key, kms_key))
        endpoint = s3_endpoint()
        if endpoint:  # an S3-compatible store: the runner must write there too
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        return env

    def _key_in_use(self, env: Mapping[str, str], job_ids: list[str]) -> str | None:
        """Remember which jobs read a run key parameter (deleted when the last ends)."""
        ref = env.get(KEY_REF_ENV, "")
        if not ref.startswith("ssm:"):
            return None
        with self._key_lock:
            self._key_users.setdefault(ref[4:], set()).update(job_ids)
        return ref[4:]

    def _forget_key(self, name: str) -> None:
        """A submit that failed: its parameter goes at once."""
        with self._key_lock:
            self._key_users.pop(name, None)
        delete_ssm_key(self._client("ssm"), name)

    def _submit(
        self, spec: RunSpec, env: dict[str, str], array_size: int | None, run_id: str
    ) -> str:
        overrides: dict[str, Any] = {
            "environment": [{"name": k, "value": v} for k, v in sorted(env.items())]
        }
        if spec.command:
            overrides["command"] = list(spec.command)
        # The job definition fixes the shape already; said again on the job, where the
        # console and describe_jobs show it.
        overrides["resourceRequirements"] = self._shape(spec)["containerProperties"][
            "resourceRequirements"
        ]
        kwargs: dict[str, Any] = {
            "jobName": job_definition_name(run_id)[:128],
            "jobQueue": spec.settings["queue"],
            "jobDefinition": self.job_definition(spec),
            "containerOverrides": overrides,
            "propagateTags": True,
            "tags": {
                labels.RUN_ID: tag_value(run_id),
                labels.OWNER_USER: tag_value(labels.user()),
                **({"io.nbcontainer.notebook": tag_value(spec.notebook)} if spec.notebook else {}),
            },
        }
        if array_size is not None and array_size > 1:
            kwargs["arrayProperties"] = {"size": array_size}
        if spec.timeout:
            # Batch's floor is 60 s; RunDriver stops a run at its exact --timeout itself.
            kwargs["timeout"] = {"attemptDurationSeconds": max(60, math.ceil(spec.timeout))}
        with aws_errors("batch", "SubmitJob"):
            return str(self.batch.submit_job(**kwargs)["jobId"])

    def submit(self, spec: RunSpec) -> Job:
        uri = self._output_uri(spec, spec.run_id)
        env = self._environment(spec, uri, spec.run_id)
        env.update(params_env(spec.params))
        key_name = env.get(KEY_REF_ENV, "")[4:] or None
        try:
            job_id = self._submit(spec, env, None, spec.run_id)
        except BaseException:
            if key_name:
                self._forget_key(key_name)
            raise
        handle = {"job_id": job_id, "output_uri": uri}
        if self._key_in_use(env, [job_id]):
            handle["key_parameter"] = key_name or ""
        job = Job(self.name, spec.run_id, handle)
        self.view.watch(job)
        return job

    def submit_sweep(self, parent: str, specs: list[RunSpec]) -> list[Job]:
        """A whole sweep as ONE array job (a plain job for one child). Every child gets the
        same environment (hence one signing key); each finds its row of NBCONTAINER_SWEEP by
        its array index and writes its outputs under ``<prefix>/<parent>/<index>/``."""
        first = specs[0]
        if len({s.env.get(KEY_ENV) for s in specs}) != 1:
            raise NbcontainerError("an array job's children share one environment: one signing key")
        uri = self._output_uri(first, parent)
        env = self._environment(first, uri, parent)
        key_name = env.get(KEY_REF_ENV, "")[4:] or None
        try:
            return self._submit_array(parent, specs, env, uri, key_name)
        except BaseException:
            if key_name:
                self._forget_key(key_name)
            raise

    def _submit_array(
        self,
        parent: str,
        specs: list[RunSpec],
        env: dict[str, str],
        uri: str,
        key_name: str | None,
    ) -> list[Job]:
        first = specs[0]
        table = sweep_table([s.params for s in specs])
        if len(table) <= MAX_INLINE_SWEEP:
            env[SWEEP_ENV] = table
        else:
            bucket, prefix = split_s3_uri(uri)
            key = f"{prefix}/sweep.json"
            with aws_errors("s3", "PutObject"):
                self._client("s3").put_object(Bucket=bucket, Key=key, Body=table.encode())
            env[SWEEP_URI_ENV] = f"s3://{bucket}/{key}"
            env[SWEEP_SHA256_ENV] = hashlib.sha256(table.encode()).hexdigest()
            with aws_errors("s3", "GeneratePresignedUrl"):
                env[SWEEP_URL_ENV] = self._client("s3").generate_presigned_url(
                    "get_object",
                    Params={"Bucket": bucket, "Key": key},
                    ExpiresIn=PRESIGNED_SWEEP_SECONDS,
                )
        size = len(specs)
        array_id = self._submit(first, env, size, parent)
        jobs = []
        for index, spec in enumerate(specs):
            handle: dict[str, Any]
            if size == 1:  # Batch's arrays start at 2 children: one is a plain job
                handle = {"job_id": array_id, "output_uri": uri, "sweep_index": 0}
            else:
                handle = {
                    "job_id": f"{array_id}:{index}",
                    "array_job_id": array_id,
                    "array_size": size,
                    "output_uri": f"{uri}{index}/",
                }
            if key_name:
                handle["key_parameter"] = key_name
            job = Job(self.name, spec.run_id, handle)
            self.view.watch(job)
            jobs.append(job)
        self._key_in_use(env, [j.handle["job_id"] for j in jobs])
        return jobs

    # ------------------------------------------------------------------- watch
    def status(self, job: Job) -> tuple[Phase, int | None]:
        desc = self.view.get(job)
        if not desc:
            return Phase.QUEUED, None
        phase = batch_phase(str(desc.get("status", "")))
        code = (desc.get("container") or {}).get("exitCode")
        if phase == Phase.SUCCEEDED and code is None:
            code = 0  # Batch says SUCCEEDED only of a container that exited 0
        return phase, code

    def end_reason(self, job: Job) -> str | None:
        desc = self.view.details(job)
        reasons = [
            str(desc.get("statusReason") or ""),
            str((desc.get("container") or {}).get("reason") or ""),
        ]
        text = "; ".join(r for r in reasons if r and r != "Essential container in task exited")
        return f"Batch: {text}" if text else None

    def logs(self, job: Job, since: int = 0) -> list[str]:
        stream = self._logs.setdefault(job.handle["job_id"], _LogStream())
        desc = self.view.jobs.get(job.handle["job_id"], {})
        status = str(desc.get("status", ""))
        ended = status in ("SUCCEEDED", "FAILED")
        live = job.handle.get("array_size", 1) <= LIVE_LOG_CHILDREN
        due = time.monotonic() - stream.read_at >= self.view.every
        if (
            not stream.finished
            and status in ("RUNNING", "SUCCEEDED", "FAILED")
            and (ended or (live and due))
        ):
            self._read_log(job, stream)
            stream.finished = ended
        return stream.lines[since:]

    def _read_log(self, job: Job, stream: _LogStream) -> None:
        stream.read_at = time.monotonic()
        if stream.name is None:
            desc = self.view.details(job)
            stream.name = (desc.get("container") or {}).get("logStreamName")
            if stream.name is None:
                return  # not written yet (or the job never started)
        try:
            lines, stream.token = read_log_forward(
                self._client("logs"), "/aws/batch/job", stream.name, stream.token
            )
        except CloudError as exc:  # logs are a view: a failed read is said, not fatal
            log.debug("log read of %s failed: %s", job.handle["job_id"], exc)
            return
        stream.lines.extend(lines)

    # ------------------------------------------------------------------ cancel
    def cancel(self, job: Job) -> None:
        """cancel_job before RUNNING, terminate_job after; an array child stops its whole
        array (finished children keep their results), once."""
        array_id = job.handle.get("array_job_id")
        if array_id:
            if array_id in self._terminated_arrays:
                return
            self._terminated_arrays.add(array_id)
            with aws_errors("batch", "TerminateJob"):
                self.batch.terminate_job(jobId=array_id, reason="cancelled from nbcontainer")
            return
        status = str(self.view.jobs.get(job.handle["job_id"], {}).get("status", "SUBMITTED"))
        if status in _BEFORE_RUNNING:
            with aws_errors("batch", "CancelJob"):
                self.batch.cancel_job(
                    jobId=job.handle["job_id"], reason="cancelled from nbcontainer"
                )
        with aws_errors("batch", "TerminateJob"):  # also for a job that started meanwhile
            self.batch.terminate_job(
                jobId=job.handle["job_id"], reason="cancelled from nbcontainer"
            )

    # ----------------------------------------------------------------- results
    def fetch_results(self, job: Job, dest: Path) -> None:
        """Download the run's outputs.tar.gz from S3 (capped, unpacked safely) and its log.
        A run that left none (it never started) leaves only its log: verification then
        says what is missing."""
        dest.mkdir(parents=True, exist_ok=True)
        uri = job.handle["output_uri"].rstrip("/") + f"/{OUTPUTS_OBJECT}"
        chunks = s3_chunks(self._client("s3"), uri)
        if chunks is not None:
            extract_tar(chunks, dest, max_bytes=max_result_bytes())
        write_log(dest, self.logs(job, 0))

    def cleanup(self, job: Job) -> None:
        """Batch keeps no container to remove; the view forgets the job, and the run's key
        parameter goes once no job of this process reads it (a sweep's, when its last
        child is cleaned up; one this process did not submit, an array child followed
        after a restart, is left to `nbcontainer gc --aws`)."""
        self.view.forget(job)
        self._logs.pop(job.handle["job_id"], None)
        name = job.handle.get("key_parameter")
        if not name:
            return
        with self._key_lock:
            users = self._key_users.get(name)
            if users is None and job.handle.get("array_job_id"):
                return
            if users is not None:
                users.discard(job.handle["job_id"])
                if users:
                    return
                self._key_users.pop(name, None)
        delete_ssm_key(self._client("ssm"), name)


def deregister_old_definitions(
    keep: int = 1, queue: str | None = None, dry_run: bool = False
) -> list[str]:
    """Deregister all but the `keep` newest revisions of each ``nbcontainer-*`` job
    definition, sparing those a job of `queue` still waits on or runs; returns their ARNs.
    (``nbcontainer gc --aws``.)"""
    batch = client("batch")
    in_use: set[str] = set()
    if queue:
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"):
            with aws_errors("batch", "ListJobs"):
                for page in batch.get_paginator("list_jobs").paginate(
                    jobQueue=queue, jobStatus=status
                ):
                    in_use.update(j.get("jobDefinition", "") for j in page["jobSummaryList"])
    revisions: dict[str, list[tuple[int, str]]] = {}
    with aws_errors("batch", "DescribeJobDefinitions"):
        for page in batch.get_paginator("describe_job_definitions").paginate(status="ACTIVE"):
            for jd in page["jobDefinitions"]:
                if jd["jobDefinitionName"].startswith("nbcontainer-"):
                    revisions.setdefault(jd["jobDefinitionName"], []).append(
                        (int(jd["revision"]), jd["jobDefinitionArn"])
                    )
    old = [
        arn
        for revs in revisions.values()
        for _, arn in sorted(revs, reverse=True)[max(0, keep) :]
        if arn not in in_use
    ]
    if not dry_run:
        for arn in old:
            with aws_errors("batch", "DeregisterJobDefinition"):
                batch.deregister_job_definition(jobDefinition=arn)
    return old

"""Schedules and S3 triggers of notebook runs on AWS Batch (EventBridge).

A schedule is an EventBridge Scheduler schedule (group ``nbcontainer``) whose
universal target ``aws-sdk:batch:submitJob`` submits, verbatim, the SubmitJob
request ``nbcontainer run --backend batch`` would make: the job definition (image
by digest), the queue, the environment (parameters, output prefix, the signing key's
reference), and tags naming the schedule. A trigger is an EventBridge rule on S3
"Object Created" under a prefix, with the queue as its Batch target: the rule's
input transformer makes ``{"Parameters": {"input_bucket": ..., "input_key": ...}}``
and the trigger's job definition passes them to the runner as text parameters
(``-P input_key Ref::input_key``), so an object key only ever reaches the notebook
as a string value, never as code or as another parameter's name.

Each schedule has one signing key (an SSM SecureString under /nbcontainer/schedules/,
read by its jobs through the job role); its jobs write their outputs under
``<s3 prefix>/schedules/<name>/<job id>/``. :func:`bring_in_runs` finds the jobs on
Batch by their name, records each in the ledger (kind notebook, schedule NAME) and
collects the ended ones, verified like any run's.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..docker import labels
from ..runtime.contract import OUTPUT_PER_JOB_ENV
from ..runtime.errors import InvalidOption, NbcontainerError
from ..runtime.params import PARAMS_ENV, params_env
from ..runtime.run_key import KEY_REF_ENV
from ..runtime.trust import new_key
from .aws import aws_errors, region, split_s3_uri, tag_value
from .base import RunSpec
from .run_keys import endpoint_of

if TYPE_CHECKING:
    from .batch import BatchBackend

__all__ = [
    "GROUP",
    "SCHEDULE_TAG",
    "ScheduleRequest",
    "Schedules",
    "check_expression",
]

GROUP = "nbcontainer"
SCHEDULE_TAG = "io.nbcontainer.schedule"
SUBMIT_JOB_TARGET = "arn:aws:scheduler:::aws-sdk:batch:submitJob"
KEY_PATH = "/nbcontainer/schedules/"
RULE_PREFIX = "nbcontainer-"
TRIGGER_PARAMS = ("input_bucket", "input_key")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
BATCH_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")

# ------------------------------------------------------------ expressions
_CRON_FIELDS = (
    ("minutes", r"[0-9,*/-]+"),
    ("hours", r"[0-9,*/-]+"),
    ("day-of-month", r"[0-9,*/?LW-]+"),
    ("month", r"([0-9]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|[,*/-])+"),
    ("day-of-week", r"([0-9]|SUN|MON|TUE|WED|THU|FRI|SAT|[,*/?L#-])+"),
    ("year", r"[0-9,*/-]+"),
)
_RANGES = {"minutes": (0, 59), "hours": (0, 23), "day-of-month": (1, 31), "year": (1970, 2199)}
_RATE = re.compile(r"(\d+) (minute|minutes|hour|hours|day|days)")


def check_expression(cron: str | None = None, rate: str | None = None) -> str:
    """The schedule expression EventBridge takes (``cron(...)`` or ``rate(...)``), or
    InvalidOption with the reason it would refuse it."""
    if (cron is None) == (rate is None):
        raise InvalidOption("--cron/--rate", cron or rate, "give one of --cron or --rate")
    if rate is not None:
        return _check_rate(rate)
    assert cron is not None
    return _check_cron(cron)


def _check_rate(rate: str) -> str:
    body = rate.strip()
    if body.startswith("rate(") and body.endswith(")"):
        body = body[5:-1].strip()
    m = _RATE.fullmatch(body)
    if not m:
        raise InvalidOption("--rate", rate, "expected 'N minutes|hours|days', e.g. '1 day'")
    n, unit = int(m.group(1)), m.group(2)
    if n < 1:
        raise InvalidOption("--rate", rate, "the value must be a positive whole number")
    if (n == 1) == unit.endswith("s"):
        want = unit.rstrip("s") if n == 1 else unit + "s"
        raise InvalidOption("--rate", rate, f"EventBridge wants '{n} {want}' (singular for 1)")
    return f"rate({n} {unit})"


def _check_cron(cron: str) -> str:
    body = cron.strip()
    if body.startswith("cron(") and body.endswith(")"):
        body = body[5:-1].strip()
    fields = body.split()
    if len(fields) != 6:
        raise InvalidOption(
            "--cron",
            cron,
            "EventBridge cron has 6 fields: minutes hours day-of-month month day-of-week year",
        )
    for (name, pattern), value in zip(_CRON_FIELDS, fields, strict=True):
        if not re.fullmatch(pattern, value.upper()):
            raise InvalidOption("--cron", cron, f"its {name} field {value!r} is not valid there")
        low_high = _RANGES.get(name)
        if low_high:
            for number in re.findall(r"\d+", value.split("/")[0]):
                if not low_high[0] <= int(number) <= low_high[1]:
                    raise InvalidOption(
                        "--cron", cron, f"its {name} field is {low_high[0]}-{low_high[1]}"
                    )
    dom, dow = fields[2], fields[4]
    if (dom == "?") == (dow == "?"):
        raise InvalidOption(
            "--cron",
            cron,
            "one of day-of-month and day-of-week must be '?' (and only one), e.g. "
            "'cron(0 6 * * ? *)'",
        )
    return f"cron({' '.join(fields)})"


# ------------------------------------------------------------- schedules
@dataclass
class ScheduleRequest:
    """What ``nbcontainer schedule create`` was asked, its image already pushed."""

    name: str
    image: str  # repo@sha256:... in the run registry
    params: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    rate: str | None = None
    on_s3: str | None = None
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    timeout: float | None = None
    notebook: str | None = None


def check_schedule_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidOption(
            "NAME", name, "a schedule name is 1-40 letters, digits, '_', '.' or '-'"
        )
    return name


def _job_name(name: str) -> str:
    """The name of a schedule's jobs: its own for each schedule made (a schedule made
    again under a deleted one's name does not take the old one's jobs for its own)."""
    import secrets

    return f"nbc-sched-{name}-{secrets.token_hex(3)}"


class Schedules:
    """Make, list, describe, delete and run schedules and triggers (a thin client: every
    call is one EventBridge, Batch, SSM or S3 request, errors said by aws_errors)."""

    def __init__(self, backend: BatchBackend, settings: Mapping[str, Any]) -> None:
        self.backend = backend
        self.settings = settings

    def _client(self, service: str) -> Any:
        return self.backend._client(service)

    def output_prefix(self, name: str) -> str:
        """Where the schedule's jobs write (each under its job id): one place per
        schedule, as its name is one per account and region."""
        bucket, prefix = split_s3_uri(str(self.settings["s3_prefix"]))
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}schedules/{name}"

    # ------------------------------------------------------------- create
    def create(self, req: ScheduleRequest) -> dict[str, Any]:
        """Make the schedule (or trigger) and its job definition and key; returns what
        ``describe`` shows."""
        check_schedule_name(req.name)
        role = self.settings.get("schedule_role")
        if not role:
            raise InvalidOption(
                "BatchBackend.schedule_role",
                role,
                "a schedule needs the IAM role EventBridge submits its jobs with: set "
                "NBCONTAINER_SCHEDULE_ROLE (the README's IAM section says what it needs)",
            )
        expression = None if req.on_s3 else check_expression(req.cron, req.rate)
        if req.on_s3 and (req.cron or req.rate):
            raise InvalidOption("--on-s3", req.on_s3, "a trigger has no --cron or --rate")
        if self.exists(req.name):
            raise InvalidOption("NAME", req.name, "a schedule or trigger of this name exists")
        key_env = self._put_key(req.name)
        try:
            spec = self._spec(req, key_env, _job_name(req.name))
            if req.on_s3:
                self._create_trigger(req, spec, str(role))
            else:
                assert expression is not None
                self._create_schedule(req, spec, str(role), expression)
        except BaseException:
            self._delete_key(req.name)
            raise
        return self.describe(req.name)

    def _spec(self, req: ScheduleRequest, key_env: dict[str, str], job_name: str) -> RunSpec:
        """The RunSpec a `nbcontainer run --backend batch` of this image would submit (its
        run id and name are the schedule's job name)."""
        uri = self.output_prefix(req.name) + "/"
        env = {
            **key_env,
            "NBCONTAINER_OUTPUT_URI": uri,
            OUTPUT_PER_JOB_ENV: "1",
            "AWS_DEFAULT_REGION": region(),
            **params_env(req.params),
        }
        s3 = self._client("s3")
        if endpoint_of(s3):
            env["AWS_ENDPOINT_URL_S3"] = str(endpoint_of(s3))
        return RunSpec(
            job_name,
            req.image,
            name=job_name,
            params=dict(req.params),
            cpus=req.cpus,
            memory=req.memory,
            gpus=req.gpus,
            timeout=req.timeout,
            env=env,
            settings=self.settings,
            notebook=req.notebook,
        )

    def submit_input(self, req: ScheduleRequest, spec: RunSpec) -> dict[str, Any]:
        """The SubmitJob request (Batch's own member names) the schedule submits."""
        submit: dict[str, Any] = {
            "jobName": spec.name,
            "jobQueue": self.settings["queue"],
            "jobDefinition": self.backend.job_definition(spec),
            "containerOverrides": {
                "environment": [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
            },
            "propagateTags": True,
            "tags": {
                SCHEDULE_TAG: tag_value(req.name),
                labels.OWNER_USER: tag_value(labels.user()),
            },
        }
        if req.timeout:
            submit["timeout"] = {"attemptDurationSeconds": max(60, int(req.timeout))}
        return submit

    def _create_schedule(
        self, req: ScheduleRequest, spec: RunSpec, role: str, expression: str
    ) -> None:
        scheduler = self._client("scheduler")
        self._ensure_group(scheduler)
        with aws_errors("scheduler", "CreateSchedule"):
            scheduler.create_schedule(
                Name=req.name,
                GroupName=GROUP,
                ScheduleExpression=expression,
                FlexibleTimeWindow={"Mode": "OFF"},
                State="ENABLED",
                Description=_description(req),
                Target={
                    "Arn": SUBMIT_JOB_TARGET,
                    "RoleArn": role,
                    "Input": json.dumps(self.submit_input(req, spec)),
                },
            )

    def _ensure_group(self, scheduler: Any) -> None:
        try:
            scheduler.get_schedule_group(Name=GROUP)
        except scheduler.exceptions.ResourceNotFoundException:
            with aws_errors("scheduler", "CreateScheduleGroup"):
                scheduler.create_schedule_group(
                    Name=GROUP, Tags=[{"Key": labels.ROLE, "Value": "schedules"}]
                )

    def trigger_definition(self, spec: RunSpec, name: str) -> str:
        """A job definition of the trigger's own: the run's environment fixed in it (a
        rule's Batch target sets no environment) and the object's bucket and key passed
        as text parameters from the job's Parameters."""
        shape = self.backend._shape(spec)
        container = dict(shape["containerProperties"])
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        container["command"] = [arg for p in TRIGGER_PARAMS for arg in ("-P", p, f"Ref::{p}")]
        with aws_errors("batch", "RegisterJobDefinition"):
            made = self.backend.batch.register_job_definition(
                jobDefinitionName=spec.name,
                type="container",
                parameters={p: "" for p in TRIGGER_PARAMS},
                propagateTags=True,
                tags={SCHEDULE_TAG: tag_value(name), labels.ROLE: labels.ROLE_RUN},
                **{**shape, "containerProperties": container},
            )
        return str(made["jobDefinitionArn"])

    def _create_trigger(self, req: ScheduleRequest, spec: RunSpec, role: str) -> None:
        assert req.on_s3 is not None
        bucket, prefix = split_s3_uri(req.on_s3)
        if req.on_s3.endswith("/") and prefix and not prefix.endswith("/"):
            prefix += "/"  # incoming/ is not incoming-old/
        definition = self.trigger_definition(spec, req.name)
        events = self._client("events")
        pattern = {
            "source": ["aws.s3"],
            "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": [bucket]}, "object": {"key": [{"prefix": prefix}]}},
        }
        rule = RULE_PREFIX + req.name
        with aws_errors("events", "PutRule"):
            events.put_rule(
                Name=rule,
                EventPattern=json.dumps(pattern),
                State="ENABLED",
                Description=_description(req),
                Tags=[{"Key": SCHEDULE_TAG, "Value": tag_value(req.name)}],
            )
        with aws_errors("events", "PutTargets"):
            events.put_targets(
                Rule=rule, Targets=[self.trigger_target(spec.name, definition, role)]
            )
        self._enable_bucket_events(bucket)

    def trigger_target(self, job_name: str, definition: str, role: str) -> dict[str, Any]:
        """The rule's Batch target: the input transformer passes the object's bucket and
        key. The placeholders stand outside quotes, so EventBridge writes each as a JSON
        string, escaped: a key holding quotes or backslashes stays one string value."""
        return {
            "Id": "batch",
            "Arn": self._queue_arn(),
            "RoleArn": role,
            "BatchParameters": {"JobDefinition": definition, "JobName": job_name},
            "InputTransformer": {
                "InputPathsMap": {"bucket": "$.detail.bucket.name", "key": "$.detail.object.key"},
                "InputTemplate": '{"Parameters": {"input_bucket": <bucket>, "input_key": <key>}}',
            },
        }

    def _queue_arn(self) -> str:
        queue = str(self.settings["queue"])
        if queue.startswith("arn:"):
            return queue
        with aws_errors("batch", "DescribeJobQueues"):
            found = self.backend.batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
        if not found:
            raise NbcontainerError(f"The Batch job queue {queue!r} does not exist.")
        return str(found[0]["jobQueueArn"])

    def _enable_bucket_events(self, bucket: str) -> None:
        """The bucket sends its events to EventBridge (its other notifications kept)."""
        s3 = self._client("s3")
        with aws_errors("s3", "GetBucketNotificationConfiguration"):
            config = s3.get_bucket_notification_configuration(Bucket=bucket)
        config.pop("ResponseMetadata", None)
        if "EventBridgeConfiguration" in config:
            return
        config["EventBridgeConfiguration"] = {}
        with aws_errors("s3", "PutBucketNotificationConfiguration"):
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=config
            )

    # ---------------------------------------------------------- signing key
    def _put_key(self, name: str) -> dict[str, str]:
        """A new key for the schedule (one left by a schedule of the same name that was
        not deleted cleanly is replaced: its runs were signed with another key)."""
        ssm = self._client("ssm")
        param = KEY_PATH + name
        self._delete_key(name)
        kwargs: dict[str, Any] = {
            "Name": param,
            "Value": new_key(),
            "Type": "SecureString",
            "Description": f"signing key of the nbcontainer schedule {name}",
            "Tags": [{"Key": SCHEDULE_TAG, "Value": tag_value(name)}],
        }
        if self.settings.get("kms_key"):
            kwargs["KeyId"] = self.settings["kms_key"]
        with aws_errors("ssm", "PutParameter"):
            ssm.put_parameter(**kwargs)
        env = {KEY_REF_ENV: f"ssm:{param}"}
        if endpoint_of(ssm):
            env["AWS_ENDPOINT_URL_SSM"] = str(endpoint_of(ssm))
        return env

    def key_of(self, name: str) -> str:
        """The schedule's signing key (what its runs' outputs are checked with)."""
        ssm = self._client("ssm")
        with aws_errors("ssm", "GetParameter"):
            got = ssm.get_parameter(Name=KEY_PATH + name, WithDecryption=True)
        return str(got["Parameter"]["Value"])

    def _delete_key(self, name: str) -> None:
        ssm = self._client("ssm")
        try:
            ssm.delete_parameter(Name=KEY_PATH + name)
        except ssm.exceptions.ParameterNotFound:
            return

    # ---------------------------------------------------------- reading
    def _schedule(self, name: str) -> dict[str, Any] | None:
        scheduler = self._client("scheduler")
        with aws_errors("scheduler", "GetSchedule"):
            try:
                got: dict[str, Any] = scheduler.get_schedule(Name=name, GroupName=GROUP)
            except scheduler.exceptions.ResourceNotFoundException:
                return None
        return got

    def _rule(self, name: str) -> dict[str, Any] | None:
        events = self._client("events")
        with aws_errors("events", "DescribeRule"):
            try:
                rule: dict[str, Any] = events.describe_rule(Name=RULE_PREFIX + name)
            except events.exceptions.ResourceNotFoundException:
                return None
        with aws_errors("events", "ListTargetsByRule"):
            rule["Targets"] = events.list_targets_by_rule(Rule=RULE_PREFIX + name)["Targets"]
        return rule

    def exists(self, name: str) -> bool:
        return self._schedule(name) is not None or self._rule(name) is not None

    def all(self) -> list[dict[str, Any]]:
        """Every schedule and trigger: name, kind, expression or prefix, state."""
        found: list[dict[str, Any]] = []
        scheduler = self._client("scheduler")
        schedules: list[dict[str, Any]] = []
        with aws_errors("scheduler", "ListSchedules"):
            try:
                for page in scheduler.get_paginator("list_schedules").paginate(GroupName=GROUP):
                    schedules += page.get("Schedules", [])
            except scheduler.exceptions.ResourceNotFoundException:
                pass  # no group yet: no schedule was ever made here
        for s in schedules:
            full = self._schedule(s["Name"]) or {}
            found.append(
                {
                    "name": s["Name"],
                    "kind": "schedule",
                    "when": full.get("ScheduleExpression", ""),
                    "state": s.get("State", ""),
                }
            )
        events = self._client("events")
        rules: list[dict[str, Any]] = []
        with aws_errors("events", "ListRules"):
            for page in events.get_paginator("list_rules").paginate(NamePrefix=RULE_PREFIX):
                rules += page.get("Rules", [])
        for r in rules:
            pattern = json.loads(r.get("EventPattern") or "{}")
            detail = pattern.get("detail", {})
            bucket = (detail.get("bucket", {}).get("name") or [""])[0]
            prefix = ((detail.get("object", {}).get("key") or [{}])[0]).get("prefix", "")
            found.append(
                {
                    "name": r["Name"][len(RULE_PREFIX) :],
                    "kind": "trigger",
                    "when": f"s3://{bucket}/{prefix}",
                    "state": r.get("State", ""),
                }
            )
        return found

    def describe(self, name: str) -> dict[str, Any]:
        """What the schedule runs, when, and whether its image is still in the registry."""
        schedule = self._schedule(name)
        made: dict[str, Any]
        if schedule is not None:
            made = schedule
            submit = json.loads(schedule["Target"]["Input"])
            doc = {
                "name": name,
                "kind": "schedule",
                "when": schedule["ScheduleExpression"],
                "state": schedule.get("State"),
                "submit": submit,
                "definition": submit["jobDefinition"],
            }
        else:
            rule = self._rule(name)
            if rule is None:
                raise NbcontainerError(f"No schedule or trigger named {name!r}.")
            made = rule
            target = next((t for t in rule["Targets"] if t.get("Id") == "batch"), None)
            if target is None:
                raise NbcontainerError(f"The trigger {name!r} has lost its Batch target.")
            doc = {
                "name": name,
                "kind": "trigger",
                "when": json.loads(rule["EventPattern"]),
                "state": rule.get("State"),
                "target": target,
                "definition": target["BatchParameters"]["JobDefinition"],
            }
        doc.update(_described(made.get("Description")))
        container = self._definition(doc["definition"])
        image = container.get("image")
        doc["image"] = image
        doc["image_status"] = image_status(image) if image else "the job definition is gone"
        # The parameters the jobs get, from what they get them from (the description may
        # have been cut): the schedule's request, else the trigger's job definition.
        env = (doc.get("submit") or {}).get("containerOverrides", container).get("environment")
        values = {e["name"]: e["value"] for e in env or []}
        doc["params"] = json.loads(values.get(PARAMS_ENV) or "{}")
        return doc

    def _definition(self, definition: str) -> dict[str, Any]:
        """The job definition's containerProperties ({} once it is deregistered)."""
        with aws_errors("batch", "DescribeJobDefinitions"):
            found = self.backend.batch.describe_job_definitions(jobDefinitions=[definition])
        defs = found.get("jobDefinitions", [])
        return dict(defs[0]["containerProperties"]) if defs else {}

    # ------------------------------------------------------------ delete
    def delete(self, name: str) -> None:
        """The schedule or trigger, its job definition and its key (its runs stay)."""
        doc = self.describe(name)
        if doc["kind"] == "schedule":
            with aws_errors("scheduler", "DeleteSchedule"):
                self._client("scheduler").delete_schedule(Name=name, GroupName=GROUP)
        else:
            events = self._client("events")
            with aws_errors("events", "RemoveTargets"):
                events.remove_targets(Rule=RULE_PREFIX + name, Ids=["batch"])
            with aws_errors("events", "DeleteRule"):
                events.delete_rule(Name=RULE_PREFIX + name)
            with aws_errors("batch", "DeregisterJobDefinition"):
                self.backend.batch.deregister_job_definition(jobDefinition=doc["definition"])
        self._delete_key(name)

    def jobs(self, name: str, doc: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The Batch jobs the schedule or trigger started (found by its jobs' name), oldest
        first, each with its status and where its outputs go; `doc` is its describe(),
        when the caller has it."""
        doc = doc or self.describe(name)
        job_name = (doc.get("submit") or {}).get("jobName") or doc.get("target", {}).get(
            "BatchParameters", {}
        ).get("JobName")
        found: dict[str, dict[str, Any]] = {}
        pages = self.backend.batch.get_paginator("list_jobs")
        for status in BATCH_STATUSES:
            with aws_errors("batch", "ListJobs"):
                for page in pages.paginate(
                    jobQueue=self.settings["queue"],
                    jobStatus=status,
                    filters=[{"name": "JOB_NAME", "values": [job_name]}],
                ):
                    for job in page.get("jobSummaryList", []):
                        found[job["jobId"]] = job
        uri = self.output_prefix(name)
        return [
            {**j, "output_uri": f"{uri}/{j['jobId']}/"}
            for j in sorted(found.values(), key=lambda j: j.get("createdAt", 0))
        ]

    def job_parameters(self, job_ids: list[str]) -> dict[str, dict[str, str]]:
        """What each of a trigger's jobs was given (the object's bucket and key), by id."""
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(job_ids), 100):  # DescribeJobs takes 100 at a time
            with aws_errors("batch", "DescribeJobs"):
                page = self.backend.batch.describe_jobs(jobs=job_ids[start : start + 100])
            for job in page.get("jobs", []):
                given = job.get("parameters") or {}
                found[job["jobId"]] = {p: given[p] for p in TRIGGER_PARAMS if given.get(p)}
        return found

    # ----------------------------------------------------------- run now
    def run_now(self, name: str, bucket: str | None = None, key: str | None = None) -> str:
        """Submit what the schedule's target submits, verbatim (a trigger's: its job
        definition with `bucket` and `key` as the object's); returns the job id."""
        doc = self.describe(name)
        if doc["kind"] == "schedule":
            submit = dict(doc["submit"])
        else:
            target = doc["target"]
            submit = {
                "jobName": target["BatchParameters"]["JobName"],
                "jobQueue": target["Arn"],
                "jobDefinition": target["BatchParameters"]["JobDefinition"],
                "parameters": {"input_bucket": bucket or "", "input_key": key or ""},
            }
        return self.submit_verbatim(submit)

    def submit_verbatim(self, submit: Mapping[str, Any]) -> str:
        with aws_errors("batch", "SubmitJob"):
            return str(self.backend.batch.submit_job(**submit)["jobId"])


def trigger_submit(target: Mapping[str, Any], transformed: Mapping[str, Any]) -> dict[str, Any]:
    """The SubmitJob request EventBridge makes of a rule's Batch target and the input its
    transformer made (``{"Parameters": ..., "ContainerOverrides": ...}``)."""
    submit: dict[str, Any] = {
        "jobName": target["BatchParameters"]["JobName"],
        "jobQueue": target["Arn"],
        "jobDefinition": target["BatchParameters"]["JobDefinition"],
    }
    if "Parameters" in transformed:
        submit["parameters"] = {str(k): str(v) for k, v in transformed["Parameters"].items()}
    if "ContainerOverrides" in transformed:
        submit["containerOverrides"] = {
            k[0].lower() + k[1:]: v for k, v in transformed["ContainerOverrides"].items()
        }
    return submit


def _description(req: ScheduleRequest) -> str:
    """What a schedule records of itself (EventBridge's description: 512 characters)."""
    doc = {"image": req.image, "params": req.params, "notebook": req.notebook}
    text = json.dumps(doc, default=str)
    if len(text) > 512:
        text = json.dumps({"image": req.image, "params": "(too long to show)"})
    return text


def _described(description: str | None) -> dict[str, Any]:
    """What create wrote in the description (image, parameters, notebook), or nothing."""
    try:
        doc = json.loads(description or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def image_status(image: str) -> str:
    """Whether a registry still holds `image` (repo@digest or repo:tag): "present",
    "deleted from its registry", or why it could not be told."""
    host, _, rest = image.partition("/")
    repo, sep, ref = rest.partition("@")
    if not sep:
        repo, _, ref = rest.rpartition(":")
    if ".dkr.ecr." in host:
        from .aws import client

        ecr = client("ecr")
        ident = {"imageDigest": ref} if ref.startswith("sha256:") else {"imageTag": ref}
        try:
            ecr.describe_images(repositoryName=repo, imageIds=[ident])
            return "present"
        except ecr.exceptions.ImageNotFoundException:
            return "deleted from its registry"
        except Exception as exc:  # no permission, no network: said, not guessed
            return f"unknown ({type(exc).__name__}: {exc})"
    scheme = "http" if host.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    request = urllib.request.Request(
        f"{scheme}://{host}/v2/{repo}/manifests/{ref}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return "present"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "deleted from its registry"
        return f"unknown (the registry answered {exc.code})"
    except OSError as exc:
        return f"unknown (the registry could not be reached: {exc})"

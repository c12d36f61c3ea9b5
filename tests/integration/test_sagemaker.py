"""%%remote_run --backend sagemaker against the AWS test bed: moto in server mode for the
SageMaker, S3, IAM and CloudWatch Logs APIs, Debian's docker-registry for the push.

moto's SageMaker runs no training container: it records the job and reports it
Completed at once, with one "Starting" transition, no BillableTimeInSeconds, and
placeholder MetricDefinitions in its describe (so the request is checked as sent,
against botocore's service model); it uploads nothing (so the run's outputs are
missing and the run ends FAILED, saying so) and has no StopTrainingJob (500). Execution
of the same request is tested under SageMaker's own local mode
(test_sagemaker_local.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import boto3
import botocore.session
import pytest
from botocore.validate import ParamValidator
from IPython.core.error import UsageError

from nbcontainer_kernel.backends.base import Job, Phase, RunSpec
from nbcontainer_kernel.backends.registry import get_backend
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import CloudError, MissingSetting, NbcontainerError
from tests.helpers import record_calls

pytestmark = pytest.mark.integration

SETTINGS = {
    "SageMakerBackend.registry": "NBCONTAINER_REGISTRY",
    "SageMakerBackend.s3_prefix": "NBCONTAINER_S3_PREFIX",
    "SageMakerBackend.role": "NBCONTAINER_BATCH_JOB_ROLE",  # the test bed's one role
}


@pytest.fixture
def sm_ip(ip, aws_env: dict[str, str]):
    """The shell with the test bed's settings, set as a user would (%config)."""
    for trait, env in SETTINGS.items():
        ip.run_line_magic("config", f"{trait} = {aws_env[env]!r}")
    yield ip
    for trait in SETTINGS:
        ip.run_line_magic("config", f"{trait} = None")


def _sent(operation: str) -> list[dict]:
    """The requests the sagemaker backend sends to `operation`."""
    service = "sagemaker" if operation.endswith("TrainingJob") else "s3"
    return record_calls("sagemaker", service, operation)


def test_a_cell_sends_a_valid_training_job_request_and_the_run_is_recorded(
    sm_ip, ledger: Ledger
) -> None:
    ip = sm_ip
    sent = _sent("CreateTrainingJob")
    result = ip.run_cell(
        "%%remote_run --backend sagemaker --name smm -p rate=0.5 --timeout 600 --spot "
        "--instance-type ml.c5.xlarge --volume-size 50\n"
        "from nbcontainer_kernel import log_metric\nlog_metric('loss', 1 - rate)\nfit = rate"
    )
    # moto ran nothing: no model.tar.gz, so the outputs cannot be verified.
    assert isinstance(result.error_in_exec, NbcontainerError)
    row = ledger.get("smm-1")
    assert row["backend"] == "sagemaker" and row["status"] == "FAILED"
    assert "no results manifest" in row["failure"]
    assert [p for p, _ in row["phases"]][:4] == ["SNAPSHOT", "BUILD", "PUSH", "SUBMITTED"]
    assert row["platform"]["instance_type"] == "ml.c5.xlarge"
    request = sent[-1]
    shape = (
        botocore.session.get_session()
        .get_service_model("sagemaker")
        .operation_model("CreateTrainingJob")
        .input_shape
    )
    assert shape is not None
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    algo = request["AlgorithmSpecification"]
    assert algo["TrainingImage"] == row["image"] and "@sha256:" in row["image"]
    assert algo["TrainingImage"].startswith(os.environ["NBCONTAINER_REGISTRY"])
    assert algo["MetricDefinitions"] == [
        {"Name": "loss", "Regex": r"\[nbcontainer-metric\] loss=(\S+)"}
    ]
    assert request["RoleArn"] == os.environ["NBCONTAINER_BATCH_JOB_ROLE"]
    assert request["HyperParameters"] == {"rate": "0.5"}
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.c5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
    }
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 600
    assert request["EnableManagedSpotTraining"] is True
    prefix = os.environ["NBCONTAINER_S3_PREFIX"]
    run_uri = request["OutputDataConfig"]["S3OutputPath"]
    assert re.fullmatch(re.escape(prefix) + r"/smm-1-[0-9a-f]{8}/", run_uri)
    assert request["CheckpointConfig"]["S3Uri"] == f"{run_uri}checkpoints/"
    # The key goes by reference (an input channel from an S3 object under the run's
    # prefix): no Describe answer holds it, and the object goes when the run ends.
    assert "NBCONTAINER_RUN_KEY" not in request["Environment"]
    assert request["Environment"]["NBCONTAINER_RUN_KEY_REF"] == "channel:nbcontainer-key"
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    key_uri = channels["nbcontainer-key"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert key_uri == f"{run_uri}nbcontainer-key/"
    bucket, _, key_prefix = key_uri[len("s3://") :].partition("/")
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=key_prefix)
    assert listed.get("KeyCount", 0) == 0, "the key object outlived its run"
    # What SageMaker (moto) recorded: found again by the name the ledger holds.
    sm = boto3.client("sagemaker")
    desc = sm.describe_training_job(TrainingJobName=row["job"]["job_name"])
    assert row["run_key"] not in json.dumps(desc, default=str)
    assert desc["AlgorithmSpecification"]["TrainingImage"] == row["image"]
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]}
    assert tags["io.nbcontainer.run-id"] == "smm-1"
    logs = (ledger.run_dir("smm-1") / "logs.txt").read_text()
    assert "[sagemaker] Starting: Preparing the instances for training" in logs
    # The run key never reaches a log.
    assert row["run_key"] not in logs


def test_a_parameter_set_too_large_for_hyperparameters_goes_by_s3(sm_ip, ledger: Ledger) -> None:
    ip = sm_ip
    sent = _sent("CreateTrainingJob")
    ip.user_ns["vocab"] = None
    result = ip.run_cell(
        "%%remote_run --backend sagemaker --name smbig -p vocab=" + repr("w" * 3000) + "\nn = 1"
    )
    assert result.error_in_exec is not None  # moto ran nothing (see the module's docstring)
    request = sent[-1]
    assert list(request["HyperParameters"]) == ["nbcontainer_params_sha256"]
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"nbcontainer-params", "nbcontainer-key"}
    uri = channels["nbcontainer-params"]["DataSource"]["S3DataSource"]["S3Uri"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key + "params.json")["Body"].read()
    assert json.loads(body) == {"vocab": "w" * 3000}
    assert (
        hashlib.sha256(body).hexdigest() == request["HyperParameters"]["nbcontainer_params_sha256"]
    )
    assert ledger.get("smbig-1")["params"] == {"vocab": "w" * 3000}


def test_status_is_polled_and_cloudwatch_logs_are_followed(aws_env: dict[str, str]) -> None:
    backend = get_backend("sagemaker")
    settings = backend.settings(
        {
            "role": aws_env["NBCONTAINER_BATCH_JOB_ROLE"],
            "s3_prefix": aws_env["NBCONTAINER_S3_PREFIX"],
            "registry": aws_env["NBCONTAINER_REGISTRY"],
        }
    )
    backend.check(settings)
    job = backend.submit(RunSpec("logs-1", "127.0.0.1:1/r@sha256:" + "b" * 64, settings=settings))
    # What SageMaker's agent would write; moto keeps no log group of its own.
    logs = boto3.client("logs")
    stream = f"{job.handle['job_name']}/algo-1-1764590000"
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    try:
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs",
            logStreamName=stream,
            logEvents=[
                {"timestamp": now, "message": "[nbcontainer] cell run"},
                {"timestamp": now + 1, "message": "[nbcontainer-metric] loss=0.5"},
            ],
        )
        assert backend.status(job) == (Phase.SUCCEEDED, 0)
        lines = backend.logs(job)
        assert lines[-2:] == ["[nbcontainer] cell run", "[nbcontainer-metric] loss=0.5"]
        assert backend.logs(job, len(lines)) == []  # read forward, never twice
    finally:
        logs.delete_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
        backend.cleanup(job)


def test_no_wait_then_attach_from_a_new_runner_finds_the_job(sm_ip, ledger: Ledger) -> None:
    from nbcontainer_kernel.backends.base import Hooks
    from nbcontainer_kernel.remote.runs import RemoteRunner

    handle = sm_ip.run_cell("%%remote_run --backend sagemaker --no-wait --name smbg\nz = 1").result
    deadline = time.monotonic() + 120
    while not ledger.get(handle.run_id)["job"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    handle.wait(120)
    job_name = ledger.get(handle.run_id)["job"]["job_name"]
    # A new kernel: the job is found by the name recorded in the ledger.
    backend = get_backend("sagemaker")
    assert backend.status(Job("sagemaker", handle.run_id, {"job_name": job_name}))[0].terminal
    with pytest.raises(NbcontainerError):
        RemoteRunner(Ledger(ledger.path)).attach(handle.run_id, {}, Hooks())
    assert ledger.get(handle.run_id)["status"] == "FAILED"


@pytest.mark.parametrize(
    ("line", "error", "says"),
    [
        ("--backend sagemaker", MissingSetting, "SageMakerBackend.role is not set"),
        ("--backend sagemaker --gpus 1", UsageError, "ml.m5.large has no GPU"),
        ("--backend sagemaker-local --gpus 1", UsageError, "use --instance-type local_gpu"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_run_is_recorded(
    sm_ip, ledger: Ledger, line: str, error: type[Exception], says: str
) -> None:
    if "role" in says:
        sm_ip.run_line_magic("config", "SageMakerBackend.role = None")
    result = sm_ip.run_cell(f"%%remote_run {line} --name smbad\nx = 1")
    assert isinstance(result.error_in_exec, error) and says in str(result.error_in_exec)
    (row,) = ledger.find(name="smbad")
    assert row["status"] == "FAILED" and says in row["failure"]
    assert [p for p, _ in row["phases"]] == ["FAILED"], "refused before any snapshot or build"


def test_no_credentials_is_a_clear_error_before_any_build(
    sm_ip, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = sm_ip.run_cell("%%remote_run --backend sagemaker --name smcred\nx = 1")
    err = result.error_in_exec
    assert isinstance(err, CloudError) and err.code == "NoCredentials"
    assert "AWS_PROFILE" in str(err)
    row = ledger.get("smcred-1")
    assert row["status"] == "FAILED" and "NoCredentials" in row["failure"]


def test_a_sweep_is_one_training_job_per_child(sm_ip, ledger: Ledger) -> None:
    from nbcontainer_kernel.runtime.errors import SweepFailed

    sent = _sent("CreateTrainingJob")
    result = sm_ip.run_cell(
        "%%remote_run --backend sagemaker --name smsw --sweep rate=0.1,0.2,0.3 --max-parallel 2\n"
        "loss = 1 - rate"
    )
    # moto ran nothing (see the module's docstring): every child is named as failed.
    assert isinstance(result.error_in_exec, SweepFailed)
    children = ledger.find(parent="smsw-1")
    assert len(children) == 3
    mine = [r for r in sent if r["TrainingJobName"].startswith("nbc-smsw-")]
    assert sorted(r["HyperParameters"]["rate"] for r in mine) == ["0.1", "0.2", "0.3"]
    assert len({r["TrainingJobName"] for r in mine}) == 3
    # Each child is its own job, so each has its own signing key (a channel object of its own).
    key_uris = {
        c["DataSource"]["S3DataSource"]["S3Uri"]
        for r in mine
        for c in r["InputDataConfig"]
        if c["ChannelName"] == "nbcontainer-key"
    }
    assert len(key_uris) == 3
    assert not any("NBCONTAINER_RUN_KEY" in r["Environment"] for r in mine)
    assert {c["job"]["job_name"] for c in children} == {r["TrainingJobName"] for r in mine}

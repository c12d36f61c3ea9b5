"""The parts of the SageMaker backends that need no AWS and no Docker: job names, the
hyperparameter encoding (and the parameters channel beyond SageMaker's limits), the
CreateTrainingJob request (checked against botocore's own service model), SageMaker's
statuses, what the runner carries past SageMaker's upload rules, compose's output lines,
and the backend's state machine over a scripted client behind its own seam."""

from __future__ import annotations

import functools
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel import config
from nbcontainer_kernel.backends.base import Phase, RunSpec
from nbcontainer_kernel.backends.sagemaker import (
    SageMakerBackend,
    has_gpus,
    hyperparameters_for,
    job_name_for,
    sagemaker_phase,
    training_job_request,
    unpack_training_outputs,
)
from nbcontainer_kernel.backends.sagemaker_local import clean_compose_line
from nbcontainer_kernel.runtime.errors import CloudError, InvalidOption, MissingSetting
from nbcontainer_kernel.runtime.metrics import metric_names_in, metric_regex
from nbcontainer_kernel.runtime.params import resolve_params
from nbcontainer_kernel.runtime.paths import Paths
from nbcontainer_kernel.runtime.training import (
    PARAMS_CHANNEL,
    PARAMS_SHA256,
    carry_unreturned,
    restore_carried,
)
from nbcontainer_kernel.runtime.trust import RunOutputs, new_key, seal
from tests.helpers import examples

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # CreateTrainingJob's pattern


# ------------------------------------------------------------------- job names
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", fullmatch=True), st.integers(1, 10**6))
def test_job_names_are_valid_for_sagemaker_for_every_run_id(name: str, seq: int) -> None:
    job = job_name_for(f"{name}-{seq}")
    assert _JOB_NAME.match(job) and len(job) <= 63 and job.startswith("nbc-")


def test_job_names_are_unique_per_submission() -> None:
    assert len({job_name_for("lda-3") for _ in range(200)}) == 200


# ------------------------------------------------------------- hyperparameters
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)
_names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda n: n not in ("if", "in", "is", "or", "as", "def", "for", "and", "not", "del", "try")
)


@settings(max_examples=examples(150), deadline=None)
@given(params=st.dictionaries(_names, _json_values, max_size=6))
def test_hyperparameters_bring_back_exactly_the_values_and_types_sent(
    params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """As SageMaker does: string values in hyperparameters.json, read by the runner."""
    hyper, document = hyperparameters_for(params)
    assert document is None and all(isinstance(v, str) for v in hyper.values())
    config = tmp_path_factory.mktemp("ml") / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyper))
    got, _ = resolve_params([], {}, config / "hyperparameters.json")
    assert got == params and [type(v) for v in got.values()] == [type(v) for v in params.values()]


def test_a_string_that_looks_like_a_number_stays_a_string() -> None:
    hyper, _ = hyperparameters_for({"code": "7", "n": 7, "flag": "true"})
    assert hyper == {"code": '"7"', "n": "7", "flag": '"true"'}


@pytest.mark.parametrize(
    ("params", "by_channel"),
    [
        ({f"p{i}": i for i in range(99)}, False),  # 99 + none of ours: fits
        ({f"p{i}": i for i in range(100)}, True),  # SageMaker takes at most 100
        ({"text": "x" * 2498}, False),  # 2,500 characters once JSON-quoted
        ({"text": "x" * 2499}, True),
        ({"k" * 256: 1}, False),
        ({"k" * 257: 1}, True),
    ],
)
def test_parameter_sets_beyond_sagemakers_limits_go_as_a_channel(
    params: dict[str, Any], by_channel: bool, tmp_path: Path
) -> None:
    hyper, document = hyperparameters_for(params)
    assert (document is not None) == by_channel
    if not by_channel:
        return
    assert list(hyper) == [PARAMS_SHA256]
    ml = tmp_path / "ml"
    (ml / "input" / "config").mkdir(parents=True)
    (ml / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
    channel = ml / "input" / "data" / PARAMS_CHANNEL
    channel.mkdir(parents=True)
    assert document is not None
    (channel / "params.json").write_bytes(document)
    if all(k.isidentifier() for k in params):
        got, source = resolve_params([], {}, ml / "input" / "config" / "hyperparameters.json")
        assert got == params and PARAMS_CHANNEL in source
    # Changed on its way (in S3): refused, nothing runs with it.
    (channel / "params.json").write_bytes(document.replace(b"1", b"2", 1) + b" ")
    with pytest.raises(ValueError, match="not the ones submitted"):
        resolve_params([], {}, ml / "input" / "config" / "hyperparameters.json")


# ----------------------------------------------------------------- the request
def _spec(**kw: Any) -> RunSpec:
    base: dict[str, Any] = {
        "run_id": "lda-3",
        "image": "127.0.0.1:5000/runs@sha256:" + "a" * 64,
        "params": {"rate": 0.1},
        "env": {"NBCONTAINER_RUN_KEY": new_key()},
        "metric_names": ["loss", "val/acc"],
        "notebook": "work/train.ipynb",
    }
    base.update(kw)
    return RunSpec(**base)


@functools.cache
def _sagemaker_model() -> Any:
    """botocore's model of the SageMaker API (loaded once, when a test first asks)."""
    return botocore.session.get_session().get_service_model("sagemaker")


@pytest.mark.parametrize(
    ("settings_", "spec_kw", "channel"),
    [
        ({}, {}, None),
        ({"instance_type": "ml.g5.xlarge", "volume_size": 100}, {"timeout": 90.5}, None),
        ({"spot": True}, {"timeout": 600}, None),
        ({"spot": True, "spot_max_wait": 100}, {"timeout": 600}, None),
        ({}, {"params": {f"p{i}": i for i in range(150)}}, "s3://b/runs/lda-3/nbcontainer-params/"),
    ],
)
def test_the_request_is_valid_against_botocores_service_model(
    settings_: dict[str, Any], spec_kw: dict[str, Any], channel: str | None
) -> None:
    spec = _spec(**spec_kw)
    hyper, _ = hyperparameters_for(spec.params)
    request = training_job_request(
        spec,
        job_name=job_name_for(spec.run_id),
        role="arn:aws:iam::123456789012:role/sm",
        output_path="s3://b/runs/lda-3/",
        settings=settings_,
        params_channel_uri=channel,
        hyperparameters=hyper,
        checkpoint_uri="s3://b/runs/lda-3/checkpoints/",
        key_channel_uri="s3://b/runs/lda-3/nbcontainer-key/",
    )
    shape = _sagemaker_model().operation_model("CreateTrainingJob").input_shape
    assert shape is not None
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    algo = request["AlgorithmSpecification"]
    assert algo["TrainingImage"] == spec.image and algo["TrainingInputMode"] == "File"
    assert algo["MetricDefinitions"] == [
        {"Name": "loss", "Regex": metric_regex("loss")},
        {"Name": "val/acc", "Regex": metric_regex("val/acc")},
    ]
    assert request["Environment"]["NBCONTAINER_PLATFORM"] == "sagemaker"
    # The key travels by reference: an input channel; DescribeTrainingJob shows no key.
    assert "NBCONTAINER_RUN_KEY" not in request["Environment"]
    assert spec.env["NBCONTAINER_RUN_KEY"] not in json.dumps(request)
    assert request["Environment"]["NBCONTAINER_RUN_KEY_REF"] == "channel:nbcontainer-key"
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["nbcontainer-key"]["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://b/runs/lda-3/nbcontainer-key/"
    )
    stopping = request["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == (
        int(-(-spec.timeout // 1)) if spec.timeout else 86400
    )
    if settings_.get("spot"):
        assert request["EnableManagedSpotTraining"] is True
        assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"]
        assert request["CheckpointConfig"]["S3Uri"].endswith("/checkpoints/")
    else:
        assert "EnableManagedSpotTraining" not in request
    assert {t["Key"] for t in request["Tags"]} >= {
        "io.nbcontainer.run-id",
        "io.nbcontainer.notebook",
    }
    assert ("nbcontainer-params" in channels) == (channel is not None)


def test_metric_regexes_match_the_lines_log_metric_prints() -> None:
    for name, line in [
        ("loss", "[nbcontainer-metric] loss=0.25 step=3"),
        ("val/acc", "[nbcontainer-metric] val/acc=0.9"),
        ("a.b:c", "[nbcontainer-metric] a.b:c=-1e-05"),
    ]:
        m = re.search(metric_regex(name), line)
        assert m and float(m.group(1)) == float(line.split("=")[1].split()[0])


@pytest.mark.parametrize(
    ("cell", "names"),
    [
        ("log_metric('loss', 1)\nlog_metric('acc', 2)\nlog_metric('loss', 3)", ["loss", "acc"]),
        ('import nbcontainer_kernel as nk\nnk.log_metric("rmse", 0.1, step=2)', ["rmse"]),
        ("name = 'x'\nlog_metric(name, 1)", []),  # not a literal: no definition
        ("%time log_metric('t', 1)\n!echo hi", ["t"]),  # IPython syntax
        ("log_metric('bad name', 1)", []),
    ],
)
def test_metric_names_come_from_the_cells_literal_calls(cell: str, names: list[str]) -> None:
    assert metric_names_in(cell) == names


@pytest.mark.parametrize(
    ("instance_type", "gpus"),
    [
        ("ml.m5.large", False),
        ("ml.c5.2xlarge", False),
        ("ml.trn1.2xlarge", False),
        ("ml.p3.2xlarge", True),
        ("ml.p4d.24xlarge", True),
        ("ml.g5.xlarge", True),
        ("ml.g4dn.xlarge", True),
        ("local_gpu", True),
        ("local", False),
    ],
)
def test_gpu_instance_types(instance_type: str, gpus: bool) -> None:
    assert has_gpus(instance_type) is gpus


# -------------------------------------------------------------------- statuses
@pytest.mark.parametrize(
    ("status", "secondary", "phase"),
    [
        ("InProgress", "Starting", Phase.STARTING),
        ("InProgress", "Pending", Phase.QUEUED),
        ("InProgress", "LaunchingMLInstances", Phase.STARTING),
        ("InProgress", "Downloading", Phase.STARTING),
        ("InProgress", "DownloadingTrainingImage", Phase.STARTING),
        ("InProgress", "Training", Phase.RUNNING),
        ("InProgress", "Uploading", Phase.RUNNING),
        ("InProgress", "SomethingNew", Phase.STARTING),
        ("Stopping", "Stopping", Phase.RUNNING),
        ("Completed", "Completed", Phase.SUCCEEDED),
        ("Failed", "Failed", Phase.FAILED),
        ("Failed", "MaxRuntimeExceeded", Phase.FAILED),
        ("Stopped", "Stopped", Phase.CANCELLED),
    ],
)
def test_sagemaker_statuses_map_onto_phases(status: str, secondary: str, phase: Phase) -> None:
    assert sagemaker_phase(status, secondary) == phase


# ---------------------------------------------- past SageMaker's upload rules
def _run_outputs(tmp_path: Path, failed: bool, key: str) -> Paths:
    paths = Paths(tmp_path / "snap", tmp_path / "ml")
    paths.make()
    (paths.model / "scores.json").write_text("[1, 2]")
    (paths.output_data / "plot.txt").write_text("a plot")
    if failed:
        paths.failure.write_text("the cell raised: ZeroDivisionError: division by zero\n\ntb")
        paths.exception.write_bytes(b"pickled")
    seal(paths.ml, key, {"variables": {}})
    carry_unreturned(paths, failed=failed)
    return paths


def _tar(root: Path, members: list[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, name in members:
            tar.add(path, arcname=name)
    return buf.getvalue()


# A completed job's model.tar.gz is always uploaded; a failed job's may not be.
@pytest.mark.parametrize(("failed", "model_uploaded"), [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("local_mode", [False, True])
def test_what_sagemaker_returns_verifies_as_what_the_run_sealed(
    tmp_path: Path, failed: bool, model_uploaded: bool, local_mode: bool
) -> None:
    key = new_key()
    paths = _run_outputs(tmp_path, failed, key)
    model = [(p, p.name) for p in paths.model.iterdir()]
    if local_mode:  # local mode packs all of /opt/ml/output
        output = [(p, p.name) for p in paths.output.iterdir()]
    else:  # SageMaker: the files of /opt/ml/output/data only
        output = [(p, p.name) for p in paths.output_data.iterdir()]
    dest = tmp_path / "dest"
    unpack_training_outputs(
        [_tar(paths.ml, model)] if model_uploaded else None,
        [_tar(paths.ml, output)],
        dest,
        output_holds_data_dir=local_mode,
    )
    outputs = RunOutputs(dest, key)
    assert outputs.verdict() == "signed"
    assert outputs.read_text("output/data/plot.txt") == "a plot"
    assert not (dest / "output" / "data" / ".nbcontainer").exists()
    if failed:
        assert outputs.read_text("output/failure").startswith("the cell raised: ZeroDivision")
        assert outputs.read_bytes("output/exception.pkl") == b"pickled"


def test_a_carried_failure_changed_on_its_way_is_refused(tmp_path: Path) -> None:
    key = new_key()
    paths = _run_outputs(tmp_path, True, key)
    (paths.output_data / ".nbcontainer" / "failure").write_text("something else")
    dest = tmp_path / "dest"
    unpack_training_outputs(
        [_tar(paths.ml, [(p, p.name) for p in paths.model.iterdir()])],
        [_tar(paths.ml, [(p, p.name) for p in paths.output_data.iterdir()])],
        dest,
    )
    assert (
        RunOutputs(dest, key).verdict()
        == "refused: output/failure: its content differs from the signed digest"
    )


def test_restore_leaves_a_directory_without_carried_files_alone(tmp_path: Path) -> None:
    (tmp_path / "output" / "data").mkdir(parents=True)
    restore_carried(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "output"]


# ------------------------------------------------------------- compose's output
@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ("abcdef1234-algo-1-xyz12  | [nbcontainer] cell run\r\n", "[nbcontainer] cell run"),
        ("\x1b[36mabcdef1234-algo-1-xyz12 |\x1b[0m trained with 7\r\n", "trained with 7"),
        (
            "Creating abcdef1234-algo-1-xyz12 ... \x1b[32mdone\x1b[0m\r\n",
            "[sagemaker-local] Creating abcdef1234-algo-1-xyz12 ... done",
        ),
        (
            "Attaching to abcdef1234-algo-1-xyz12\n",
            "[sagemaker-local] Attaching to abcdef1234-algo-1-xyz12",
        ),
        ("\r\n", None),
        ("abcdef1234-algo-1-xyz12  | a | b\n", "a | b"),
    ],
)
def test_compose_lines_become_clean_log_lines(raw: str, line: str | None) -> None:
    assert clean_compose_line(raw) == line


# --------------------------------------- the backend over a scripted client
class _ScriptedSageMaker:
    """Answers DescribeTrainingJob from a script of states; records Create and Stop."""

    def __init__(self, states: list[tuple[str, str]], failure: str = "") -> None:
        self.states, self.failure = states, failure
        self.created: list[dict[str, Any]] = []
        self.stopped: list[str] = []
        self.described = 0

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        self.created.append(request)
        return {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/x"}

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        status, secondary = self.states[min(self.described, len(self.states) - 1)]
        self.described += 1
        transitions = [
            {"Status": s, "StatusMessage": f"now {s}"} for _, s in self.states[: self.described]
        ]
        desc = {
            "TrainingJobStatus": status,
            "SecondaryStatus": secondary,
            "SecondaryStatusTransitions": transitions,
            "ResourceConfig": {"InstanceType": "ml.m5.large"},
            "BillableTimeInSeconds": 40,
            "TrainingTimeInSeconds": 100,
            "EnableManagedSpotTraining": True,
        }
        if status == "Failed":
            desc["FailureReason"] = self.failure
        return desc

    def stop_training_job(self, TrainingJobName: str) -> None:
        if self.states[-1][0] in ("Completed", "Failed"):
            import botocore.exceptions

            raise botocore.exceptions.ClientError(
                {
                    "Error": {
                        "Code": "ValidationException",
                        "Message": "The job status is Completed",
                    }
                },
                "StopTrainingJob",
            )
        self.stopped.append(TrainingJobName)


class _Objects:
    """S3 as the backend uses it here: the run's key object put, then deleted."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}

    def put_object(self, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:  # noqa: N803
        self.objects[f"{Bucket}/{Key}"] = kw
        return {}

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.objects.pop(f"{Bucket}/{Key}", None)
        return {}


_RUN_SETTINGS = {"role": "arn:aws:iam::1:role/r", "s3_prefix": "s3://b/runs"}


def _backend(client: _ScriptedSageMaker) -> SageMakerBackend:
    backend = SageMakerBackend()
    backend._clients._clients["sagemaker"] = client
    backend._clients._clients["s3"] = _Objects()
    return backend


@pytest.mark.parametrize("kms_key", [None, "alias/runs"])
def test_the_run_key_is_a_channel_object_encrypted_at_rest_and_deleted_at_the_end(
    kms_key: str | None,
) -> None:
    client = _ScriptedSageMaker([("Completed", "Completed")])
    backend = _backend(client)
    spec = _spec(settings=backend.settings({**_RUN_SETTINGS, "kms_key": kms_key}))
    job = backend.submit(spec)
    objects = backend._clients._clients["s3"].objects
    [(where, put)] = objects.items()
    assert where.startswith("b/runs/lda-3-") and where.endswith("/nbcontainer-key/run-key")
    assert put["Body"] == spec.env["NBCONTAINER_RUN_KEY"].encode()
    if kms_key:
        assert (put["ServerSideEncryption"], put["SSEKMSKeyId"]) == ("aws:kms", kms_key)
    else:
        assert put["ServerSideEncryption"] == "AES256"
    assert spec.env["NBCONTAINER_RUN_KEY"] not in json.dumps(client.created[0])
    backend.cleanup(job)
    assert objects == {}


def test_phases_and_status_lines_follow_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    script = [
        ("InProgress", "Starting"),
        ("InProgress", "Downloading"),
        ("InProgress", "Training"),
        ("Failed", "Failed"),
    ]
    client = _ScriptedSageMaker(script, "AlgorithmError: the cell raised, exit code: 3")
    backend = _backend(client)
    monkeypatch.setattr(backend, "_read_log", lambda job, state: None)
    job = backend.submit(_spec(settings=backend.settings(_RUN_SETTINGS)))
    seen = []
    for _ in script:
        phase, code = backend.status(job)
        backend._jobs[job.handle["job_name"]].fetched = 0  # as if a second had passed
        seen.append((phase, code))
    assert seen == [
        (Phase.STARTING, None),
        (Phase.STARTING, None),
        (Phase.RUNNING, None),
        (Phase.FAILED, 3),
    ]
    assert backend.logs(job)[-1] == "[sagemaker] Failed: now Failed"
    assert backend.end_reason(job) == "SageMaker: AlgorithmError: the cell raised, exit code: 3"
    assert backend.accounting(job) == {
        "instance_type": "ml.m5.large",
        "job_name": job.handle["job_name"],
        "billable_seconds": 40,
        "spot_savings": 0.6,
    }


def test_cancel_stops_the_job_and_a_job_that_ended_meanwhile_is_not_an_error() -> None:
    client = _ScriptedSageMaker([("InProgress", "Training")])
    backend = _backend(client)
    job = backend.submit(_spec(settings=backend.settings(_RUN_SETTINGS)))
    backend.cancel(job)
    assert client.stopped == [job.handle["job_name"]]
    client.states = [("Completed", "Completed")]
    backend.cancel(job)  # ValidationException: it is Completed: nothing to stop
    assert client.stopped == [job.handle["job_name"]]


@pytest.mark.parametrize(
    ("settings_", "error", "names"),
    [
        (
            {"s3_prefix": "s3://b/p", "registry": "127.0.0.1:5000/r"},
            MissingSetting,
            "SageMakerBackend.role",
        ),
        (
            {"sagemaker_role": "arn:x", "registry": "127.0.0.1:5000/r"},
            MissingSetting,
            "SageMakerBackend.s3_prefix",
        ),
        (
            {"sagemaker_role": "arn:x", "s3_prefix": "s3://b/p"},
            MissingSetting,
            "SageMakerBackend.registry",
        ),
        (
            {"sagemaker_role": "arn:x", "s3_prefix": "b/p", "registry": "127.0.0.1:5000/r"},
            CloudError,
            "s3://",
        ),
        (
            {
                "sagemaker_role": "arn:x",
                "s3_prefix": "s3://b/p",
                "registry": "127.0.0.1:5000/r",
                "instance_count": 2,
            },
            InvalidOption,
            "--instance-count",
        ),
    ],
)
def test_settings_a_sagemaker_run_cannot_work_without_are_named(
    settings_: dict[str, Any], error: type[Exception], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given by their names in [tool.nbcontainer] (sagemaker_role), as earlier releases
    read them; named in errors as they are configured now."""
    for name in config.environment_variables():
        monkeypatch.delenv(name, raising=False)
    backend = SageMakerBackend()
    with pytest.raises(error, match=re.escape(names)):
        backend.check(backend.settings(settings_))


def test_gpus_on_an_instance_type_without_them_are_refused_naming_the_flag() -> None:
    backend = SageMakerBackend()
    with pytest.raises(InvalidOption, match="--gpus.*ml.m5.large has no GPU"):
        backend.check_resources(None, None, "1", {"instance_type": "ml.m5.large"})
    backend.check_resources(None, None, "1", {"instance_type": "ml.g5.xlarge"})


def test_local_modes_session_holds_no_credentials_even_when_the_environment_has_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local mode writes a session's credentials into its compose file (which stays)."""
    import sagemaker.core.local.image as image

    from nbcontainer_kernel.backends.sagemaker_local import _local_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    session = _local_session("us-east-1", tmp_path, {"labels": {"a": "b"}, "cpus": 1.0})
    assert session.boto_session.get_credentials() is None
    assert image._aws_credentials(session.boto_session) is None
    assert session.config["local"]["container_config"] == {"labels": {"a": "b"}, "cpus": 1.0}
    assert session.config["local"]["container_root"] == str(tmp_path)


def test_local_mode_in_a_guarded_kernel_says_it_needs_the_raw_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbcontainer_kernel.backends.sagemaker_local import SageMakerLocalBackend
    from nbcontainer_kernel.runtime.errors import InvalidOption

    monkeypatch.setenv("NBCONTAINER_DOCKER_ACCESS", "guarded")
    with pytest.raises(InvalidOption, match="docker_access 'raw'"):
        SageMakerLocalBackend().submit(None)  # type: ignore[arg-type]  # refused before use

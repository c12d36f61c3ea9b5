"""`nbcontainer run` and its friends against a real Docker engine and the AWS test bed:
notebooks, pipelines and sweeps on local Docker, Batch (one array job) and SageMaker,
recorded in the ledger beside cell runs; schedules and S3 triggers on moto.

moto's EventBridge records schedules and rules and calls no Batch: a schedule is run
with `run-now`, which submits the schedule's target input verbatim. moto's S3 delivers
an object's event to the rule's targets without applying their input transformers
(its S3 notification passes transform_input=False), and moto's transformer writes a
string placeholder without quotes; so the trigger's test reads the raw event moto
delivered to an SQS target beside the Batch one, applies the rule's transformer as
EventBridge documents it (eventbridge_transform), and submits what EventBridge would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import nbformat
import pytest
from botocore.validate import ParamValidator

from nbcontainer_kernel.cli import main
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.notebooks import containerize
from tests.helpers import new_code_cell, new_notebook, record_calls
from tests.integration.conftest import BASE_IMAGE

pytestmark = pytest.mark.integration

STUDY = (
    "import nbcontainer_kernel as nbk\n"
    "print('alpha is', alpha)\n"
    "nbk.record('mae', alpha * 2)\n"
    "nbk.record('label', label)"
)


def write_notebook(path: Path, params: str | None, *cells: str) -> str:
    made = [new_code_cell(c) for c in cells]
    if params is not None:
        p = new_code_cell(params)
        p.metadata["tags"] = ["parameters"]
        made.insert(0, p)
    nbformat.write(new_notebook(cells=made), path)
    return str(path)


@pytest.fixture
def study(tmp_path: Path) -> str:
    return write_notebook(
        tmp_path / "study.ipynb",
        "alpha = 0.1\nlabel = 'x'",
        STUDY,
        "assert alpha < 1, 'alpha too large'",
    )


@pytest.fixture
def cli(
    ledger: Ledger,
    new_images: None,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    """`nbcontainer ARGS` in this process (the backends' clients are the test's to watch);
    returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("NBCONTAINER_BASE_IMAGE", BASE_IMAGE)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _executed(path: str | Path) -> Any:
    return nbformat.read(path, as_version=4)


def test_a_notebook_sweep_runs_locally_and_every_child_leaves_its_notebook_and_values(
    cli: Callable[..., tuple[int, str, str]], ledger: Ledger, study: str, tmp_path: Path
) -> None:
    code, out, err = cli(
        "run",
        study,
        "--sweep",
        "alpha=0.2,5",
        "--sweep",
        "label=a,b",
        "-q",
        "--json",
        "-o",
        str(tmp_path / "copy"),
    )
    doc = json.loads(out)
    assert code == 1 and doc["status"] == "FAILED", err  # alpha=5 fails, the rest stand
    parent = ledger.get(doc["run"])
    children = ledger.find(parent=parent["id"])
    assert parent["kind"] == "notebook" and parent["notebook"] == str(Path(study).resolve())
    assert [c["status"] for c in children] == ["SUCCEEDED", "SUCCEEDED", "FAILED", "FAILED"]
    rows = {(r["alpha"], r["label"]): r for r in doc["recorded"]}
    assert rows[(0.2, "b")]["mae"] == 0.4 and rows[(5, "a")]["mae"] == 10  # failed: kept
    for child in children:
        assert child["kind"] == "notebook" and child["verdict"] == "signed"
        made = doc["notebooks"][child["id"]]
        assert [Path(p).name for p in made] == ["study.html", "study.ipynb"]
        executed = _executed(made[1])
        injected = [
            c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
        ]
        assert injected and f"alpha = {child['params']['alpha']!r}" in injected[0].source
        assert (tmp_path / "copy" / child["id"] / "output" / "data" / "study.ipynb").is_file()
    # The failed children's notebooks keep the failing cell's error.
    failed = _executed(doc["notebooks"][children[2]["id"]][1])
    assert any(
        o.get("ename") == "AssertionError" for c in failed.cells for o in c.get("outputs", [])
    )
    # Beside cell runs: the runs table and the ledger's frames list them.
    from nbcontainer_kernel.remote.tables import runs_frame

    frame = runs_frame(ledger, kind="notebook")
    assert parent["id"] in set(frame.id) and "recorded.mae" in frame.columns
    code, out, _ = cli("result", parent["id"], "--json")
    assert code == 0 and len(json.loads(out)) == 4


def test_a_failed_notebook_prints_its_failing_cell_and_exits_non_zero(
    cli: Callable[..., tuple[int, str, str]], ledger: Ledger, study: str
) -> None:
    code, out, err = cli("run", study, "-p", "alpha", "2", "--name", "bad")
    assert code == 1
    assert "notebook failed in cell 3: AssertionError: alpha too large" in err
    assert "assert alpha < 1" in err and "Traceback" in err
    assert "alpha is 2" in out  # the run's log, on stdout
    row = ledger.get("bad-1")
    assert row["status"] == "FAILED" and row["recorded"] == {"mae": 4, "label": "x"}
    assert (Path(row["result_dir"]) / "output" / "data" / "study.ipynb").is_file()


def test_a_pipeline_image_runs_its_notebooks_in_order_and_stops_at_the_first_failure(
    cli: Callable[..., tuple[int, str, str]],
    ledger: Ledger,
    engine: Engine,
    tmp_path: Path,
) -> None:
    write_notebook(
        tmp_path / "prepare.ipynb",
        "rows = 3",
        "import json, nbcontainer_kernel as nbk\n"
        "json.dump(list(range(rows)), open('/tmp/rows.json', 'w'))\nnbk.record('prepared', rows)",
    )
    write_notebook(
        tmp_path / "train.ipynb",
        "rows = 3\nfail = False",
        "import json, nbcontainer_kernel as nbk\n"
        "data = json.load(open('/tmp/rows.json'))\nassert not fail, 'asked to fail'\n"
        "nbk.record('trained', sum(data))",
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.nbcontainer.pipeline]\nnotebooks = ["prepare.ipynb", "train.ipynb"]\n'
    )
    tag = f"nbcontainer-test/pipeline:{os.getpid()}"
    old = os.getcwd()
    os.chdir(tmp_path)  # the pyproject table is found from here
    try:
        code, _, err = cli("containerize", "--tag", tag, "--base", BASE_IMAGE)
    finally:
        os.chdir(old)
    assert code == 0, err
    try:
        code, out, err = cli("run", tag, "-p", "rows", "4", "--json", "-q")
        doc = json.loads(out)
        assert code == 0, err
        assert doc["recorded"][0]["prepared"] == 4 and doc["recorded"][0]["trained"] == 6
        assert [Path(p).name for p in doc["notebooks"][doc["run"]]] == [
            "prepare.html",
            "prepare.ipynb",
            "train.html",
            "train.ipynb",
        ]
        code, _, err = cli("run", tag, "-p", "fail", "true", "--name", "pipe")
        assert code == 1
        assert "pipeline stopped at step 2 of 2 (train)" in err and "asked to fail" in err
        data = Path(ledger.get("pipe-1")["result_dir"]) / "output" / "data"
        assert (data / "prepare.ipynb").is_file() and (data / "train.ipynb").is_file()
        # An image's declared parameters are checked as a notebook's are.
        code, _, err = cli("run", tag, "-p", "nope", "1")
        assert code == 1 and "declares no parameter 'nope'" in err
        code, _, err = cli("run", f"{tag}-gone")
        assert code == 1 and f"nbcontainer containerize NOTEBOOK --tag {tag}-gone" in err
    finally:
        engine.remove_image(tag, force=True)


def test_the_command_line_itself_runs_an_image_and_keeps_the_ledger_it_is_told(
    engine: Engine, new_images: None, study: str, tmp_path: Path
) -> None:
    tag = f"nbcontainer-test/study-cli:{os.getpid()}"
    containerize(study, tag, base=BASE_IMAGE, engine=engine)
    env = {**os.environ, "NBCONTAINER_RUNS_DB": str(tmp_path / "cli" / "runs.db")}
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nbcontainer_kernel.cli",
                "run",
                tag,
                "-p",
                "alpha",
                "0.25",
                "--name",
                "cli",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "SUCCEEDED" in proc.stderr and "alpha is 0.25" in proc.stdout
        listed = subprocess.run(
            [sys.executable, "-m", "nbcontainer_kernel.cli", "runs", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        (row,) = json.loads(listed.stdout)
        assert row["id"] == "cli-1" and row["recorded"] == {"mae": 0.5, "label": "x"}
    finally:
        engine.remove_image(tag, force=True)


def test_a_notebook_runs_under_sagemakers_local_mode_as_a_training_image(
    cli: Callable[..., tuple[int, str, str]], ledger: Ledger, study: str
) -> None:
    code, out, err = cli(
        "run", study, "--backend", "sagemaker-local", "-p", "alpha", "0.3", "--json", "-q"
    )
    doc = json.loads(out)
    assert code == 0, err
    row = ledger.get(doc["run"])
    assert row["backend"] == "sagemaker-local" and row["verdict"] == "signed"
    # What SageMaker returns (model.tar.gz, output data) carried the values and notebook.
    assert row["recorded"] == {"mae": 0.6, "label": "x"}
    assert [Path(p).name for p in doc["notebooks"][doc["run"]]] == ["study.html", "study.ipynb"]
    logs = (Path(row["result_dir"]) / "logs.txt").read_text()
    assert "parameters from /opt/ml/input/config/hyperparameters.json" in logs


def test_a_run_left_to_itself_is_followed_collected_or_cancelled_from_another_process(
    cli: Callable[..., tuple[int, str, str]], ledger: Ledger, engine: Engine, tmp_path: Path
) -> None:
    from nbcontainer_kernel.docker import labels

    nb = write_notebook(
        tmp_path / "slow.ipynb",
        "seconds = 1",
        "import time, nbcontainer_kernel as nbk\nprint('sleeping', seconds, flush=True)\n"
        "time.sleep(seconds)\nprint('woke', flush=True)\nnbk.record('slept', seconds)",
    )
    env = {**os.environ, "NBCONTAINER_RUNS_DB": str(ledger.path)}

    def submit(name: str, seconds: int) -> str:
        # Another process submits and exits, as `nbcontainer run --no-wait` in a shell does.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nbcontainer_kernel.cli",
                "run",
                nb,
                "--no-wait",
                "--json",
                "--name",
                name,
                "-p",
                "seconds",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED") and doc["job"]
        return str(doc["run"])

    later = submit("later", 3)
    code, out, _ = cli("logs", later, "-f")  # follows the container's log to its end
    assert code == 0 and "sleeping 3" in out and "woke" in out
    code, out, err = cli("attach", later, "--json")
    assert code == 0, err
    assert json.loads(out)["recorded"] == [
        {"run": later, "status": "SUCCEEDED", "seconds": 3, "slept": 3}
    ]
    assert engine.containers({labels.RUN_ID: later}) == []

    stuck = submit("stuck", 300)
    code, out, _ = cli("cancel", "stuck")  # a name: its newest run
    assert code == 0 and f"{stuck}: CANCELLED" in out
    assert ledger.get(stuck)["status"] == "CANCELLED"
    assert engine.containers({labels.RUN_ID: stuck}) == []
    code, out, _ = cli("cancel", stuck)
    assert code == 0 and "already ended" in out


# ---------------------------------------------------------------------- AWS
@pytest.fixture
def batch_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("NBCONTAINER_SCHEDULE_ROLE", "arn:aws:iam::123456789012:role/scheduler")
    return aws_env


def test_a_notebook_sweep_on_batch_is_one_array_job_and_its_values_come_back(
    cli: Callable[..., tuple[int, str, str]], ledger: Ledger, study: str, batch_env: dict[str, str]
) -> None:
    submits = record_calls("batch", "batch", "SubmitJob")
    code, out, err = cli(
        "run", study, "--backend", "batch", "--sweep", "alpha=0.1,0.3,7", "--json", "-q"
    )
    doc = json.loads(out)
    assert code == 1, err  # alpha=7 fails
    assert len(submits) == 1 and submits[0]["arrayProperties"] == {"size": 3}
    env = {e["name"]: e["value"] for e in submits[0]["containerOverrides"]["environment"]}
    assert json.loads(env["NBCONTAINER_SWEEP"]) == [{"alpha": 0.1}, {"alpha": 0.3}, {"alpha": 7}]
    got = {r["alpha"]: (r["status"], r["mae"]) for r in doc["recorded"]}
    assert got == {0.1: ("SUCCEEDED", 0.2), 0.3: ("SUCCEEDED", 0.6), 7: ("FAILED", 14)}
    s3 = boto3.client("s3")
    children = ledger.find(parent=doc["run"])
    third = children[2]["job"]["output_uri"]  # <prefix>/<parent>-<8 hex>/2/
    bucket, _, prefix = third[len("s3://") :].partition("/")
    assert prefix.endswith("/2/")
    s3.head_object(Bucket=bucket, Key=f"{prefix}outputs.tar.gz")  # the failed child's too
    for child in children:
        assert child["kind"] == "notebook" and child["verdict"] == "signed"


def test_a_sweep_table_too_large_for_the_environment_is_read_from_s3_by_every_child(
    cli: Callable[..., tuple[int, str, str]],
    ledger: Ledger,
    tmp_path: Path,
    aws_env: dict[str, str],
) -> None:
    """Above 6 kB the table is an S3 object: each child reads it by a presigned GET (moto's
    job containers hold no credentials, as a job whose role is not handed over yet) and
    checks its SHA-256."""
    nb = write_notebook(
        tmp_path / "wide.ipynb",
        "note = ''\ni = 0",
        "import nbcontainer_kernel as nbk\nnbk.record('length', len(note) + i)",
    )
    rows = tmp_path / "rows.csv"
    rows.write_text("note,i\n" + "".join(f"{'x' * 3000},{i}\n" for i in range(3)))
    submits = record_calls("batch", "batch", "SubmitJob")
    code, out, err = cli("run", nb, "--backend", "batch", "--sweep-file", str(rows), "--json", "-q")
    assert code == 0, err
    env = {e["name"]: e["value"] for e in submits[0]["containerOverrides"]["environment"]}
    assert "NBCONTAINER_SWEEP" not in env and env["NBCONTAINER_SWEEP_URI"].startswith("s3://")
    assert env["NBCONTAINER_SWEEP_URL"].startswith(aws_env["AWS_ENDPOINT_URL"])
    assert sorted(r["length"] for r in json.loads(out)["recorded"]) == [3000, 3001, 3002]


def test_a_notebook_on_sagemaker_sends_one_training_job_per_child_at_most_max_parallel(
    cli: Callable[..., tuple[int, str, str]],
    ledger: Ledger,
    study: str,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBCONTAINER_SAGEMAKER_ROLE", aws_env["NBCONTAINER_BATCH_JOB_ROLE"])
    creates = record_calls("sagemaker", "sagemaker", "CreateTrainingJob")
    code, out, _ = cli(
        "run",
        study,
        "--backend",
        "sagemaker",
        "--sweep",
        "alpha=0.1,0.2,0.3",
        "--max-parallel",
        "2",
        "--instance-type",
        "ml.m5.large",
        "--json",
        "-q",
    )
    # moto's SageMaker runs nothing and uploads nothing: the runs end FAILED, saying so.
    assert code == 1
    assert len(creates) == 3
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape
    assert shape is not None
    for request in creates:
        assert not ParamValidator().validate(request, shape).has_errors()
        assert request["ResourceConfig"]["InstanceType"] == "ml.m5.large"
        assert request["AlgorithmSpecification"]["TrainingImage"].startswith(
            aws_env["NBCONTAINER_REGISTRY"]
        )
    sent = sorted(json.loads(r["HyperParameters"]["alpha"]) for r in creates)
    assert sent == [0.1, 0.2, 0.3]
    assert all(c["kind"] == "notebook" for c in ledger.find(parent=json.loads(out)["run"]))


def eventbridge_transform(transformer: dict[str, Any], event: dict[str, Any]) -> Any:
    """What EventBridge's input transformer makes of `event`, as its guide documents it:
    each InputPathsMap path's value replaces its <name>; a placeholder outside quotes
    becomes the value as JSON (a string quoted and escaped). moto applies no transformer
    to S3's events, and its own parser writes strings without quotes, so this is done
    here, for the two plain paths the trigger uses."""
    text = transformer["InputTemplate"]
    for name, path in transformer["InputPathsMap"].items():
        assert path.startswith("$."), path
        value: Any = event
        for part in path[2:].split("."):
            value = value[part]
        text = text.replace(f"<{name}>", json.dumps(value))
    return json.loads(text)


def _validate(operation: str, request: dict[str, Any], service: str = "batch") -> None:
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    assert shape is not None
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()


def _wait_for_runs(cli: Callable[..., tuple[int, str, str]], name: str, n: int) -> list[dict]:
    deadline = time.monotonic() + 240
    while True:
        code, out, err = cli("runs", "--schedule", name, "--json")
        assert code == 0, err
        rows = json.loads(out)
        if len(rows) >= n and all(r["status"] in ("SUCCEEDED", "FAILED") for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(3)


@pytest.fixture
def schedules_made(cli: Callable[..., tuple[int, str, str]]) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        cli("schedule", "delete", name)


def test_a_schedule_submits_what_a_batch_run_would_and_its_runs_come_into_the_ledger(
    cli: Callable[..., tuple[int, str, str]],
    ledger: Ledger,
    tmp_path: Path,
    batch_env: dict[str, str],
    schedules_made: list[str],
) -> None:
    nb = write_notebook(
        tmp_path / "daily.ipynb",
        "scale = 1",
        STUDY.replace("alpha", "scale").replace("nbk.record('label', label)", ""),
    )
    creates = record_calls("batch", "scheduler", "CreateSchedule")
    code, out, err = cli(
        "schedule",
        "create",
        "daily",
        nb,
        "--cron",
        "cron(0 6 * * ? *)",
        "-p",
        "scale",
        "3",
        "--json",
    )
    assert code == 0, err
    schedules_made.append("daily")
    (sent,) = creates
    _validate("CreateSchedule", sent, "scheduler")
    scheduler = boto3.client("scheduler")
    got = scheduler.get_schedule(Name="daily", GroupName="nbcontainer")
    assert got["ScheduleExpression"] == "cron(0 6 * * ? *)"
    assert got["Target"]["Arn"] == "arn:aws:scheduler:::aws-sdk:batch:submitJob"
    assert got["Target"]["RoleArn"].endswith("role/scheduler")
    submit = json.loads(got["Target"]["Input"])
    _validate("SubmitJob", submit)
    assert submit["jobQueue"] == batch_env["NBCONTAINER_BATCH_QUEUE"]
    assert submit["tags"]["io.nbcontainer.schedule"] == "daily"
    env = {e["name"]: e["value"] for e in submit["containerOverrides"]["environment"]}
    assert json.loads(env["NBCONTAINER_PARAMS"]) == {"scale": 3}
    assert env["NBCONTAINER_RUN_KEY_REF"] == "ssm:/nbcontainer/schedules/daily"
    assert "NBCONTAINER_RUN_KEY" not in env  # the key itself is never in a request
    definition = boto3.client("batch").describe_job_definitions(
        jobDefinitions=[submit["jobDefinition"]]
    )["jobDefinitions"][0]
    assert "@sha256:" in definition["containerProperties"]["image"]  # by digest

    for _ in range(2):
        assert cli("schedule", "run-now", "daily")[0] == 0
    rows = _wait_for_runs(cli, "daily", 2)
    assert [r["status"] for r in rows] == ["SUCCEEDED", "SUCCEEDED"]
    assert all(r["recorded"] == {"mae": 6} and r["kind"] == "notebook" for r in rows)
    assert len({r["job"]["output_uri"] for r in rows}) == 2  # a prefix per job
    data = Path(rows[0]["result_dir"]) / "output" / "data"
    assert (data / "daily.ipynb").is_file()
    code, out, _ = cli("runs", "--schedule", "daily", "--json")
    assert len(json.loads(out)) == 2  # brought in once

    code, out, _ = cli("schedule", "list", "--json")
    assert {"name": "daily", "kind": "schedule"}.items() <= json.loads(out)[0].items()


def test_an_s3_trigger_runs_the_notebook_with_the_objects_key(
    cli: Callable[..., tuple[int, str, str]],
    ledger: Ledger,
    tmp_path: Path,
    batch_env: dict[str, str],
    schedules_made: list[str],
) -> None:
    from nbcontainer_kernel.backends.schedules import trigger_submit

    nb = write_notebook(
        tmp_path / "ingest.ipynb",
        "input_bucket = ''\ninput_key = ''",
        "import nbcontainer_kernel as nbk\nnbk.record('key', input_key)\n"
        "nbk.record('bucket', input_bucket)",
    )
    bucket = batch_env["NBCONTAINER_S3_PREFIX"].split("/")[2]
    rules = record_calls("batch", "events", "PutRule")
    code, _, err = cli("schedule", "create", "landing", nb, "--on-s3", f"s3://{bucket}/incoming/")
    assert code == 0, err
    schedules_made.append("landing")
    (sent,) = rules
    _validate("PutRule", sent, "events")
    events, sqs = boto3.client("events"), boto3.client("sqs")
    rule = events.describe_rule(Name="nbcontainer-landing")
    pattern = json.loads(rule["EventPattern"])
    assert pattern["detail"]["object"]["key"] == [{"prefix": "incoming/"}]
    (batch_target,) = events.list_targets_by_rule(Rule="nbcontainer-landing")["Targets"]
    _validate("PutTargets", {"Rule": "nbcontainer-landing", "Targets": [batch_target]}, "events")
    # An SQS target beside the Batch one (first: moto stops at a target it cannot call).
    queue = sqs.create_queue(QueueName=f"landing-{os.getpid()}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.remove_targets(Rule="nbcontainer-landing", Ids=["batch"])
    events.put_targets(
        Rule="nbcontainer-landing",
        Targets=[{"Id": "sqs", "Arn": queue_arn}, batch_target],
    )
    s3 = boto3.client("s3")
    # (moto keeps the bucket's EventBridge setting but does not return it in
    # GetBucketNotificationConfiguration: that it is on shows in the event delivered.)
    key = 'incoming/2026/12/05 prices "q4".csv'
    s3.put_object(Bucket=bucket, Key=key, Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=bucket, Key="elsewhere/x.csv", Body=b"no")  # not under the prefix
    got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5, MaxNumberOfMessages=10)
    messages = [json.loads(m["Body"]) for m in got.get("Messages", [])]
    assert [m["detail"]["object"]["key"] for m in messages] == [key]
    transformer = batch_target["InputTransformer"]
    made = eventbridge_transform(transformer, messages[0])
    assert made == {"Parameters": {"input_bucket": bucket, "input_key": key}}
    submit = trigger_submit(batch_target, made)
    _validate("SubmitJob", submit)
    boto3.client("batch").submit_job(**submit)  # what EventBridge would submit, verbatim
    (row,) = _wait_for_runs(cli, "landing", 1)
    assert row["status"] == "SUCCEEDED", row["failure"]
    assert row["recorded"] == {"key": key, "bucket": bucket}
    assert row["params"] == {"input_bucket": bucket, "input_key": key}  # what it was given


def test_describe_says_when_a_schedules_image_is_gone(
    cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    batch_env: dict[str, str],
    schedules_made: list[str],
) -> None:
    import urllib.request

    nb = write_notebook(tmp_path / "gone.ipynb", "x = 1", "print(x)")
    assert cli("schedule", "create", "gone", nb, "--rate", "1 day")[0] == 0
    schedules_made.append("gone")
    code, out, _ = cli("schedule", "describe", "gone", "--json")
    doc = json.loads(out)
    assert doc["image_status"] == "present"
    host, _, rest = doc["image"].partition("/")
    repo, _, digest = rest.partition("@")
    urllib.request.urlopen(
        urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{digest}", method="DELETE")
    )
    code, out, _ = cli("schedule", "describe", "gone")
    assert code == 0 and "deleted from its registry" in out

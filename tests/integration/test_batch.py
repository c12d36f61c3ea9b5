"""%%remote_run --backend batch against the AWS test bed (scripts/aws_testbed.py): moto in
server mode runs the job containers, Debian's docker-registry holds the pushed images.

Where moto differs from AWS, the backend follows AWS and the test names the gap:
moto sets no AWS_BATCH_JOB_ARRAY_INDEX (children find their row by the ``:N`` suffix
of AWS_BATCH_JOB_ID, as on AWS), its describe_jobs gives no exitCode for a plain job
(Batch's SUCCEEDED means exit 0), it writes a job's CloudWatch log only when the job
ends (so lines arrive at the end, not live), and an array parent can stay SUBMITTED
when a child fails (the backend never reads the parent's status).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from nbcontainer_kernel.backends.registry import get_backend
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import (
    CloudError,
    MissingSetting,
    RegistryError,
    RunCancelled,
    RunTimeout,
    SweepFailed,
)
from tests.helpers import execute_notebook, record_calls, result_contents
from tests.integration.conftest import BASE_IMAGE

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "BatchBackend.registry": "NBCONTAINER_REGISTRY",
    "BatchBackend.s3_prefix": "NBCONTAINER_S3_PREFIX",
    "BatchBackend.queue": "NBCONTAINER_BATCH_QUEUE",
    "BatchBackend.job_role": "NBCONTAINER_BATCH_JOB_ROLE",
}


@pytest.fixture
def batch_ip(ip, aws_env: dict[str, str]):
    """The shell with the test bed's settings, set as a user would (%config)."""
    for trait, env in SETTINGS.items():
        ip.run_line_magic("config", f"{trait} = {aws_env[env]!r}")
    yield ip
    for trait in SETTINGS:
        ip.run_line_magic("config", f"{trait} = None")


def _calls(service: str, operation: str) -> list[dict]:
    return record_calls("batch", service, operation)


def test_a_batch_run_gives_the_results_of_a_local_run_of_the_same_image(
    batch_ip, ledger: Ledger, capsys
) -> None:
    ip = batch_ip
    result = ip.run_cell(
        "%%remote_run --local --name same\n"
        "scores = docs.assign(score=docs.w * topics)\nprint('ran with', topics)"
    )
    assert result.error_in_exec is None, result.error_in_exec
    local = ip.user_ns.pop("scores")
    capsys.readouterr()
    submits = _calls("batch", "SubmitJob")
    result = ip.run_cell("%%remote_run --backend batch --rerun same-1\nscores = ...")
    assert result.error_in_exec is None, result.error_in_exec
    out = capsys.readouterr().out
    # The log line came from moto's CloudWatch Logs (moto: written when the job ends).
    assert "ran with 2" in out and "[same-2] SUCCEEDED" in out
    row = ledger.get("same-2")
    assert row["status"] == "SUCCEEDED" and row["backend"] == "batch" and row["exit_code"] == 0
    assert row["verified"] == "signed"
    assert "@sha256:" in row["image"] and row["image"].startswith(
        os.environ["NBCONTAINER_REGISTRY"]
    )
    phases = [p for p, _ in row["phases"]]
    # The --local run made no image: the rerun builds the run image of its snapshot first.
    assert ledger.get("same-1")["image"] == "" and phases[:3] == ["BUILD", "PUSH", "SUBMITTED"]
    assert "RUNNING" in phases and phases[-1] == "SUCCEEDED"
    # The same result files as the --local run's (Arrow ones compressed for the trip to S3:
    # the same tables).
    assert result_contents(Path(row["result_dir"]) / "model") == result_contents(
        Path(ledger.get("same-1")["result_dir"]) / "model"
    )
    assert ip.user_ns["scores"].equals(local)
    (submit,) = submits
    env = {e["name"]: e["value"] for e in submit["containerOverrides"]["environment"]}
    # One prefix per submission: run ids count per ledger, a bucket may serve several.
    assert re.fullmatch(
        re.escape(os.environ["NBCONTAINER_S3_PREFIX"]) + r"/same-2-[0-9a-f]{8}/",
        env["NBCONTAINER_OUTPUT_URI"],
    )
    assert submit["tags"]["io.nbcontainer.run-id"] == "same-2"
    assert not any(k.startswith("AWS_ACCESS_KEY") or k == "AWS_SECRET_ACCESS_KEY" for k in env), (
        "the job's credentials come from its role, never from the user's keys"
    )
    # The run's key went by reference (an SSM SecureString the runner read with its role):
    # no Describe answer and no job definition holds it, and the parameter is gone.
    key = row["run_key"]
    assert "NBCONTAINER_RUN_KEY" not in env
    assert env["NBCONTAINER_RUN_KEY_REF"] == "ssm:/nbcontainer/runs/same-2"
    batch = boto3.client("batch")
    described = batch.describe_jobs(jobs=[row["job"]["job_id"]])
    definitions = batch.describe_job_definitions()
    assert key not in json.dumps(described, default=str)
    assert key not in json.dumps(definitions, default=str)
    ssm = boto3.client("ssm")
    left = ssm.get_parameters_by_path(Path="/nbcontainer/runs/", Recursive=True)["Parameters"]
    assert not [p for p in left if p["Name"].endswith("/same-2")], "the key outlived its run"


def test_the_second_run_pushes_only_the_snapshot_layer(batch_ip, ledger: Ledger) -> None:
    ip = batch_ip
    backend: Any = get_backend("batch")  # a BatchBackend: its push and client
    ip.run_cell("%%remote_run --backend batch --name push1\nout1 = docs.w.sum() * topics")
    first = backend.last_push
    ip.run_cell("more = list(range(1000))")  # another snapshot, the same dependencies
    result = ip.run_cell("%%remote_run --backend batch --name push2\nout2 = len(more) + topics")
    assert result.error_in_exec is None, result.error_in_exec
    second = backend.last_push
    assert ip.user_ns["out2"] == 1002
    assert second.pushed == 1 and second.existing == second.total - 1, second.layers
    assert second.bytes_sent < 5_000_000, second.bytes_sent
    assert first.total == second.total
    # The job definition of the same shape is reused (one per image digest and shape).
    assert ledger.get("push1-1")["image"] != ledger.get("push2-1")["image"]


def test_a_20_value_sweep_is_one_array_job_and_all_rows_come_back(batch_ip, ledger: Ledger) -> None:
    ip = batch_ip
    submits = _calls("batch", "SubmitJob")
    values = ",".join(str(v) for v in range(20))
    result = ip.run_cell(
        f"%%remote_run --backend batch --name arr --sweep k={values}\n"
        "import os\nrow = docs.assign(k2=k * k, job=os.environ['AWS_BATCH_JOB_ID'])"
    )
    assert result.error_in_exec is None, result.error_in_exec
    assert len(submits) == 1 and submits[0]["arrayProperties"] == {"size": 20}
    rows = ip.user_ns["row"]
    assert sorted(set(rows.k)) == list(range(20))
    assert (rows.k2 == rows.k * rows.k).all()
    # Each child ran as its own array child (moto: found by the :N suffix of its job id).
    jobs = rows.groupby("k").job.first()
    assert all(job.endswith(f":{k}") for k, job in jobs.items())
    children = ledger.find(parent="arr-1")
    assert len(children) == 20 and {c["status"] for c in children} == {"SUCCEEDED"}
    assert ledger.get("arr-1")["status"] == "SUCCEEDED"
    # The children shared one key, by reference (the sweep's parameter), gone with them.
    env = {e["name"]: e["value"] for e in submits[0]["containerOverrides"]["environment"]}
    assert env["NBCONTAINER_RUN_KEY_REF"] == "ssm:/nbcontainer/runs/arr-1"
    assert all(c["verified"] == "signed" for c in children)
    ssm = boto3.client("ssm")
    left = ssm.get_parameters_by_path(Path="/nbcontainer/runs/", Recursive=True)["Parameters"]
    assert not [p for p in left if p["Name"].endswith("/arr-1")]


def test_a_failing_child_loses_no_other_childs_results(batch_ip, ledger: Ledger) -> None:
    ip = batch_ip
    result = ip.run_cell(
        "%%remote_run --backend batch --name part --sweep x=1,2,3\n"
        "if x == 2:\n    raise ValueError('two')\ny = x * 10"
    )
    err = result.error_in_exec
    assert isinstance(err, SweepFailed), err
    (failed,) = err.failures
    assert err.failures[failed][0] == {"x": 2} and "ValueError: two" in err.failures[failed][1]
    assert ip.user_ns["y"].to_dict("list") == {"x": [1, 3], "y": [10, 30]}
    statuses = {r["params"]["x"]: r["status"] for r in ledger.find(parent="part-1")}
    assert statuses == {1: "SUCCEEDED", 2: "FAILED", 3: "SUCCEEDED"}


def test_cancel_while_running_stops_the_job(batch_ip, ledger: Ledger) -> None:
    ip = batch_ip
    runner = ip.magics_manager.registry["RemoteRun"].runner

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = ledger.find(name="long")
            if rows and rows[0]["status"] == "RUNNING":
                time.sleep(1)
                runner.cancel(rows[0]["id"])
                return
            time.sleep(0.2)

    t = threading.Thread(target=cancel_when_running)
    t.start()
    t0 = time.monotonic()
    result = ip.run_cell(
        "%%remote_run --backend batch --name long\nimport time\nfor i in range(60):\n"
        "    print(i, flush=True); time.sleep(1)"
    )
    t.join()
    assert isinstance(result.error_in_exec, RunCancelled), result.error_in_exec
    row = ledger.find(name="long")[0]
    assert row["status"] == "CANCELLED"
    assert time.monotonic() - t0 < 50, "the run must end long before the cell would have"
    batch = get_backend("batch").batch  # type: ignore[attr-defined]  # a BatchBackend's client
    job_id = row["job"]["job_id"]
    deadline = time.monotonic() + 20
    while batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] not in ("FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline, "the job was not terminated on Batch"
        time.sleep(0.5)
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "FAILED"


def test_timeout_stops_the_job_and_says_so(batch_ip, ledger: Ledger) -> None:
    result = batch_ip.run_cell(
        "%%remote_run --backend batch --name slow --timeout 4\nimport time\ntime.sleep(60)"
    )
    assert isinstance(result.error_in_exec, RunTimeout), result.error_in_exec
    row = ledger.find(name="slow")[0]
    assert row["status"] == "FAILED" and row["failure"].startswith("the run timed out after 4 s")


def test_a_missing_queue_is_a_clear_error_and_the_run_is_recorded(
    batch_ip, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set nowhere: not configured (None is not set), not in the environment.
    batch_ip.run_line_magic("config", "BatchBackend.queue = None")
    monkeypatch.delenv("NBCONTAINER_BATCH_QUEUE", raising=False)
    result = batch_ip.run_cell("%%remote_run --backend batch --name noq\ny = 1")
    err = result.error_in_exec
    assert isinstance(err, MissingSetting) and "BatchBackend.queue" in str(err), err
    assert "NBCONTAINER_BATCH_QUEUE" in str(err)
    row = ledger.find(name="noq")[0]
    assert row["status"] == "FAILED" and "BatchBackend.queue" in row["failure"]


def test_missing_credentials_are_a_clear_error_before_any_build(
    batch_ip, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = batch_ip.run_cell("%%remote_run --backend batch --name nocred\ny = 1")
    err = result.error_in_exec
    assert isinstance(err, CloudError) and err.code == "NoCredentials", err
    assert "AWS_PROFILE" in str(err)
    row = ledger.find(name="nocred")[0]
    assert row["status"] == "FAILED" and "NoCredentials" in row["failure"]
    assert [p for p, _ in row["phases"]] == ["FAILED"], "nothing was snapshot or built"


def test_an_unreachable_registry_is_a_clear_error(batch_ip, ledger: Ledger) -> None:
    batch_ip.run_line_magic("config", "BatchBackend.registry = '127.0.0.1:9/nbcontainer'")
    result = batch_ip.run_cell("%%remote_run --backend batch --name noreg\ny = 1")
    err = result.error_in_exec
    assert isinstance(err, RegistryError) and "127.0.0.1:9/nbcontainer" in str(err), err
    row = ledger.find(name="noreg")[0]
    assert row["status"] == "FAILED" and "RegistryError" in row["failure"]
    assert [p for p, _ in row["phases"]][-2:] == ["PUSH", "FAILED"]


def test_nbcontainer_push_prints_the_digest_reference_and_skips_what_is_there(
    engine: Engine, aws_env: dict[str, str], kernel_image: str
) -> None:
    def push() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nbcontainer_kernel.cli", "push", kernel_image],
            capture_output=True,
            text=True,
            check=False,
        )

    first = push()
    assert first.returncode == 0, first.stderr
    ref = first.stdout.strip()
    assert ref.startswith(aws_env["NBCONTAINER_REGISTRY"] + "@sha256:")
    assert "layers" in first.stderr and "MB sent" in first.stderr
    again = push()
    assert again.stdout.strip() == ref
    last = again.stderr.strip().splitlines()[-1]
    assert "already there), 0.0 MB sent" in last, last
    # The push leaves no registry tag behind: what runs is named by digest.
    assert not [t for t in engine.get_image(kernel_image).tags if t.startswith("127.0.0.1:")]


def test_gc_aws_deregisters_old_job_definition_revisions(aws_env: dict[str, str]) -> None:
    from nbcontainer_kernel.backends.base import RunSpec
    from nbcontainer_kernel.backends.batch import BatchBackend

    backend = BatchBackend()
    settings = backend.settings(
        {trait.split(".")[1]: aws_env[env] for trait, env in SETTINGS.items()} | {"platform": "EC2"}
    )
    backend.check(settings)

    def spec(run_id: str, digit: str) -> RunSpec:
        image = f"127.0.0.1:1/x@sha256:{digit * 64}"
        return RunSpec(run_id, image, name="gcd", settings=settings)

    arns = [backend.job_definition(spec("gcd-1", d)) for d in "abc"]
    assert len(set(arns)) == 3
    again = backend.job_definition(spec("gcd-2", "c"))
    assert again == arns[-1], "a definition of the same image and shape is reused"
    out = subprocess.run(
        [sys.executable, "-m", "nbcontainer_kernel.cli", "gc", "--aws"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert all(arn in out.stdout for arn in arns[:2]) and arns[2] not in out.stdout
    active = backend.batch.describe_job_definitions(
        jobDefinitionName="nbcontainer-gcd", status="ACTIVE"
    )
    assert [jd["jobDefinitionArn"] for jd in active["jobDefinitions"]] == [arns[2]]


@pytest.fixture(scope="session")
def aws_kernel_image(engine: Engine, kernel_image: str) -> str:
    """A kernel image with boto3 (what a team's image for remote runs holds); cached like
    the kernel image itself: rebuilt only when its inputs change."""
    from nbcontainer_kernel.images.kernel import build_kernel_image

    tag = "nbcontainer/python:3.11-aws"
    build_kernel_image(engine, BASE_IMAGE, tag, requirements=["boto3"])
    return tag


def test_a_containerized_kernel_runs_a_cell_on_batch(
    engine: Engine,
    aws_kernel_image: str,
    testbed_kernelspec,
    ledger: Ledger,
    new_images,
    tmp_path: Path,
) -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    name = testbed_kernelspec("nbc-batch", aws_kernel_image)
    nb = new_notebook(
        cells=[
            new_code_cell("import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})"),
            new_code_cell(
                "%%remote_run --backend batch --name kb\nimport os\n"
                "doubled = frame * 2\njob = os.environ['AWS_BATCH_JOB_ID']"
            ),
            new_code_cell("print(doubled.a.tolist(), job)"),
        ]
    )
    execute_notebook(nb, tmp_path, name, timeout=600)
    out = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    row = ledger.get("kb-1")
    assert row["status"] == "SUCCEEDED" and row["backend"] == "batch"
    assert out.startswith("[2, 4] ") and out.strip().endswith(row["job"]["job_id"])


def test_attach_after_a_restart_collects_a_batch_run(batch_ip, ledger: Ledger) -> None:
    from nbcontainer_kernel.backends.base import Hooks
    from nbcontainer_kernel.remote.runs import RemoteRunner

    handle = batch_ip.run_cell(
        "%%remote_run --backend batch --no-wait --name bgb\nimport time\ntime.sleep(3)\nz = 42"
    ).result
    deadline = time.monotonic() + 60
    while not ledger.get(handle.run_id)["job"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # A new kernel: a new runner over the same ledger finds the job by the id recorded there.
    ns: dict = {}
    result = RemoteRunner(Ledger(ledger.path)).attach(handle.run_id, ns, Hooks())
    assert ns == {"z": 42} and result.succeeded
    handle.wait(60)
    assert ledger.get(handle.run_id)["status"] == "SUCCEEDED"


def test_an_ecr_registry_gets_its_repository_and_a_login_from_the_ecr_api(
    aws_env: dict[str, str],
) -> None:
    from nbcontainer_kernel.backends.aws import client
    from nbcontainer_kernel.backends.push import ecr_login, parse_registry

    registry = parse_registry("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/nbcontainer")
    login = ecr_login(registry)
    assert login["serveraddress"] == registry.host and login["username"] == "AWS"
    assert login["password"]
    repos = client("ecr").describe_repositories(repositoryNames=["team/nbcontainer"])
    assert [r["repositoryName"] for r in repos["repositories"]] == ["team/nbcontainer"]
    assert ecr_login(registry)["username"] == "AWS", "an existing repository is used as it is"


def test_make_demo_aws_runs_a_cell_a_sweep_a_notebook_sweep_and_a_trigger_on_batch(
    aws_env: dict[str, str], new_images, tmp_path: Path
) -> None:
    """What `make demo-aws` runs: examples/batch_demo.py, with the test bed's environment."""
    env = {**os.environ, "NBCONTAINER_BASE_IMAGE": BASE_IMAGE}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "batch_demo.py")],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ran on" in out.stdout and "demo-sweep" in out.stdout, out.stdout[-3000:]
    # The notebook sweep's table of recorded values, and the triggered run with its key.
    assert re.search(r"study-\d+ +SUCCEEDED +0\.5 +0\.667", out.stdout), out.stdout[-3000:]
    assert "ingesting incoming/sales-2026-12-05.csv" in out.stdout, out.stdout[-3000:]
    assert re.search(r"landing-1 +notebook +batch +SUCCEEDED", out.stdout), out.stdout[-3000:]


def test_runs_submitted_from_several_threads_at_once_each_keep_their_own_settings(
    batch_ip, ledger: Ledger
) -> None:
    """What the runs page and notebook jobs will do: submit from a server's threads at once.
    Each run's queue and registry are its own, whatever the others (and the shell's
    %config, changed meanwhile) say."""
    import threading

    from nbcontainer_kernel.backends.base import Hooks
    from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner

    ip = batch_ip
    result = ip.run_cell("%%remote_run --local --name base\nout = topics * 3")
    assert result.error_in_exec is None, result.error_in_exec
    batch = boto3.client("batch")
    (queue,) = batch.describe_job_queues(jobQueues=[os.environ["NBCONTAINER_BATCH_QUEUE"]])[
        "jobQueues"
    ]
    order = queue["computeEnvironmentOrder"]
    queues = [f"nbcontainer-threads-{i}" for i in range(3)]
    for name in queues:
        batch.create_job_queue(
            jobQueueName=name, state="ENABLED", priority=1, computeEnvironmentOrder=order
        )
    registry = os.environ["NBCONTAINER_REGISTRY"]
    runner = RemoteRunner(Ledger(ledger.path))
    start = threading.Barrier(len(queues))
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        req = RemoteRequest(
            "out = topics * 3",
            name=f"thread{i}",
            backend="batch",
            rerun="base-1",
            overrides={"queue": queues[i], "registry": f"{registry}-team{i}"},
        )
        start.wait()
        try:
            runner.run(req, {}, Hooks())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(queues))]
    for t in threads:
        t.start()
    ip.run_line_magic("config", "BatchBackend.queue = 'not-this-one'")  # meanwhile
    for t in threads:
        t.join(600)
    ip.run_line_magic("config", f"BatchBackend.queue = {os.environ['NBCONTAINER_BATCH_QUEUE']!r}")
    assert errors == []
    for i, name in enumerate(queues):
        row = ledger.get(f"thread{i}-1")
        assert row["status"] == "SUCCEEDED", row["failure"]
        (job,) = batch.describe_jobs(jobs=[row["job"]["job_id"]])["jobs"]
        assert job["jobQueue"].endswith(f"/{name}") or job["jobQueue"] == name, job["jobQueue"]
        (definition,) = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])[
            "jobDefinitions"
        ]
        image = definition["containerProperties"]["image"]
        assert image.startswith(f"{registry}-team{i}@sha256:") and row["image"] == image

"""The parts of the Batch backend that need no AWS: request signing in the runner (checked
against botocore's own signer), sweep rows, registry addresses, push progress, Batch's
states, and the settings a Batch run needs."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from nbcontainer_kernel import config
from nbcontainer_kernel.backends.base import Phase
from nbcontainer_kernel.backends.batch import BatchBackend, batch_phase, job_definition_name
from nbcontainer_kernel.backends.push import PushProgress, parse_registry
from nbcontainer_kernel.docker.archives import extract_tar
from nbcontainer_kernel.magics.remote_run import parse_sweep
from nbcontainer_kernel.remote.runs import sweep_grid, swept_values
from nbcontainer_kernel.runtime.errors import InvalidOption, MissingSetting
from nbcontainer_kernel.runtime.sweep import array_index, sweep_row
from nbcontainer_kernel.runtime.upload import (
    Credentials,
    object_url,
    pack_outputs,
    sign_request,
    split_s3_uri,
)
from tests.helpers import examples

# ---------------------------------------------------------------- SigV4 in the runner
_keys = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=examples(60), deadline=None)
@given(
    key=_keys,
    secret=st.text(min_size=8, max_size=40),
    token=st.none()
    | st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=4, max_size=30),
    body=st.binary(max_size=200),
    region=st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2"]),
    endpoint=st.sampled_from([None, "http://127.0.0.1:5005", "https://s3.example.internal"]),
)
def test_the_runners_s3_signature_is_the_one_botocore_makes(
    key: str, secret: str, token: str | None, body: bytes, region: str, endpoint: str | None
) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    now = datetime.datetime(2026, 11, 25, 12, 30, 5, tzinfo=datetime.timezone.utc)
    url = object_url("my-bucket", f"runs/{key}/outputs.tar.gz", region, endpoint)
    digest = hashlib.sha256(body).hexdigest()
    ours = sign_request(
        "PUT",
        url,
        {"Content-Type": "application/gzip"},
        digest,
        Credentials("AKIDEXAMPLE", secret, token),
        region,
        now=now,
    )
    request = AWSRequest(
        method="PUT",
        url=url,
        data=body,
        headers={"Content-Type": "application/gzip", "X-Amz-Content-SHA256": digest},
    )
    auth = S3SigV4Auth(BotoCredentials("AKIDEXAMPLE", secret, token), "s3", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        auth.add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]


def test_credentials_never_show_their_secret() -> None:
    assert "s3cr3t" not in repr(Credentials("AKIDEXAMPLE", "s3cr3t", "tok"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/runs/x/", ("b", "runs/x/")),
        ("s3://b", ("b", "")),
        ("s3://b/", ("b", "")),
    ],
)
def test_s3_addresses_split_into_bucket_and_prefix(uri: str, expected: tuple[str, str]) -> None:
    assert split_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["b/runs", "http://b/runs", "s3:///runs", ""])
def test_what_is_not_an_s3_address_is_refused(uri: str) -> None:
    with pytest.raises(RuntimeError, match="s3://bucket/prefix"):
        split_s3_uri(uri)


def test_outputs_travel_as_one_archive_that_unpacks_as_a_container_archive_does(
    tmp_path: Path,
) -> None:
    ml = tmp_path / "ml"
    (ml / "model").mkdir(parents=True)
    (ml / "output" / "data").mkdir(parents=True)
    (ml / "model" / "x.arrow").write_bytes(b"arrow")
    (ml / "output" / "failure").write_text("boom")
    (ml / "model" / "link").symlink_to("/etc/passwd")  # never travels
    packed = pack_outputs(ml)
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        names = set(tar.getnames())
    assert names == {"model", "model/x.arrow", "output", "output/data", "output/failure"}
    dest = tmp_path / "dest"
    extract_tar([packed[:100], packed[100:]], dest)
    assert (dest / "model" / "x.arrow").read_bytes() == b"arrow"
    assert (dest / "output" / "failure").read_text() == "boom"


# ----------------------------------------------------------------------- sweep rows
@pytest.mark.parametrize(
    ("env", "index"),
    [
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "7"}, 7),
        ({"AWS_BATCH_JOB_ID": "4f1e-aa:12"}, 12),  # moto sets only this (as AWS names children)
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ID": "x:9"}, 3),
        ({"AWS_BATCH_JOB_ID": "4f1e-aa"}, None),
        ({"AWS_BATCH_JOB_ID": "a:b"}, None),
        ({}, None),
    ],
)
def test_a_child_finds_its_index(env: dict[str, str], index: int | None) -> None:
    assert array_index(env) == index


def _no_s3(uri: str) -> bytes:
    raise AssertionError(f"nothing is read from S3 here ({uri})")


def test_a_child_picks_its_row_and_refuses_a_table_changed_in_s3() -> None:
    rows = [{"lr": 0.1}, {"lr": 0.01}]
    table = json.dumps(rows)
    assert sweep_row({"NBCONTAINER_SWEEP": table, "AWS_BATCH_JOB_ID": "j:1"}, _no_s3) == (
        1,
        {"lr": 0.01},
    )
    env = {
        "NBCONTAINER_SWEEP_URI": "s3://b/p/sweep.json",
        "NBCONTAINER_SWEEP_SHA256": hashlib.sha256(table.encode()).hexdigest(),
        "AWS_BATCH_JOB_ARRAY_INDEX": "0",
    }
    assert sweep_row(env, lambda _uri: table.encode()) == (0, {"lr": 0.1})
    with pytest.raises(ValueError, match="not the one submitted"):
        sweep_row(env, lambda _uri: json.dumps([{"lr": 99}, {"lr": 0.01}]).encode())
    with pytest.raises(ValueError, match="outside the sweep's 2 rows"):
        sweep_row({"NBCONTAINER_SWEEP": table, "AWS_BATCH_JOB_ARRAY_INDEX": "2"}, _no_s3)
    with pytest.raises(ValueError, match="needs AWS_BATCH_JOB_ARRAY_INDEX"):
        sweep_row({"NBCONTAINER_SWEEP": table}, _no_s3)
    assert sweep_row({}, _no_s3) is None


def test_several_sweeps_make_a_grid_and_a_file_makes_rows(tmp_path: Path) -> None:
    assert parse_sweep(["a=1,2", "b='x','y'"], None) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    csv = tmp_path / "p.csv"
    csv.write_text('lr,layers,name\n0.1,2,small\n0.01,"[4, 4]",big\n')
    assert parse_sweep(None, str(csv)) == [
        {"lr": 0.1, "layers": 2, "name": "small"},
        {"lr": 0.01, "layers": [4, 4], "name": "big"},
    ]
    assert swept_values(sweep_grid([("a", [1, 2]), ("b", [3])])) == {"a": [1, 2], "b": [3]}


@pytest.mark.parametrize(
    ("flags", "text", "message"),
    [
        (["a=1", "a=2"], None, "given twice"),
        (["a"], None, "NAME=V1,V2"),
        (["1a=2"], None, "NAME=V1,V2"),
        (["a=1"], "lr\n0.1\n", "exclusive"),
        (None, "lr,class\n1,2\n", "not 'class'"),
        (None, "lr,b\n1\n", "line 2: expected 2 values"),
        (None, "lr\n", "has no rows"),
    ],
)
def test_bad_sweeps_are_usage_errors(
    tmp_path: Path, flags: list[str] | None, text: str | None, message: str
) -> None:
    path = None
    if text is not None:
        path = tmp_path / "s.csv"
        path.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse_sweep(flags, str(path) if path else None)


# ------------------------------------------------------------------------ registries
@pytest.mark.parametrize(
    ("text", "host", "repo", "ecr"),
    [
        ("127.0.0.1:5000/nbcontainer", "127.0.0.1:5000", "nbcontainer", None),
        ("localhost/team/runs", "localhost", "team/runs", None),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nbcontainer",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "nbcontainer",
            ("123456789012", "eu-west-1"),
        ),
        ("registry.example.org:443/a.b/c_d", "registry.example.org:443", "a.b/c_d", None),
    ],
)
def test_registry_addresses(text: str, host: str, repo: str, ecr: tuple | None) -> None:
    registry = parse_registry(text)
    assert (registry.host, registry.repository, registry.ecr) == (host, repo, ecr)


@pytest.mark.parametrize(
    "text", ["nbcontainer", "host/", "127.0.0.1:5000/Upper", "a b/c", "/repo", "host/re po"]
)
def test_bad_registry_addresses_name_the_setting(text: str) -> None:
    with pytest.raises(InvalidOption, match="AWSBackend.registry"):
        parse_registry(text)


def test_push_progress_counts_layers_and_bytes() -> None:
    # As the daemon streams them while pushing a run image whose dependencies are there.
    events: list[dict[str, Any]] = [
        {"status": "The push refers to repository [127.0.0.1:5000/nbcontainer]"},
        *({"status": "Preparing", "id": f"l{i}"} for i in range(5)),
        *({"status": "Layer already exists", "id": f"l{i}"} for i in range(1, 5)),
        {"status": "Pushing", "id": "l0", "progressDetail": {"current": 512, "total": 2048}},
        {"status": "Pushing", "id": "l0", "progressDetail": {"current": 2048, "total": 2048}},
        {"status": "Pushed", "id": "l0"},
        {"status": "run: digest: sha256:abc size: 1234", "id": "run:1"},
        {"aux": {"Tag": "run", "Digest": "sha256:abc", "Size": 1234}},
    ]
    progress = PushProgress()
    for event in events:
        progress.update(event)
    assert (progress.total, progress.pushed, progress.existing) == (5, 1, 4)
    assert progress.bytes_sent == 2048 and progress.digest == "sha256:abc"
    assert progress.line() == "push: 5/5 layers (4 already there), 0.0 MB sent"


# ------------------------------------------------------------------------ Batch itself
@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("SUBMITTED", Phase.QUEUED),
        ("PENDING", Phase.QUEUED),
        ("RUNNABLE", Phase.QUEUED),
        ("STARTING", Phase.STARTING),
        ("RUNNING", Phase.RUNNING),
        ("SUCCEEDED", Phase.SUCCEEDED),
        ("FAILED", Phase.FAILED),
        ("SOMETHING_NEW", Phase.QUEUED),
    ],
)
def test_batch_states_map_onto_phases(status: str, phase: Phase) -> None:
    assert batch_phase(status) == phase


@given(st.text(max_size=300))
def test_job_definition_names_are_valid_for_batch(name: str) -> None:
    made = job_definition_name(name)
    assert made.startswith("nbcontainer-") and len(made) <= 128
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in made)


_COMPLETE = {
    "registry": "127.0.0.1:5000/nbcontainer",
    "s3_prefix": "s3://bucket/runs",
    "queue": "q",
    "job_role": "arn:aws:iam::123456789012:role/job",
}


@pytest.fixture
def batch(monkeypatch: pytest.MonkeyPatch) -> BatchBackend:
    """A Batch backend with nothing configured in the environment."""
    for name in config.environment_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return BatchBackend()


@pytest.mark.parametrize(
    ("missing", "env"),
    [
        ("queue", "NBCONTAINER_BATCH_QUEUE"),
        ("job_role", "NBCONTAINER_BATCH_JOB_ROLE"),
        ("s3_prefix", "NBCONTAINER_S3_PREFIX"),
        ("registry", "NBCONTAINER_REGISTRY"),
    ],
)
def test_a_missing_batch_setting_is_named_with_its_variable(
    batch: BatchBackend, missing: str, env: str
) -> None:
    settings = batch.settings({k: v for k, v in _COMPLETE.items() if k != missing})
    with pytest.raises(MissingSetting, match=f"BatchBackend.{missing} is not set") as err:
        batch.check(settings)
    assert env in str(err.value) and f"%config BatchBackend.{missing}" in str(err.value)


def test_fargate_needs_an_execution_role_and_platforms_are_checked(batch: BatchBackend) -> None:
    fargate = batch.settings({**_COMPLETE, "platform": "fargate"})
    assert fargate["platform"] == "FARGATE"  # as Batch spells it, whatever the case given
    with pytest.raises(MissingSetting, match="BatchBackend.execution_role"):
        batch.check(fargate)
    with pytest.raises(InvalidOption, match="EC2.*FARGATE"):
        batch.settings({**_COMPLETE, "platform": "lambda"})


def test_nothing_imports_boto3_unless_a_remote_backend_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from IPython.testing import globalipapp\n"
        "globalipapp.start_ipython()\n"
        "ip = globalipapp.get_ipython()\n"
        "ip.run_line_magic('load_ext', 'nbcontainer_kernel')\n"
        "from nbcontainer_kernel.backends.registry import available, get_backend\n"
        "assert 'batch' in available()\n"
        "get_backend('local')\n"
        "import nbcontainer_kernel.remote.runs, nbcontainer_kernel.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

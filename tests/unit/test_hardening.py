"""Smaller holes closed: archives, parameter names, run names, the ledger's privacy,
Dockerfile quoting, what a kernel commit refuses, and the encryption fallback's log line."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from nbcontainer_kernel.docker.archives import build_context, extract_tar
from nbcontainer_kernel.images import runs as run_images
from nbcontainer_kernel.images.kernel import KernelImageFacts, dockerfile_labels, kernel_dockerfile
from nbcontainer_kernel.images.runs import _forbidden_paths
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.runs import check_run_name
from nbcontainer_kernel.runtime.errors import ImageBuildError, InvalidOption, UnsafeArchive
from nbcontainer_kernel.runtime.notebook import inject_parameters
from nbcontainer_kernel.runtime.params import resolve_params
from tests.helpers import ipython_shell, new_code_cell, new_notebook


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            content = (data or {}).get(m.name)
            if content is not None:
                m.size = len(content)
            tar.addfile(m, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    for k, v in kw.items():
        setattr(m, k, v)
    return m


BAD_MEMBERS = [
    ("symlink", _member("model/x", tarfile.SYMTYPE, linkname="/etc/passwd"), "a link"),
    ("hardlink", _member("model/x", tarfile.LNKTYPE, linkname="model/y"), "a link"),
    ("fifo", _member("model/x", tarfile.FIFOTYPE), "a FIFO"),
    ("char device", _member("model/x", tarfile.CHRTYPE, devmajor=1, devminor=3), "a device"),
    ("block device", _member("model/x", tarfile.BLKTYPE, devmajor=8, devminor=0), "a device"),
    ("absolute path", _member("/etc/cron.d/x"), "leaves the destination"),
    ("dot-dot", _member("model/../../x"), "leaves the destination"),
]


@pytest.mark.parametrize(("label", "member", "why"), BAD_MEMBERS, ids=[b[0] for b in BAD_MEMBERS])
def test_archives_refuse_what_is_not_a_plain_file_inside(
    tmp_path: Path, label: str, member: tarfile.TarInfo, why: str
) -> None:
    data = _tar([member], {member.name: b"x"} if member.isreg() else None)
    with pytest.raises(UnsafeArchive) as err:
        extract_tar(data, tmp_path / "dest")
    assert why in err.value.reason
    assert not (tmp_path / "x").exists() and not list((tmp_path / "dest").rglob("x"))


def test_archives_stream_in_chunks_and_stop_at_the_cap(tmp_path: Path) -> None:
    data = _tar(
        [_member("model/", tarfile.DIRTYPE), _member("model/a"), _member("model/b")],
        {"model/a": b"a" * 1000, "model/b": b"b" * 1000},
    )
    chunks = (data[i : i + 7] for i in range(0, len(data), 7))  # as the Docker API streams it
    assert extract_tar(chunks, tmp_path / "ok") == 2000
    assert (tmp_path / "ok" / "model" / "b").read_bytes() == b"b" * 1000
    assert stat.S_IMODE((tmp_path / "ok" / "model" / "a").stat().st_mode) == 0o600
    with pytest.raises(UnsafeArchive, match="over its cap of 1,500 bytes"):
        extract_tar(data, tmp_path / "capped", max_bytes=1500)
    with pytest.raises(UnsafeArchive, match="not a readable tar archive"):
        extract_tar(b"not a tar archive at all" * 40, tmp_path / "junk")


def test_build_contexts_go_to_a_file_skip_special_files_and_have_a_cap(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.py").write_text("A = 1\n")
    (tree / "link").symlink_to("/etc/passwd")
    os.mkfifo(tree / "fifo")
    ctx = build_context("FROM scratch\n", {"snapshot": tree})
    assert not isinstance(ctx, io.BytesIO)
    with tarfile.open(fileobj=ctx) as tar:
        assert sorted(tar.getnames()) == ["Dockerfile", "snapshot", "snapshot/a.py"]
    ctx.close()
    (tree / "big.bin").write_bytes(b"0" * 5000)
    with pytest.raises(ImageBuildError, match="NBCONTAINER_MAX_CONTEXT_BYTES"):
        build_context("FROM scratch\n", {"snapshot": tree}, max_bytes=4000)


BAD_NAMES = ['__import__("os").system("id"); a', "a b", "1abc", "class", "a-b", "", "é;"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_parameter_names_must_be_identifiers_wherever_they_come_from(
    tmp_path: Path, bad: str
) -> None:
    hyper = tmp_path / "hyperparameters.json"
    for call in (
        lambda: resolve_params([(bad, "1")], {}, hyper),
        lambda: resolve_params([], {"NBCONTAINER_PARAMS": json.dumps({bad: 1})}, hyper),
    ):
        with pytest.raises(ValueError, match="must be Python identifiers"):
            call()
    hyper.write_text(json.dumps({bad: "1"}))
    with pytest.raises(ValueError, match="must be Python identifiers"):
        resolve_params([], {}, hyper)
    with pytest.raises(ValueError, match="must be Python identifiers"):
        inject_parameters(new_notebook(cells=[new_code_cell("x = 1")]), {bad: 1})


@pytest.mark.parametrize(
    "name", ["a" * 41, "a" * 300, "has space", "-lead", "semi;colon", "ünï", ""]
)
def test_run_names_are_checked_before_anything_runs(name: str) -> None:
    with pytest.raises(InvalidOption):
        check_run_name(name)


def test_a_long_name_is_a_usage_error_in_the_magic() -> None:

    shell = ipython_shell()
    shell.run_line_magic("load_ext", "nbcontainer_kernel")
    with pytest.raises(UsageError, match="--name"):
        shell.run_cell_magic("remote_run", f"--local --name {'x' * 300}", "1")


def test_the_ledger_is_private_and_keeps_a_key_per_run(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "shared" / "runs.db")
    a, b = ledger.create("r", "local"), ledger.create("r", "local")
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "shared" / "runs.db").stat().st_mode) & 0o077 == 0
    keys = {ledger.get(a)["run_key"], ledger.get(b)["run_key"]}
    assert len(keys) == 2 and all(len(k) == 64 for k in keys)
    ledger.run_dir(a)
    assert stat.S_IMODE(ledger.runs_dir.stat().st_mode) == 0o700
    from nbcontainer_kernel.remote.tables import compare_frame, runs_frame

    assert "run_key" not in runs_frame(ledger).columns
    assert not any("key" in str(i) for i in compare_frame([a, b], ledger).index)


def test_a_ledger_from_before_signing_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, seq INTEGER NOT NULL, "
        "backend TEXT NOT NULL, image TEXT, params TEXT NOT NULL DEFAULT '{}', metrics TEXT NOT "
        "NULL "
        "DEFAULT '{}', phases TEXT NOT NULL DEFAULT '[]', status TEXT NOT NULL, exit_code INTEGER, "
        "failure TEXT, result_dir TEXT, result_files TEXT NOT NULL DEFAULT '[]', outputs TEXT NOT "
        "NULL "
        "DEFAULT '[]', snapshot_digest TEXT, notebook TEXT, parent TEXT, job TEXT, created REAL "
        "NOT NULL, "
        "updated REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO runs (id, name, seq, backend, status, created, updated) "
        "VALUES ('old-1', 'old', 1, 'local', 'SUCCEEDED', 0, 0)"
    )
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.get("old-1")["run_key"] is None
    assert ledger.get(ledger.create("new", "local"))["run_key"]


def test_dockerfiles_quote_what_they_interpolate() -> None:
    hostile = "pkg; rm -rf / #"
    recipe = kernel_dockerfile(
        "sha256:abc",
        "python3 $(id)",
        "pip-24.0-py3-none-any.whl",
        ["ok==1.0", hostile, "q'uote"],
        {"io.nbcontainer.x": "a $HOME b"},
    )
    assert "'pkg; rm -rf / #'" in recipe and "'python3 $(id)'" in recipe
    assert "'q'\"'\"'uote'" in recipe
    assert dockerfile_labels({"k": "a $HOME b"}) == 'k="a \\$HOME b"'


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/root/.aws/credentials", True),
        ("/home/u/.aws", True),
        ("/root/.cache/huggingface/token", True),
        ("/root/.ipython/profile_default/history.sqlite", True),
        ("/var/tmp/nbcontainer-snapshot-abc/x", True),
        ("/run/nbcontainer-kernel/connection.json", True),
        ("/root/.netrc", True),
        ("/root/.docker/config.json", True),
        ("/opt/nbcontainer/venv/lib/python3.11/site-packages/pkg/__init__.py", False),
        ("/etc/hosts", False),
        ("/root/.cache/pip/http/a/b", False),
    ],
)
def test_a_kernel_commit_refuses_credentials_history_and_snapshots(
    path: str, refused: bool
) -> None:
    assert _forbidden_paths([{"Path": path, "Kind": 1}]) == ([path] if refused else [])
    assert _forbidden_paths([{"Path": path, "Kind": 2}]) == []  # deleted: not in the layer


def test_falling_back_to_no_encryption_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from nbcontainer_kernel.kernel.provisioner import DockerProvisioner

    class KM:
        curve_publickey = None
        curve_secretkey = None

    records: list[str] = []
    for _ in range(2):
        prov = DockerProvisioner(
            kernel_id="k", kernel_spec=None, parent=None, image="nbc/no-curve:1"
        )
        prov.log = logging.getLogger("test-provisioner")
        prov.log.addHandler(handler := logging.Handler())
        handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
        prov._facts = KernelImageFacts("3.11.0", "6.0.0", curve=False)
        prov._setup_encryption(KM(), None)
    assert len([r for r in records if "without CurveZMQ" in r]) == 1
    assert "nbc/no-curve:1" in records[0] and "image's ipykernel cannot" in records[0]


def test_a_pin_without_a_wheel_never_falls_back_to_the_index_unasked(
    tmp_path: Path, monkeypatch
) -> None:
    from nbcontainer_kernel.images.wheels import TargetPython
    from nbcontainer_kernel.runtime.errors import WheelResolutionError

    asked: list[list[str]] = []

    def resolve(reqs, target, dest, on_line=None, *, no_deps=False):  # noqa: ANN001, ANN202
        asked.append(list(reqs))
        raise WheelResolutionError(reqs, target.describe(), "ERROR: No matching distribution found")

    monkeypatch.setattr(run_images, "resolve_wheels", resolve)
    monkeypatch.setattr(run_images, "run_pip", lambda args, on_line=None: (1, ""))
    target = TargetPython((3, 11, 7), "x86_64", "glibc", "2.36")
    said: list[str] = []
    assert not run_images._resolve_one("private-pkg==1.2.3", target, tmp_path, said.append)
    assert asked == [["private-pkg==1.2.3"]], "only the exact pin is asked for"
    asked.clear()
    assert not run_images._resolve_one(
        "private-pkg==1.2.3", target, tmp_path, said.append, allow_unpinned=True
    )
    assert asked == [["private-pkg==1.2.3"], ["private-pkg"]]


@pytest.mark.parametrize(
    ("requires", "fits"),
    [(">=3.11.5", False), (">=3.8", True), (None, True), ("<3.11", False), ("~=3.11.0", True)],
)
def test_a_wheel_built_here_must_accept_the_image_python(
    tmp_path: Path, requires: str | None, fits: bool
) -> None:
    import zipfile

    from nbcontainer_kernel.images.runs import _fits
    from nbcontainer_kernel.images.wheels import TargetPython

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n" + (
        f"Requires-Python: {requires}\n" if requires else ""
    )
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            "pkg-1.0.dist-info/METADATA", meta + "\nlong description: Requires-Python: <2\n"
        )
    assert _fits(wheel, TargetPython((3, 11, 2), "x86_64", "glibc", "2.36")) is fits


@pytest.mark.parametrize(
    "pip_says",
    [
        "ERROR: Ignored the following versions that require a different python version: "
        "3.0.2 Requires-Python >=3.11.5; 4.1.3 Requires-Python >=3.11.5\n"
        "ERROR: Could not find a version that satisfies the requirement soupsieve==4.1.3",
        "Processing ./soupsieve-4.1.3-py3-none-any.whl\n"
        "ERROR: Package 'soupsieve' requires a different Python: 3.11.2 not in '>=3.11.5'",
    ],
)
def test_a_pin_the_index_has_for_another_python_falls_back_to_one_that_fits(
    tmp_path: Path, monkeypatch, pip_says: str
) -> None:
    from nbcontainer_kernel.images.wheels import TargetPython
    from nbcontainer_kernel.runtime.errors import WheelResolutionError

    def resolve(reqs, target, dest, on_line=None, *, no_deps=False):  # noqa: ANN001, ANN202
        if reqs == ["soupsieve==4.1.3"]:
            raise WheelResolutionError(reqs, target.describe(), pip_says)
        wheel = dest / "soupsieve-3.0.1-py3-none-any.whl"
        wheel.write_bytes(b"")
        return [wheel]

    monkeypatch.setattr(run_images, "resolve_wheels", resolve)
    said: list[str] = []
    target = TargetPython((3, 11, 2), "x86_64", "glibc", "2.36")
    assert run_images._resolve_one("soupsieve==4.1.3", target, tmp_path, said.append)
    assert said == [
        "warning: soupsieve==4.1.3 needs another Python than Python 3.11.2 on x86_64 (glibc 2.36); "
        "using soupsieve 3.0.1"
    ]


def test_one_odd_pin_costs_one_more_pip_call_not_one_per_package(
    tmp_path: Path, monkeypatch
) -> None:
    from nbcontainer_kernel.images.wheels import TargetPython
    from nbcontainer_kernel.runtime.errors import WheelResolutionError

    calls: list[list[str]] = []

    def resolve(reqs, target, dest, on_line=None, *, no_deps=False):  # noqa: ANN001, ANN202
        calls.append(list(reqs))
        if any(r.startswith("Private_Pkg") for r in reqs):
            raise WheelResolutionError(
                reqs,
                target.describe(),
                "ERROR: No matching distribution found for private-pkg==1.0",
            )
        return []

    monkeypatch.setattr(run_images, "resolve_wheels", resolve)
    monkeypatch.setattr(run_images, "run_pip", lambda args, on_line=None: (1, ""))
    lock = [f"pkg{i}==1.0" for i in range(50)] + ["Private_Pkg==1.0"]
    said: list[str] = []
    skipped = run_images._resolve_lock(
        lock, [], TargetPython((3, 11, 7), "x86_64", "glibc", "2.36"), tmp_path, said.append
    )
    assert skipped == ["Private_Pkg==1.0"]
    assert len(calls) == 4  # the lock, the lock without it, the pin alone, the runtime (pip)
    assert any("left out of the image" in line and "--allow-unpinned" in line for line in said)

"""The build-free `--local` path, its parts without a daemon: RemoteRunner over a scripted
backend that runs snapshots, the archive a snapshot travels in, the runner waiting for its
claim (a real process), its exit line, one archive for the results, and the dependency
capture that is kept until something is installed. tests/integration/test_warm_runs.py
runs it on a real daemon."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets import Int

from nbcontainer_kernel.backends.base import Hooks
from nbcontainer_kernel.backends.local import _LogFollower, snapshot_archive
from nbcontainer_kernel.docker.archives import build_context, extract_tar
from nbcontainer_kernel.images.runs import RunImage
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.results import load_results
from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner
from nbcontainer_kernel.runtime.contract import (
    EXIT_MARK_ENV,
    POOL_READY_MARK,
    RUN_CLAIM_FILE,
    SNAPSHOT_DIR,
)
from nbcontainer_kernel.runtime.errors import NbcontainerError
from nbcontainer_kernel.runtime.main import WAIT_FLAG
from nbcontainer_kernel.runtime.trust import KEY_ENV, RunOutputs, new_key
from nbcontainer_kernel.snapshots import deps, snapshot
from tests.fakes import Script, ScriptedBackend, fake_image_builder, sealed_outputs

from .conftest import registered


class SnapshotBackend(ScriptedBackend):
    """A scripted backend that, like the local one, runs snapshots on their runtime image."""

    name = "scripted-snapshots"
    runs_snapshots = True
    # As the local backend's: how many runner containers wait (0: a run image per run).
    run_pool_size = Int(1, min=0).tag(config=True)


@pytest.fixture
def snap_backend() -> Iterator[SnapshotBackend]:
    yield from registered("scripted-snapshots", SnapshotBackend())


def _runtime_builder(calls: list[Any]):  # noqa: ANN202
    def build(snap: Any, **_: Any) -> RunImage:
        calls.append(snap.digest)
        return RunImage(f"fake/runtime:{len(calls)}", "sha256:rt", snap.digest, "fake/deps", True)

    return build


def _runner(ledger: Ledger, runtime_calls: list[Any], image_calls: list[Any]) -> RemoteRunner:
    def image_builder(snap: Any, **kw: Any) -> RunImage:
        image_calls.append(snap.digest)
        return fake_image_builder(snap, **kw)

    return RemoteRunner(
        ledger, image_builder=image_builder, runtime_builder=_runtime_builder(runtime_calls)
    )


def _req(**kw: Any) -> RemoteRequest:
    return RemoteRequest(cell="y = x + 1", backend="scripted-snapshots", **kw)


def test_a_local_run_copies_its_snapshot_and_builds_no_image(
    ledger: Ledger, snap_backend: SnapshotBackend
) -> None:
    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 42}))}
    runtime: list[Any] = []
    images: list[Any] = []
    ns: dict[str, Any] = {"x": 41}
    _runner(ledger, runtime, images).run(_req(name="w"), ns, Hooks())
    assert ns["y"] == 42 and len(runtime) == 1 and images == []
    spec = snap_backend.specs["w-1"]
    assert spec.image == "fake/runtime:1" and spec.snapshot is not None
    row = ledger.get("w-1")
    assert row["image"] == "" and row["snapshot_digest"] == runtime[0]
    kept = ledger.run_dir("w-1") / "snapshot"
    assert (kept / "manifest.json").is_file() and oct(kept.stat().st_mode & 0o777) == "0o700"
    assert not Path(spec.snapshot).exists()  # moved, not copied


@pytest.mark.parametrize(
    ("settings", "wait"),
    [({"run_pool_size": 0}, True), ({}, False)],
    ids=["pool turned off", "--no-wait"],
)
def test_a_run_builds_its_image_when_the_pool_is_off_or_it_does_not_wait(
    ledger: Ledger, snap_backend: SnapshotBackend, settings: dict[str, Any], wait: bool
) -> None:
    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 2}))}
    runtime: list[Any] = []
    images: list[Any] = []
    runner = _runner(ledger, runtime, images)
    out = runner.run(_req(name="b", overrides=settings, wait=wait), {"x": 1}, Hooks())
    if not wait:
        runner.join(out.run_id or "", 10)
    assert runtime == [] and len(images) == 1
    assert snap_backend.specs["b-1"].snapshot is None
    assert ledger.get("b-1")["image"].startswith("fake/run:")
    assert not (ledger.run_dir("b-1") / "snapshot").exists()


def test_a_rerun_of_a_run_without_an_image_runs_its_kept_snapshot(
    ledger: Ledger, snap_backend: SnapshotBackend
) -> None:
    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 2}))}
    runtime: list[Any] = []
    images: list[Any] = []
    runner = _runner(ledger, runtime, images)
    runner.run(_req(name="r"), {"x": 1}, Hooks())
    runner.run(_req(rerun="r-1"), {}, Hooks())
    assert runtime == [runtime[0], runtime[0]]  # the same snapshot, twice
    assert snap_backend.specs["r-2"].snapshot == str(ledger.run_dir("r-1") / "snapshot")
    assert (ledger.run_dir("r-1") / "snapshot").is_dir()  # it stays for the next rerun
    assert runner.kept_snapshot("r-2") == ledger.run_dir("r-2") / "snapshot"  # its own link
    # On a backend that needs an image, the rerun makes one from the kept snapshot.
    runner.run(_req(rerun="r-1", overrides={"run_pool_size": 0}), {}, Hooks())
    assert images == [runtime[0]]


def test_a_kept_snapshot_that_changed_is_refused(
    ledger: Ledger, snap_backend: SnapshotBackend
) -> None:
    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 2}))}
    runner = _runner(ledger, [], [])
    runner.run(_req(name="t"), {"x": 1}, Hooks())
    cell = ledger.run_dir("t-1") / "snapshot" / "cell.py"
    cell.write_text("import os; os.system('echo owned')\n")
    with pytest.raises(NbcontainerError, match="not the one it ran"):
        runner.run(_req(rerun="t-1"), {}, Hooks())
    assert ledger.get("t-2")["status"] == "FAILED"


def test_a_sweep_shares_one_kept_snapshot_with_its_children(
    ledger: Ledger, snap_backend: SnapshotBackend
) -> None:
    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 2}))}
    runner = _runner(ledger, [], [])
    runner.run(_req(name="s", sweep=("x", [1, 2, 3])), {}, Hooks())
    snapshots = {snap_backend.specs[f"s-{i}"].snapshot for i in (2, 3, 4)}
    assert len(snapshots) == 1 and None not in snapshots
    assert runner.kept_snapshot("s-3") == ledger.run_dir("s-1") / "snapshot"


def test_a_failed_build_keeps_nothing(ledger: Ledger, snap_backend: SnapshotBackend) -> None:
    def broken(snap: Any, **_: Any) -> RunImage:
        raise NbcontainerError("no base")

    runner = RemoteRunner(ledger, image_builder=fake_image_builder, runtime_builder=broken)
    with pytest.raises(NbcontainerError):
        runner.run(_req(name="f"), {"x": 1}, Hooks())
    assert ledger.get("f-1")["status"] == "FAILED"
    assert not (ledger.run_dir("f-1") / "snapshot").exists()


@pytest.mark.parametrize("resolve_timeout", [None, 7.0])
def test_a_build_resolves_its_wheels_within_the_requests_budget(
    ledger: Ledger, snap_backend: SnapshotBackend, resolve_timeout: float | None
) -> None:
    from nbcontainer_kernel.images import wheels

    left: list[float | None] = []

    def builder(snap: Any, **kw: Any) -> RunImage:
        left.append(wheels._remaining())  # what every pip call of the build is given
        return _runtime_builder([])(snap, **kw)

    snap_backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 2}))}
    runner = RemoteRunner(ledger, image_builder=fake_image_builder, runtime_builder=builder)
    runner.run(_req(name="b", resolve_timeout=resolve_timeout), {"x": 1}, Hooks())
    if resolve_timeout is None:
        assert left == [None]
    else:
        assert left[0] is not None and 0 < left[0] <= resolve_timeout
    assert wheels._remaining() is None  # the budget ends with the build


# ------------------------------------------------------------ the archive
def _members(archive: io.BufferedIOBase | Any) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_snapshot_archive_holds_what_a_run_images_copy_would(tmp_path: Path) -> None:
    snap = snapshot({"x": 1, "big": list(range(10))}, "y = x", dest=tmp_path / "s")
    (snap.directory / "__pycache__").mkdir()
    (snap.directory / "__pycache__" / "m.pyc").write_bytes(b"\0")
    claim = {"argv": [], "env": {KEY_ENV: "k"}}
    with snapshot_archive(snap.directory, claim) as f:
        got = _members(f)
    ctx = build_context("FROM x\n", {"snapshot": snap.directory})
    with ctx:
        built = {
            n.replace("snapshot", SNAPSHOT_DIR.lstrip("/"), 1): m
            for n, m in _members(ctx).items()
            if n != "Dockerfile"
        }
    claim_member = got.pop(RUN_CLAIM_FILE.lstrip("/"))
    assert claim_member.mode == 0o600
    assert set(got) == set(built) and not any("__pycache__" in n for n in got)
    for name, member in got.items():
        assert (member.uid, member.gid, member.mode, member.size) == (
            built[name].uid,
            built[name].gid,
            built[name].mode,
            built[name].size,
        ), name


def test_results_come_from_one_archive_and_nothing_else_of_it_is_unpacked(
    tmp_path: Path,
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {
            "ml/model/results.json": b"{}",
            "ml/output/failure": b"x",
            "ml/input/config/hyperparameters.json": b"{}",
            "other/file": b"no",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    extract_tar(buf.getvalue(), tmp_path, within="ml", only=("model", "output"))
    got = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert got == ["model/results.json", "output/failure"]


# --------------------------------------------------------- the exit line
class _Lines:
    """An Engine whose log stream is the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def follow_logs(self, ident: str) -> Iterator[bytes]:
        yield from self.chunks


@pytest.mark.parametrize(
    ("chunks", "code", "lines"),
    [
        ([b"a\n[nbcontainer] exit 0 TOKEN\n"], 0, ["a"]),
        ([b"a\n[nbcontainer] ex", b"it 3 TOKEN\n"], 3, ["a"]),
        ([f"{POOL_READY_MARK}\nb\n".encode()], None, ["b"]),
        ([b"[nbcontainer] exit 0 GUESS\n"], None, ["[nbcontainer] exit 0 GUESS"]),
        ([b"[nbcontainer] exit 0 TOKEN and more\n"], None, ["[nbcontainer] exit 0 TOKEN and more"]),
    ],
    ids=["exit", "split across chunks", "ready line dropped", "wrong token", "not the whole line"],
)
def test_only_the_runners_own_exit_line_ends_a_run_early(
    chunks: list[bytes], code: int | None, lines: list[str]
) -> None:
    follower = _LogFollower(_Lines(chunks), "c", exit_mark="TOKEN")  # type: ignore[arg-type]
    follower.wait(5)
    assert follower.exit_code == code and follower.lines == lines


# ----------------------------------------------------- the waiting runner
def test_a_waiting_runner_runs_its_claim_and_ends_with_its_exit_line(tmp_path: Path) -> None:
    snap = snapshot(
        {"x": 41}, "import os\ny = x + 1\nseen = sorted(os.environ)", dest=tmp_path / "s"
    )
    claim_file = tmp_path / "claim" / "claim.json"
    claim_file.parent.mkdir()
    key, mark = new_key(), "t0k3n" * 4
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbcontainer_kernel.runtime.main", WAIT_FLAG, str(claim_file)],
        env={
            **os.environ,
            "NBCONTAINER_SNAPSHOT_DIR": str(snap.directory),
            "NBCONTAINER_ML_ROOT": str(tmp_path / "ml"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == POOL_READY_MARK
        time.sleep(0.2)
        claim_file.write_text(
            json.dumps({"argv": [], "env": {KEY_ENV: key, EXIT_MARK_ENV: mark, "NBC_X": "1"}})
        )
        proc.send_signal(signal.SIGWINCH)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"[nbcontainer] exit 0 {mark}"
    assert not claim_file.exists()
    values = load_results(RunOutputs(tmp_path / "ml", key, "signed"), ["y", "seen"])
    assert values["y"] == 42 and "NBC_X" in values["seen"]
    assert KEY_ENV not in values["seen"] and EXIT_MARK_ENV not in values["seen"]


def test_a_waiting_runner_ignores_a_wake_up_before_it_waits(tmp_path: Path) -> None:
    """SIGWINCH sent as the container starts (claimed the moment it was made) is harmless."""
    claim_file = tmp_path / "claim.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbcontainer_kernel.runtime.main", WAIT_FLAG, str(claim_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(5):
            proc.send_signal(signal.SIGWINCH)
            time.sleep(0.01)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


# ------------------------------------------------------ dependency capture
def test_dependencies_are_read_again_only_after_an_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    calls: list[bool] = []
    real = deps._capture

    def counting(in_image: bool) -> Any:
        calls.append(in_image)
        return real(in_image)

    monkeypatch.setattr(deps, "_capture", counting)
    monkeypatch.setattr(deps, "_captured", {})
    first, _ = deps.capture_dependencies()
    first.lock["mutated-by-a-caller"] = "1"
    second, _ = deps.capture_dependencies()
    assert len(calls) == 1 and "mutated-by-a-caller" not in second.lock
    time.sleep(0.01)
    info = site / "new_pkg-1.0.dist-info"  # what pip install does to the directory
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: new-pkg\nVersion: 1.0\n")
    third, _ = deps.capture_dependencies()
    assert len(calls) == 2 and third.lock.get("new-pkg") == "1.0"


def test_threads_do_not_leak_from_a_follower() -> None:
    before = threading.active_count()
    follower = _LogFollower(_Lines([b"x\n"]), "c")  # type: ignore[arg-type]
    follower.wait(5)
    time.sleep(0.05)
    assert threading.active_count() == before and follower.done.is_set()


# ------------------------------------------------------------ runner imports
IMPORTS_OF_A_RUN = """\
import json, sys
from nbcontainer_kernel.runtime.main import main
code = main([])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    ("values", "cell", "needed", "not_needed"),
    [
        (
            {"x": 1, "xs": [1.5, "a"]},
            "y = x + 1",
            set(),
            {"pandas", "pyarrow", "numpy", "urllib.request", "importlib.metadata", "docker"},
        ),
        (
            {"frame": "pandas"},
            "n = len(frame)",
            {"pandas", "pyarrow"},
            {"urllib.request", "importlib.metadata", "docker"},
        ),
    ],
    ids=["plain values", "a DataFrame travels"],
)
def test_a_runner_imports_only_what_the_cells_values_need(
    tmp_path: Path, values: dict[str, Any], cell: str, needed: set[str], not_needed: set[str]
) -> None:
    if values.get("frame") == "pandas":
        import pandas as pd

        values = {"frame": pd.DataFrame({"a": [1, 2]})}
    snap = snapshot(values, cell, dest=tmp_path / "s", include_dependencies=False)
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_RUN],
        env={
            **os.environ,
            "NBCONTAINER_SNAPSHOT_DIR": str(snap.directory),
            "NBCONTAINER_ML_ROOT": str(tmp_path / "ml"),
            KEY_ENV: new_key(),
        },
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert needed <= modules and not (not_needed & modules), not_needed & modules


@pytest.mark.parametrize(
    ("state", "phases"),
    [
        # ended before any status saw it: RUNNING once, then its end
        ({"Running": False, "Status": "exited", "ExitCode": 0}, ["RUNNING", "SUCCEEDED"]),
        ({"Running": False, "Status": "exited", "ExitCode": 3}, ["RUNNING", "FAILED"]),
        ({"Running": True, "Status": "running"}, ["RUNNING", "RUNNING"]),
        ({"Running": False, "Status": "created"}, ["STARTING", "STARTING"]),
        (None, ["FAILED", "FAILED"]),  # gone: it says nothing of having run
    ],
)
def test_a_run_that_ran_passes_running_once_however_fast_it_was(
    state: dict | None, phases: list[str]
) -> None:
    from nbcontainer_kernel.backends.base import Job
    from nbcontainer_kernel.backends.local import LocalBackend

    class _Engine:
        def inspect(self, cid: str) -> dict | None:
            return None if state is None else {"State": state}

    backend = LocalBackend(engine=_Engine())  # type: ignore[arg-type]
    job = Job("local", "r-1", {"container_id": "c" * 64})
    got = [backend.status(job)[0].value for _ in range(2)]
    assert got == phases

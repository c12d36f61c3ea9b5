"""Without a daemon, every entry point says so and what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbcontainer_kernel.docker.archives import make_tar
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.runtime.errors import DaemonNotAvailable


def test_no_daemon_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    with pytest.raises(DaemonNotAvailable) as err:
        Engine.connect()
    assert f"unix://{tmp_path}/no-daemon.sock" in str(err.value)
    assert "scripts/docker-engine.sh" in str(err.value)


def test_cli_without_daemon(tmp_path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "nbcontainer_kernel.cli", "gc"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1
    assert "No Docker daemon answers" in proc.stderr and "Traceback" not in proc.stderr


def test_make_tar_owner_and_mode() -> None:
    import io
    import tarfile

    data = make_tar({"a.json": b"{}"}, uid=1000, gid=1001, mode=0o600)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("a.json")
    assert (member.uid, member.gid, member.mode, member.size) == (1000, 1001, 0o600, 2)


def test_a_container_removed_while_containers_are_listed_makes_the_listing_start_again() -> None:
    from nbcontainer_kernel.docker import labels
    from nbcontainer_kernel.docker.engine import Engine
    from nbcontainer_kernel.runtime.errors import ResourceNotFound
    from tests.fakes import FAKE_KERNEL_IMAGE, FakeDocker, api_error

    daemon = FakeDocker(images={FAKE_KERNEL_IMAGE: {}})
    kept = daemon.containers.create(FAKE_KERNEL_IMAGE, labels={labels.ROLE: "run"})
    real_list = daemon.containers.list
    vanishing = [api_error(404, "No such container: gone")] * 2

    def list_while_one_goes(**kw: object) -> list:
        if vanishing:
            raise vanishing.pop()
        return real_list(**kw)  # type: ignore[arg-type]

    daemon.containers.list = list_while_one_goes  # type: ignore[method-assign,assignment]
    engine = Engine(daemon)
    assert [c.id for c in engine.containers({labels.ROLE: "run"})] == [kept.id]
    vanishing.extend([api_error(404, "No such container: gone")] * 5)
    with pytest.raises(ResourceNotFound):
        engine.containers({labels.ROLE: "run"})

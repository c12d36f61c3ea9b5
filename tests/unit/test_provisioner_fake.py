"""DockerProvisioner over a fake Docker daemon (tests/fakes.py): the branches a real daemon
cannot be made to take on demand. The real-daemon tests in tests/integration stay."""

from __future__ import annotations

import json

import pytest
from jupyter_client.kernelspec import KernelSpec

from nbcontainer_kernel.kernel.kernelspec import render
from nbcontainer_kernel.kernel.provisioner import KERNEL_PORTS, DockerProvisioner
from nbcontainer_kernel.runtime.contract import KERNEL_CONNECTION_FILE
from nbcontainer_kernel.runtime.errors import KernelDied
from tests.fakes import FAKE_KERNEL_IMAGE as IMAGE
from tests.fakes import FakeDocker, api_error


def _Spec() -> KernelSpec:  # noqa: N802 - reads like the class it makes
    return KernelSpec(**render(IMAGE, "Fake (Docker)", check_paths=False))


async def _started(**options: object) -> DockerProvisioner:
    prov = DockerProvisioner(
        kernel_id="0123456789abcdef",
        kernel_spec=_Spec(),
        parent=None,
        image=IMAGE,
        mount_cwd=False,
        mount_ledger=False,
        # The warm pool and the guard have their own tests (test_kernel_pool.py, test_guard_*).
        **{"pool_size": 0, "docker_access": "none", **options},
    )
    kwargs = await prov.pre_launch()
    await prov.launch_kernel(**kwargs)
    return prov


async def test_a_kernel_starts_with_its_connection_file_and_scratch_space(
    daemon: FakeDocker,
) -> None:
    prov = await _started()
    [container] = daemon.containers_by_id.values()
    conn = json.loads(container.files[f"/{KERNEL_CONNECTION_FILE.lstrip('/')}"])
    assert (
        conn["ip"] == "0.0.0.0" and conn["shell_port"] == KERNEL_PORTS["shell_port"] and conn["key"]
    )
    assert container.kwargs["tmpfs"] == {"/tmp": "rw,exec,nosuid,mode=1777"}
    assert container.kwargs["environment"]["HOME"] == "/tmp"
    assert (
        set(prov.connection_info) >= set(KERNEL_PORTS) and prov.connection_info["ip"] == "127.0.0.1"
    )
    assert {p["HostIp"] for b in container.ports.values() for p in b} == {"127.0.0.1"}
    assert await prov.poll() is None


@pytest.mark.parametrize(
    ("code", "oom", "says"),
    [(1, False, "exit code 1"), (137, True, "OOMKilled: it exceeded its memory limit")],
)
async def test_a_kernel_that_exits_is_reported_with_its_log(
    daemon: FakeDocker, code: int, oom: bool, says: str
) -> None:
    prov = await _started()
    [container] = daemon.containers_by_id.values()
    container.exit(code, oom=oom, log=b"Traceback...\nMemoryError\n")
    assert await prov.poll() == code
    assert isinstance(prov.exit_error, KernelDied) and says in str(prov.exit_error)
    assert "MemoryError" in str(prov.exit_error) and prov.exit_error.oom_killed is oom
    assert await prov.poll() == code  # reported once, still answered


async def test_a_container_removed_under_the_kernel_is_reported_gone(daemon: FakeDocker) -> None:
    prov = await _started()
    daemon.containers_by_id.clear()
    assert await prov.poll() == 255
    assert isinstance(prov.exit_error, KernelDied)


async def test_an_expected_shutdown_is_not_an_error(daemon: FakeDocker) -> None:
    prov = await _started()
    await prov.shutdown_requested()
    next(iter(daemon.containers_by_id.values())).exit(0)
    assert await prov.poll() == 0 and prov.exit_error is None
    await prov.cleanup()
    assert daemon.containers_by_id == {}
    await prov.cleanup()  # idempotent


async def test_a_restart_whose_ports_were_taken_takes_fresh_ones(
    daemon: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.kernel import provisioner as module

    monkeypatch.setattr(module, "PORT_RETRY_WAIT", 0)
    prov = await _started()
    first = {k: prov.connection_info[k] for k in KERNEL_PORTS}
    await prov.cleanup(restart=True)
    daemon.taken_ports = set(first.values())  # someone took them meanwhile, for good
    kwargs = await prov.pre_launch()
    await prov.launch_kernel(**kwargs)
    second = {k: prov.connection_info[k] for k in KERNEL_PORTS}
    assert set(second.values()).isdisjoint(first.values())
    # The first start, the kept ports tried PORT_RETRIES + 1 times, then fresh ones.
    assert [op for op, _ in daemon.calls].count("create") == 1 + module.PORT_RETRIES + 1 + 1
    assert len(daemon.containers_by_id) == 1, "the refused containers were removed"


async def test_a_restart_waits_for_its_ports_to_be_released_and_keeps_them(
    daemon: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's proxy lets go of a removed container's ports a moment later: a restart
    that finds them taken tries again, and its clients keep their connection."""
    from nbcontainer_kernel.kernel import provisioner as module

    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            daemon.taken_ports = set()  # released

    monkeypatch.setattr(module.time, "sleep", wait)
    prov = await _started()
    first = {k: prov.connection_info[k] for k in KERNEL_PORTS}
    await prov.cleanup(restart=True)
    daemon.taken_ports = set(first.values())
    await prov.launch_kernel(**(await prov.pre_launch()))
    assert {k: prov.connection_info[k] for k in KERNEL_PORTS} == first
    assert len(waits) == 2 and len(daemon.containers_by_id) == 1


async def test_a_restart_keeps_its_ports_when_they_are_free(daemon: FakeDocker) -> None:
    prov = await _started()
    first = {k: prov.connection_info[k] for k in KERNEL_PORTS}
    await prov.cleanup(restart=True)
    await prov.launch_kernel(**(await prov.pre_launch()))
    assert {k: prov.connection_info[k] for k in KERNEL_PORTS} == first


async def test_an_error_other_than_a_port_is_not_retried(daemon: FakeDocker) -> None:
    from nbcontainer_kernel.runtime.errors import EngineError

    daemon.fail["start"] = [api_error(500, "OCI runtime create failed: no such file")]
    with pytest.raises(EngineError, match="OCI runtime"):
        await _started()
    assert daemon.containers_by_id == {}, "nothing left behind"


async def test_a_remote_kernels_lost_ssh_connection_is_its_death_with_sshs_reason(
    daemon: FakeDocker,
) -> None:
    from nbcontainer_kernel.docker.hosts import DockerHost, SshTunnel
    from nbcontainer_kernel.runtime.errors import TunnelLost

    prov = await _started()
    # A real ssh whose connection ends at once (the name does not resolve), as a reset does.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    tunnel = SshTunnel(DockerHost.parse("ssh://nbc-no-such-host.invalid"), None, {free: 1})
    tunnel.spawn([f"127.0.0.1:{free}:127.0.0.1:1"])
    assert tunnel.proc is not None
    tunnel.proc.wait(30)
    prov._tunnel, prov.docker_host = tunnel, "ssh://nbc-no-such-host.invalid"
    try:
        assert await prov.poll() == 255
        assert isinstance(prov.exit_error, TunnelLost)
        assert "resolve" in prov.exit_error.reason.lower()
        assert "nbc-no-such-host.invalid" in str(prov.exit_error)
        assert await prov.poll() == 255  # reported once, still answered
        # After a shutdown was asked for, the same end is no error.
        prov.exit_error, prov._exit_reported = None, False
        await prov.shutdown_requested()
        assert await prov.poll() == 255 and prov.exit_error is None
    finally:
        tunnel.close()
        prov._tunnel, prov.docker_host = None, None
        await prov.cleanup()
    assert not tunnel.dir.exists()

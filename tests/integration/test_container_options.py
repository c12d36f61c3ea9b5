"""Container options from the kernelspec reach the container."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager

from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import docker_provisioner, inspected, run, stdout_of


@pytest.fixture
def kernel(make_kernelspec):
    started: list[Any] = []

    def start(**options):
        km = KernelManager(kernel_name=make_kernelspec(f"nbc-opt{len(started)}", **options))
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        started.append((km, kc))
        return km, kc

    yield start
    for km, kc in started:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_environment_is_the_spec_env_plus_the_allowlist(
    engine: Engine, kernel, monkeypatch
) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-s3cr3t")
    monkeypatch.setenv("NBC_TEST_ALLOWED", "passed-through")
    monkeypatch.setenv("TZ", "Europe/Paris")
    km, kc = kernel(env_allowlist=["TZ", "NBC_TEST_ALLOWED"], env={"FROM_SPEC": "spec-value"})
    env = json.loads(stdout_of(run(kc, "import os, json; print(json.dumps(dict(os.environ)))")[1]))
    assert env["FROM_SPEC"] == "spec-value"
    assert env["NBC_TEST_ALLOWED"] == "passed-through"
    assert env["TZ"] == "Europe/Paris"
    assert "MY_API_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    stored_env = inspected(engine, docker_provisioner(km).container_id)["Config"]["Env"]
    assert not any("s3cr3t" in e for e in stored_env)


def test_user_resources_mounts_and_labels(engine: Engine, kernel, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("mounted")
    km, kc = kernel(
        user="1234:2345", cpus=0.5, memory="256m", shm_size="128m", mounts=[f"{data}:/data:ro"]
    )
    out = stdout_of(
        run(
            kc,
            "import os\nprint(os.getuid(), os.getgid(), open('/data/input.txt').read())\n"
            "try:\n    open('/data/new', 'w')\nexcept OSError as e:\n    print(type(e).__name__)",
        )[1]
    )
    # the kernel runs as the given user and the read-only mount refuses writes
    assert out == "1234 2345 mounted\nOSError\n"
    info = engine.inspect(docker_provisioner(km).container_id)
    host = info["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024**2
    assert host["ShmSize"] == 128 * 1024**2
    assert host["Init"] is True
    labels = info["Config"]["Labels"]
    assert labels["io.nbcontainer.kernel-id"] == km.kernel_id
    assert labels["io.nbcontainer.owner-pid"] == str(os.getpid())
    assert labels["io.nbcontainer.role"] == "kernel"
    assert "io.nbcontainer.created" in labels and "io.nbcontainer.owner-host" in labels


PING_AND_VOLUMES = (
    "import socket\n"
    "def ask(path, version='1.1'):\n"
    "    s = socket.socket(socket.AF_UNIX)\n"
    "    s.connect('/var/run/docker.sock')\n"
    "    head = f'GET {path} HTTP/{version}\\r\\nHost: d\\r\\nConnection: close\\r\\n'\n"
    "    s.sendall((head + '\\r\\n').encode())\n"
    "    return s.recv(4096).decode().split('\\r\\n')[0]\n"
    "print(ask('/_ping'), '|', ask('/volumes'), '|', ask('/_ping', '1.0'))"
)


def test_raw_docker_access_mounts_the_daemons_own_socket(engine: Engine, kernel) -> None:
    km, kc = kernel(docker_access="raw", user="4321:4321")
    assert stdout_of(run(kc, PING_AND_VOLUMES)[1]).strip() == (
        "HTTP/1.1 200 OK | HTTP/1.1 200 OK | HTTP/1.0 200 OK"
    )


def test_a_kernel_reaches_docker_through_the_guard_by_default_as_any_user(
    engine: Engine, kernel
) -> None:
    km, kc = kernel(user="4321:4321")
    assert docker_provisioner(km).docker_access == "guarded"
    # The guard speaks HTTP/1.1 only (what docker-py and the CLI speak).
    assert stdout_of(run(kc, PING_AND_VOLUMES)[1]).strip() == (
        "HTTP/1.1 200 OK | HTTP/1.1 403 Forbidden | HTTP/1.1 505 HTTP Version Not Supported"
    )


def test_no_docker_access_leaves_no_socket_and_says_why_docker_is_missing(
    engine: Engine, kernel
) -> None:
    km, kc = kernel(docker_access="none")
    code = (
        "import os\nfrom nbcontainer_kernel.docker.engine import Engine\n"
        "print(os.path.exists('/var/run/docker.sock'))\n"
        "try:\n    Engine.connect()\nexcept Exception as exc:\n    print(exc)"
    )
    out = stdout_of(run(kc, code)[1])
    assert out.startswith("False\n") and "docker_access 'none'" in out, out


def test_host_network_binds_loopback_only(engine: Engine, kernel) -> None:
    km, kc = kernel(network_mode="host")
    info = engine.inspect(docker_provisioner(km).container_id)
    assert info["HostConfig"]["NetworkMode"] == "host"
    # The kernel read its connection file and removed it; the app holds what it said.
    code = (
        "import os; from ipykernel.kernelapp import IPKernelApp\n"
        "print(IPKernelApp.instance().ip, "
        "os.path.exists(os.environ['NBCONTAINER_CONNECTION_FILE']))"
    )
    assert stdout_of(run(kc, code)[1]) == "127.0.0.1 False\n"
    assert stdout_of(run(kc, "print(1 + 1)")[1]) == "2\n"

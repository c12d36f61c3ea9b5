"""A kernel on a bigger machine: the same kernelspec on a remote Docker host over SSH.

The host is the test bed of scripts/dockerhost_testbed.py: a second Docker engine in a
container, reachable only by SSH on 127.0.0.1, with a key and a known_hosts entry made for
it. Nothing is mocked: OpenSSH carries the Docker API and the kernel's channels,
jupyter_client drives the kernel, and the remote engine runs its container.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager

from nbcontainer_kernel.docker import hosts, labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.docker.image_copy import copy_image
from nbcontainer_kernel.kernel import remote_host
from tests.helpers import (
    docker_provisioner,
    interrupt_and_reply,
    run,
    start_busy_loop,
    started,
    stdout_of,
)

from .conftest import BASE_IMAGE, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dockerhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The remote host test bed, started and stopped by the project's own script."""
    state = tmp_path_factory.mktemp("dockerhost") / "state"
    script = [sys.executable, str(ROOT / "scripts" / "dockerhost_testbed.py")]
    out = subprocess.run(
        [*script, "start", "--state", str(state)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines())
    try:
        yield env
    finally:
        hosts.close_all()
        subprocess.run([*script, "stop", "--state", str(state)], timeout=120)


@pytest.fixture(scope="module")
def remote(dockerhost: dict[str, str]) -> Engine:
    conn = hosts.connection_for(
        dockerhost["NBCONTAINER_TESTBED_DOCKER_HOST"], dockerhost["NBCONTAINER_TESTBED_SSH_CONFIG"]
    )
    return conn.engine


@pytest.fixture
def remote_spec(make_kernelspec, dockerhost: dict[str, str]):
    def make(name: str = "nbc-remote", **options: Any) -> str:
        options.setdefault("pool_size", 0)  # started cold, unless a test says otherwise
        return make_kernelspec(
            name,
            docker_host=dockerhost["NBCONTAINER_TESTBED_DOCKER_HOST"],
            ssh_config=dockerhost["NBCONTAINER_TESTBED_SSH_CONFIG"],
            **options,
        )

    return make


@pytest.fixture
def notebook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notebook's directory: code, data, what .gitignore and .dockerignore leave out."""
    d = tmp_path / "project"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "helper.py").write_text("ANSWER = 42\n")
    (d / "data.csv").write_text("a,b\n1,2\n")
    (d / ".gitignore").write_text("secret.env\n*.tmp\n")
    (d / "secret.env").write_text("TOKEN=do-not-send\n")
    (d / "scratch.tmp").write_text("x\n")
    (d / ".dockerignore").write_text("big/\n")
    (d / "big").mkdir()
    (d / "big" / "blob.bin").write_bytes(b"\0" * 1024)
    monkeypatch.chdir(d)
    return d


def _remote_leftovers(remote: Engine, kernel_id: str) -> dict[str, list[str]]:
    """The kernel's container (by its id), and every working-directory volume there."""
    return {
        "containers": [c.name for c in labels.kernel_containers(remote, kernel_id)],
        "volumes": [v["Name"] for v in remote.volumes({labels.ROLE: "kernel-workdir"})],
    }


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_a_kernel_whose_image_the_host_lacks_gets_only_its_missing_layers_and_a_second_start_copies_nothing(  # noqa: E501
    engine: Engine,
    remote: Engine,
    kernel_image: str,
    remote_spec,
    notebook_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote.remove_image(kernel_image, force=True)
    copy_image(engine, remote, BASE_IMAGE)  # the host has the base: the kernel's own layers go
    layers = len(engine.get_image(kernel_image).attrs["RootFS"]["Layers"])
    base_layers = len(engine.get_image(BASE_IMAGE).attrs["RootFS"]["Layers"])
    caplog.set_level(logging.INFO)
    name = remote_spec(docker_access="none")
    with started(name, cwd=str(notebook_dir)) as (_km, kc):
        content, outputs = run(kc, "print(6 * 7)")
        assert stdout_of(outputs) == "42\n"
    copied = [r.getMessage() for r in caplog.records if "layers" in r.getMessage()]
    assert any(f"{layers - base_layers} of its {layers} layers" in m for m in copied), copied
    assert (
        remote.get_image(kernel_image).attrs["RootFS"]["Layers"]
        == engine.get_image(kernel_image).attrs["RootFS"]["Layers"]
    )
    caplog.clear()
    with started(name, cwd=str(notebook_dir)) as (_km, kc):
        run(kc, "1")
    assert not [r for r in caplog.records if "copying" in r.getMessage()]


def test_the_remote_kernel_passes_the_kernel_conformance_suite(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path
) -> None:
    from jupyter_kernel_test import KernelTests

    name = remote_spec("nbc-remote-conformance")

    class RemoteKernelTests(KernelTests):
        kernel_name = name
        language_name = "python"
        file_extension = ".py"
        code_hello_world = "print('hello, world')"
        completion_samples = [{"text": "zi", "matches": {"zip"}}]
        complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
        incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
        invalid_code_samples = ["import = 7q"]
        code_page_something = "zip?"
        code_generate_error = "raise"
        code_execute_result = [{"code": "1+2+3", "result": "6"}]
        code_display_data = [
            {"code": "from IPython.display import HTML, display; display(HTML('<b>t</b>'))",
             "mime": "text/html"},
        ]  # fmt: skip
        code_history_pattern = "1?2*"
        supported_history_operations = ("tail", "search")
        code_inspect_sample = "zip"
        code_clear_output = "from IPython.display import clear_output; clear_output()"

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(RemoteKernelTests)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    problems = [f"{t}: {e}" for t, e in result.failures + result.errors]
    assert result.wasSuccessful(), problems
    assert result.testsRun - len(result.skipped) >= 10, result.skipped
    assert not remote.containers({labels.ROLE: labels.ROLE_KERNEL})


def test_interrupt_of_a_busy_cell_and_a_restart_on_the_same_local_ports_with_clients_carrying_on(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path
) -> None:
    name = remote_spec(transport_encryption="required")
    with started(name, cwd=str(notebook_dir)) as (km, kc):
        prov = docker_provisioner(km)
        first = prov.container_id
        ports = {k: km.get_connection_info()[k] for k in ("shell_port", "iopub_port", "hb_port")}
        run(kc, "x = 41")
        msg_id = start_busy_loop(kc)
        reply = interrupt_and_reply(km, kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert stdout_of(run(kc, "print(x + 1)")[1]) == "42\n"
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=120)
        assert prov.container_id != first and remote.inspect(first) is None
        assert {k: km.get_connection_info()[k] for k in ports} == ports
        # The client connected before the restart carries on, on the same ports.
        assert stdout_of(run(kc, "print('x' in dir(), 'after')")[1]) == "False after\n"
        assert km.get_connection_info().get("curve_publickey")  # CurveZMQ across the network


async def test_a_killed_tunnel_is_reported_as_the_kernels_death_with_its_reason(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    km = AsyncIOLoopKernelManager(kernel_name=remote_spec())
    await km.start_kernel(cwd=str(notebook_dir))
    events: list[tuple[str, float]] = []
    km.add_restart_callback(lambda: events.append(("dead", time.monotonic())), "dead")
    km.add_restart_callback(lambda: events.append(("restart", time.monotonic())), "restart")
    km.start_restarter()
    try:
        prov = docker_provisioner(km)
        first = prov.container_id
        interval = km._restarter.time_to_dead
        os.kill(prov._tunnel.pid, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 3 * interval + 60
        while not events and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert events, "the restarter never heard of the kernel's death"
        said = [r.getMessage() for r in caplog.records if "SSH connection" in r.getMessage()]
        assert said and "was lost" in said[0] and "SIGKILL" in said[0], said

        # The restarter's answer to a death: a new container, its own connection again.
        def reconnected() -> bool:
            tunnel = prov._tunnel
            return prov.container_id not in (None, first) and bool(tunnel and tunnel.alive())

        while not reconnected() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert reconnected()
        assert remote.inspect(first) is None
        await asyncio.wrap_future(km.ready) if not asyncio.isfuture(km.ready) else await km.ready
    finally:
        km.stop_restarter()
        await km.shutdown_kernel(now=True)


def test_shutdown_leaves_no_container_volume_or_forward_on_either_side(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path
) -> None:
    name = remote_spec()
    with started(name, cwd=str(notebook_dir)) as (km, _kc):
        prov = docker_provisioner(km)
        kernel_id = km.kernel_id
        tunnel = prov._tunnel
        local_ports = [km.get_connection_info()[k] for k in ("shell_port", "iopub_port", "hb_port")]
        assert _remote_leftovers(remote, kernel_id) == {
            "containers": [prov.container_name],
            "volumes": [prov._volume],
        }
        published = remote.inspect(prov.container_id)["NetworkSettings"]["Ports"]
        assert {b["HostIp"] for bindings in published.values() for b in bindings} == {"127.0.0.1"}
        assert [r.kernel_id for r in remote_host.records()] == [kernel_id]
    assert _remote_leftovers(remote, kernel_id) == {"containers": [], "volumes": []}
    assert tunnel.proc is None and not tunnel.dir.exists()
    assert all(_port_free(p) for p in local_ports)
    assert remote_host.records() == []


def test_the_working_directory_is_seeded_without_ignored_files_and_written_files_come_back(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path
) -> None:
    name = remote_spec(sync_back=True)
    with started(name, cwd=str(notebook_dir)) as (km, kc):
        content, outputs = run(
            kc,
            "import os, socket\n"
            "print(os.getcwd())\n"
            "print(sorted(p for p in os.listdir('.')))\n"
            "from pkg.helper import ANSWER; print(ANSWER)\n"
            "os.makedirs('results', exist_ok=True)\n"
            "open('results/model.txt', 'w').write('trained on ' + socket.gethostname())\n"
            "open('kept.txt', 'w').write('at shutdown')\n",
        )
        cwd, listing, answer = stdout_of(outputs).splitlines()
        assert cwd == "/home/nbcontainer/work"
        assert eval(listing) == [".dockerignore", ".gitignore", "data.csv", "pkg"]
        assert answer == "42"
        assert not (notebook_dir / "results").exists()
        # What the kernel writes is data: a link in it is left out, never followed here.
        run(kc, "os.symlink('/etc/hostname', 'results/evil'); os.symlink('/', 'results/root')")
        content, outputs = run(kc, "%nbcontainer_pull results")
        assert content["status"] == "ok", (content.get("evalue"), content.get("traceback"))
        assert "pulled results" in stdout_of(outputs)
        assert "left out" in stdout_of(outputs) and "results/evil" in stdout_of(outputs)
        assert (notebook_dir / "results" / "model.txt").read_text().startswith("trained on ")
        assert sorted(p.name for p in (notebook_dir / "results").iterdir()) == ["model.txt"]
        # From a terminal, by the kernel's id, somewhere else.
        other = notebook_dir.parent / "elsewhere"
        out = subprocess.run(
            [sys.executable, "-m", "nbcontainer_kernel.cli", "pull", km.kernel_id[:8], "data.csv",
             "--to", str(other)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (other / "data.csv").read_text() == "a,b\n1,2\n"
        # A path out of the working directory is refused, in the kernel and from here.
        content, outputs = run(kc, "%nbcontainer_pull ../../etc/passwd")
        assert content["status"] == "error" and "leaves" in str(content["evalue"])
        # Changed here meanwhile: kept, the kernel's version beside it.
        run(kc, "open('data.csv', 'w').write('kernel')")
        (notebook_dir / "data.csv").write_text("mine")
        # A folder that is a link here (to somewhere else) is never written through.
        outside = notebook_dir.parent / "outside"
        outside.mkdir()
        os.symlink(outside, notebook_dir / "linked")
        run(kc, "os.makedirs('linked', exist_ok=True); open('linked/x.txt', 'w').write('x')")
    assert (notebook_dir / "kept.txt").read_text() == "at shutdown"
    assert (notebook_dir / "data.csv").read_text() == "mine"
    assert (notebook_dir / "data.csv.remote").read_text() == "kernel"
    assert list(outside.iterdir()) == []
    assert not (notebook_dir / ".nbcontainer").exists()


def test_remote_run_local_in_a_remote_kernel_runs_a_dataframe_cell_on_the_remote_engine(
    engine: Engine, remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path
) -> None:
    name = remote_spec(docker_access="raw")

    def made_here() -> set[str]:
        return {
            i.id
            for role in (labels.ROLE_RUN_IMAGE, labels.ROLE_RUNTIME_IMAGE)
            for i in engine.images({labels.ROLE: role})
        }

    before_here = made_here()
    with started(name, cwd=str(notebook_dir)) as (km, kc):
        content, outputs = run(
            kc,
            "%load_ext nbcontainer_kernel\n"
            "import pandas as pd\n"
            "docs = pd.DataFrame({'w': [1.0, 2.0, 3.0]})",
        )
        assert content["status"] == "ok", content.get("evalue")
        content, outputs = run(
            kc,
            "%%remote_run --local --name remote-df\n"
            "import socket\n"
            "scores = docs.assign(score=docs.w * 2)\n"
            "ran_on = socket.gethostname()",
            timeout=600,
        )
        assert content["status"] == "ok", (content.get("evalue"), content.get("traceback"))
        content, outputs = run(
            kc,
            "import socket\n"
            "print(type(scores).__name__, list(scores.score), ran_on != socket.gethostname())\n"
            "%remote_runs",
        )
        text = stdout_of(outputs)
        assert text.splitlines()[0] == "DataFrame [2.0, 4.0, 6.0] True", text
        # The run's image was made, and the run ran, on the remote engine (from the warm
        # runner pool the kernel keeps there); nothing here.
        assert remote.images({labels.ROLE: labels.ROLE_RUNTIME_IMAGE})
        pool_there = remote.containers({labels.ROLE: labels.ROLE_RUN_POOL})
        assert pool_there and all(c.labels[labels.OWNER_CONTAINER] for c in pool_there)
        # The run ledger is on the kernel's volume: %remote_runs lists the run there.
        content, outputs = run(
            kc,
            "from nbcontainer_kernel.remote.ledger import Ledger\n"
            "print([r['status'] for r in Ledger().find(name='remote-df')], Ledger().path)",
        )
        assert stdout_of(outputs) == "['SUCCEEDED'] /home/nbcontainer/work/.nbcontainer/runs.db\n"
    assert made_here() == before_here
    assert not remote.containers({labels.ROLE: labels.ROLE_RUN})
    assert not remote.containers({labels.ROLE: labels.ROLE_RUN_POOL})  # gone with its kernel
    for image in remote.images({labels.ROLE: labels.ROLE_RUN_IMAGE}):
        remote.remove_image(image.id, force=True)


def test_a_remote_kernel_starts_from_the_warm_pool_kept_on_its_host_with_its_own_files(
    remote: Engine, kernel_image: str, remote_spec, notebook_dir: Path, tmp_path: Path
) -> None:
    from nbcontainer_kernel.kernel import pool

    name = remote_spec("nbc-remote-pooled", pool_size=1)
    with started(name, cwd=str(notebook_dir)) as (km, kc):  # cold; the pool fills after it
        run(kc, "open('mine.txt', 'w').write('first')")
        pools = [p for p in pool.pools() if p.image == kernel_image]
        assert pools and pools[0].wait_ready(120)
        waiting = pools[0].waiting()[0]
        assert remote.inspect(waiting.container_id)["State"]["Running"]
    other = tmp_path / "other-notebook"
    other.mkdir()
    (other / "only-here.txt").write_text("second")
    with started(name, cwd=str(other)) as (km, kc):
        prov = docker_provisioner(km)
        assert prov.container_id == waiting.container_id  # claimed, not started cold
        _, outputs = run(kc, "import os; print(sorted(os.listdir('.')))")
        assert stdout_of(outputs) == "['only-here.txt']\n"  # its own directory, nothing else
        volume = prov._volume
    assert volume not in [v["Name"] for v in remote.volumes({labels.ROLE: "kernel-workdir"})]
    pool.close_all()
    assert not remote.containers({labels.ROLE: labels.ROLE_KERNEL_POOL})
    assert not remote.volumes({labels.ROLE: "kernel-workdir"})


def test_a_server_killed_with_sigkill_leaves_nothing_after_gc_on_either_side(
    remote: Engine, kernel_image: str, remote_spec, dockerhost: dict[str, str], notebook_dir: Path
) -> None:
    import psutil

    name = remote_spec("nbc-remote-killed")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from jupyter_client import KernelManager\n"
            f"km = KernelManager(kernel_name={name!r})\n"
            f"km.start_kernel(cwd={str(notebook_dir)!r})\n"
            "print(km.kernel_id, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        kernel_id = server.stdout.readline().strip()
        assert kernel_id, "the server did not start its kernel"
        ssh = [p for p in psutil.Process(server.pid).children() if p.name() == "ssh"]
        assert len(ssh) == 2  # the host's Docker connection, and the kernel's channels
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        server.stdout.close()
    assert _remote_leftovers(remote, kernel_id)["containers"]
    assert all(p.is_running() for p in ssh)  # nothing ended them: they are the litter
    out = subprocess.run(
        [
            sys.executable, "-m", "nbcontainer_kernel.cli", "gc",
            "--docker-host", dockerhost["NBCONTAINER_TESTBED_DOCKER_HOST"],
            "--ssh-config", dockerhost["NBCONTAINER_TESTBED_SSH_CONFIG"],
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"remote kernel {kernel_id}" in out.stdout
    assert _remote_leftovers(remote, kernel_id) == {"containers": [], "volumes": []}
    psutil.wait_procs(ssh, timeout=10)
    assert not [p for p in ssh if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert remote_host.records() == []


def test_a_tcp_docker_host_is_verified_by_tls_and_its_kernels_channels_still_go_by_ssh(
    remote: Engine, kernel_image: str, make_kernelspec, dockerhost: dict[str, str],
    notebook_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    tcp, tls = dockerhost["NBCONTAINER_TESTBED_TCP_HOST"], dockerhost["NBCONTAINER_TESTBED_TLS_DIR"]
    name = make_kernelspec(
        "nbc-remote-tcp",
        docker_host=tcp,
        docker_tls_dir=tls,
        ssh_host=dockerhost["NBCONTAINER_TESTBED_DOCKER_HOST"],
        ssh_config=dockerhost["NBCONTAINER_TESTBED_SSH_CONFIG"],
        pool_size=0,
    )
    with started(name, cwd=str(notebook_dir)) as (km, kc):
        prov = docker_provisioner(km)
        assert remote.inspect(prov.container_id)["State"]["Running"]  # the same engine
        assert stdout_of(run(kc, "print(open('data.csv').read())")[1]) == "a,b\n1,2\n\n"
    # A daemon whose certificate another CA signed is refused, not trusted.
    wrong = tmp_path / "wrong-ca"
    wrong.mkdir()
    for f in ("cert.pem", "key.pem"):
        (wrong / f).write_bytes((Path(tls) / f).read_bytes())
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(wrong / "ca.key"), "-out", str(wrong / "ca.pem"), "-days", "1",
         "-subj", "/CN=not the test bed's CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(hosts.HostUnreachable) as err:
        hosts.connection_for(tcp, None, str(wrong)).engine  # noqa: B018 (it connects)
    assert "certificate verify failed" in err.value.reason.lower()


def test_host_check_says_what_a_host_has_and_what_it_lacks(
    engine: Engine, remote: Engine, kernel_image: str, dockerhost: dict[str, str]
) -> None:
    url, config = (
        dockerhost["NBCONTAINER_TESTBED_DOCKER_HOST"],
        dockerhost["NBCONTAINER_TESTBED_SSH_CONFIG"],
    )

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nbcontainer_kernel.cli", "host", "check", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    if not remote.has_image(kernel_image):
        copy_image(engine, remote, kernel_image)
    out = check(url, "--ssh-config", config, "--image", kernel_image)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()}
    assert "host key verified" in lines["connection"]
    assert "ok" in lines["image"] and "GiB free" in lines["disk"]
    assert "warning" in lines["gpu"]  # the test bed has no NVIDIA runtime
    out = check(url, "--ssh-config", config, "--image", kernel_image, "--gpus")
    assert out.returncode == 1 and "MISSING" in out.stdout
    out = check(url, "--ssh-config", config, "--image", "nbcontainer/nowhere:1")
    assert out.returncode == 1 and "neither there nor here" in out.stdout
    out = check("ssh://nbc-no-such-host.invalid", "--ssh-config", config)
    assert out.returncode == 1 and "resolve" in out.stdout.lower()

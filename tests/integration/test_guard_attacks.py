"""The guard against an attacker, in front of the real daemon.

A guard runs in the test process (as it runs in the Jupyter server), forwarding to the
real dockerd; the "kernel" is a real container standing in for one (its id is what the
guard sees as the peer), granted like a kernel whose user is 1000:1000 and which has a
writable and a read-only host mount. Every attack of tests/guard_attacks.py is either
refused, or what it made is inspected on the daemon itself and must be within policy:
the checks below read what dockerd stored, independently of the guard's own.

The same attacks run from inside a real guarded kernel in test_docker_guard.py.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.guard import GUARD_KERNEL, DockerGuard, Grant
from nbcontainer_kernel.kernel.provisioner import _docker_socket_path
from tests import guard_attacks as attacks
from tests.helpers import inspected

BASE = "nbcontainer/base:bookworm"
USER = "1000:1000"
KERNEL = "k-attacked"


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


@pytest.fixture
def bed(engine: Engine) -> Iterator[dict[str, Any]]:
    """A stand-in kernel container, a foreign container and image, host mounts, a guard."""
    made = labels.container_labels(labels.ROLE_PROBE)
    stand_in = engine.create_container(BASE, command=["sleep", "900"], labels=made)
    foreign = engine.create_container(BASE, command=["sleep", "900"], labels=made)
    other = engine.create_container(BASE, command=["sleep", "900"], labels=made)
    for c in (stand_in, foreign, other):
        engine.start(c)
    engine.tag(BASE, "nbc-guard-foreign", "attack")
    root = Path(tempfile.mkdtemp(prefix="nbc-guard-attack-"))
    mount, read_only = root / "work", root / "ro"
    mount.mkdir(mode=0o777)
    read_only.mkdir()
    os.chmod(mount, 0o777)
    (mount / "sub").mkdir()
    (mount / "link").symlink_to("/")
    others: dict[int, str] = {}  # pid -> container: a second "kernel" in a subprocess

    def identify(sock: socket.socket) -> str | None:
        pid = _peer_pid(sock)
        return others.get(pid, stand_in.id)

    guard = DockerGuard(_docker_socket_path(), identify=identify, parent=str(root))
    guard.grant(
        Grant(
            kernel_id=KERNEL,
            container_id=stand_in.id,
            mounts=((str(mount), False), (str(read_only), True)),
            user=USER,
        )
    )
    guard.grant(Grant(kernel_id="k-other", container_id=other.id))
    ctx = attacks.Context(
        base=BASE,
        mount=str(mount),
        read_only=str(read_only),
        foreign_container=foreign.id,
        foreign_image="nbc-guard-foreign:attack",
        sock=guard.path,
    )
    yield {"guard": guard, "ctx": ctx, "others": others, "other": other, "stand_in": stand_in,
           "mount": mount}  # fmt: skip
    guard.close()
    for c in engine.containers({GUARD_KERNEL: KERNEL}):
        engine.remove(c.id)
    for c in (stand_in, foreign, other):
        engine.remove(c.id)
    for ref in ("nbc-guard-foreign:attack", "guard-attack-build:1", "guard-own:1", "mine-x:1"):
        if engine.has_image(ref):
            engine.remove_image(ref, force=True)
    subprocess.run(["rm", "-rf", str(root)], check=False)


class _Fetched(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")


def test_every_create_and_build_attack_is_refused_or_made_within_policy(
    engine: Engine, bed: dict[str, Any]
) -> None:
    # What builds try to make the daemon fetch is served here, on the host's loopback (the
    # daemon fetches ADD <url> itself, whatever the build's network): nothing may ask.
    server = http.server.HTTPServer(("127.0.0.1", 0), _Fetched)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Fetched.hits.clear()
    ctx = dataclasses.replace(bed["ctx"], fetch=f"http://127.0.0.1:{server.server_port}/x")
    try:
        results = attacks.run_table({**attacks.key_spelling(ctx), **attacks.host_reach(ctx)})
    finally:
        server.shutdown()
        server.server_close()
    assert _Fetched.hits == [], "the daemon fetched what a guarded build asked"
    assert not engine.has_image("guard-attack-build:1"), "a refused build was built"
    # Positive controls: the same socket makes what is allowed (so a refusal is a decision).
    for name in ("a plain create", "a plain create with its mount"):
        assert results[name]["status"] == 201, results[name]
    attacks.judge(results, engine.inspect, engine.remove, USER, KERNEL, {str(bed["mount"])})


def test_repeated_query_keys_never_reach_the_daemon(engine: Engine, bed: dict[str, Any]) -> None:
    ctx = bed["ctx"]
    own = attacks.build(ctx, f"FROM {BASE}\nLABEL made=here\n")
    assert own["status"] == 200 and own["created"], own
    engine.tag("guard-attack-build:1", "guard-own", "1")
    # The kernel's own build is the kernel's: it may tag it (positive control).
    status, _ = attacks.request(ctx.sock, "POST", "/v1.41/images/guard-own:1/tag?repo=mine-x&tag=1")
    assert status == 201
    results = attacks.run_table(attacks.repeated_keys(ctx, "guard-own:1"))
    for name, result in results.items():
        assert result["status"] == 400, (name, result)
    # Nothing moved: the foreign name still names the base image.
    assert engine.get_image("nbc-guard-foreign:attack").id == engine.get_image(BASE).id


def test_no_framing_trick_gets_a_request_past_the_guard(bed: dict[str, Any]) -> None:
    results = attacks.run_table(attacks.framing(bed["ctx"]))
    for name, result in results.items():
        assert result["status"] != 999, f"{name}: a smuggled request was answered: {result}"
        assert 400 <= result["status"] < 600, (name, result)


def test_an_exec_is_unprivileged_and_runs_as_the_kernels_user(
    engine: Engine, bed: dict[str, Any]
) -> None:
    ctx = bed["ctx"]
    body = '{"Image":' + json.dumps(BASE) + ',"Cmd":["sleep","60"]}'
    made = attacks.create(ctx, body)
    assert made["status"] == 201, made
    cid = made["created"]
    status, _ = attacks.request(ctx.sock, "POST", f"/v1.41/containers/{cid}/start")
    assert status == 204
    for name, result in attacks.run_table(attacks.exec_privileged(ctx, cid)).items():
        assert result["status"] in (400, 403), (name, result)
    status, answer = attacks.request(
        ctx.sock, "POST", f"/v1.41/containers/{cid}/exec", b'{"Cmd":["id","-u"]}'
    )
    assert status == 201
    process = engine.client.api.exec_inspect(answer["Id"])["ProcessConfig"]
    assert process["user"] == USER and not process["privileged"]
    engine.remove(cid)


def test_an_archive_is_owned_by_the_kernel_and_plants_no_setuid_file(
    engine: Engine, bed: dict[str, Any]
) -> None:
    ctx, mount = bed["ctx"], bed["mount"]
    body = (
        '{"Image":'
        + json.dumps(BASE)
        + ',"Cmd":["sleep","60"],"HostConfig":{"Binds":['
        + json.dumps(f"{mount}:/work")
        + "]}}"
    )
    made = attacks.create(ctx, body)
    assert made["status"] == 201, made
    result = attacks.setuid_archive(ctx, made["created"])
    assert result["status"] == 200, result
    planted = os.stat(mount / "planted")
    assert planted.st_mode & 0o6000 == 0 and (planted.st_uid, planted.st_gid) == (1000, 1000)
    device = attacks.device_archive(ctx, made["created"])
    assert device["status"] == 403 and "a device" in device["message"], device
    engine.remove(made["created"])


def test_a_kernel_gets_no_more_containers_than_its_limit(
    engine: Engine, bed: dict[str, Any]
) -> None:
    guard, ctx = bed["guard"], bed["ctx"]
    stand_in = bed["stand_in"]
    mount = str(bed["mount"])
    guard.grant(Grant(KERNEL, stand_in.id, mounts=((mount, False),), user=USER,
                      memory=64 << 20, max_containers=3))  # fmt: skip
    try:
        body = '{"Image":' + json.dumps(BASE) + ',"Cmd":["sleep","60"]}'
        first = attacks.create(ctx, body[:-1] + ',"HostConfig":{"Memory":41943040}}')
        assert first["status"] == 201, first
        # What is left of the kernel's 64 MiB: 24 MiB, given when none is asked.
        second = attacks.create(ctx, body)
        assert second["status"] == 201, second
        assert inspected(engine, second["created"])["HostConfig"]["Memory"] == 24 << 20
        third = attacks.create(ctx, body)
        assert third["status"] == 403 and "leave 0" in third["message"], third
    finally:
        guard.grant(Grant(KERNEL, stand_in.id, mounts=((mount, False),), user=USER))
        for c in engine.containers({GUARD_KERNEL: KERNEL}):
            engine.remove(c.id)


OTHER_KERNEL = textwrap.dedent(
    """
    import json, sys, time, docker
    client = docker.DockerClient(base_url="unix://" + sys.argv[1], timeout=10)
    took = []
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        t = time.monotonic()
        client.ping()
        client.containers.list()
        took.append(time.monotonic() - t)
        time.sleep(0.05)
    print(json.dumps(took))
    """
)


def test_a_kernel_holding_thousands_of_connections_does_not_starve_the_others(
    bed: dict[str, Any],
) -> None:
    guard, ctx = bed["guard"], bed["ctx"]
    threads_before = threading.active_count()
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_KERNEL, ctx.sock, "12"], stdout=subprocess.PIPE, text=True
    )
    bed["others"][other.pid] = bed["other"].id
    time.sleep(1)
    held = attacks.exhaust(ctx.sock, 5000, hold=3)
    print({k: v for k, v in held.items() if k != "sockets"}, guard.turned_away)
    try:
        # The guard serves at most max_per_kernel of them; the rest were answered at once.
        assert held["opened"] == 5000, held["refused"]
        assert held["turned_away"] >= 5000 - guard.max_per_kernel, held["turned_away"]
        assert threading.active_count() - threads_before <= guard.max_per_kernel + 8
        out, _ = other.communicate(timeout=60)
        took = json.loads(out)
        assert len(took) >= 20 and max(took) < 5, took  # the other kernel was served throughout
        print(f"the other kernel's calls: {len(took)}, slowest {max(took):.3f} s")
    finally:
        attacks.close_all(held["sockets"])
        other.kill()
    # The held connections go: closed by the kernel, or by the guard's timeouts.
    deadline = time.monotonic() + guard.timeouts.idle + 5
    while guard.connection_count() > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert guard.connection_count() <= 2


def test_what_works_through_the_guard_streams_logs_archives_and_attach(
    engine: Engine, bed: dict[str, Any]
) -> None:
    ctx = bed["ctx"]
    client = docker.DockerClient(base_url=f"unix://{ctx.sock}", timeout=30)
    c = client.containers.create(
        BASE, ["sh", "-c", "echo one; read line; echo got $line; sleep 1; echo two"],
        stdin_open=True,
    )  # fmt: skip
    try:
        sock = client.api.attach_socket(c.id, params={"stdin": 1, "stream": 1, "stdout": 1})
        c.start()
        sock._sock.sendall(b"hello\n")
        got = b""
        deadline = time.monotonic() + 20
        while b"two" not in got and time.monotonic() < deadline:
            data = sock._sock.recv(4096)
            if not data:
                break
            got += data
        assert b"got hello" in got and b"two" in got, got
        assert c.wait(timeout=30)["StatusCode"] == 0
        assert b"one" in c.logs()
        # A 64 MiB archive streams both ways, unchanged.
        payload = os.urandom(64 << 20)
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("big")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        assert c.put_archive("/tmp", buf.getvalue())
        stream, stat = c.get_archive("/tmp/big")
        back = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=back) as tar:
            member = tar.extractfile("big")
            assert member is not None and member.read() == payload
        assert stat["size"] == len(payload)
        # exec start through the upgrade: it runs as the kernel's user, its output comes back
        waiting = client.containers.run(BASE, ["sleep", "60"], detach=True)
        try:
            code, output = waiting.exec_run(["id", "-u"])
            assert (code, output.strip()) == (0, b"1000")
        finally:
            waiting.remove(force=True)
    finally:
        c.remove(force=True)


def test_the_docker_cli_works_through_the_guard(engine: Engine, bed: dict[str, Any]) -> None:
    """The docker CLI (this machine's client) speaks to the guard unchanged: run, exec,
    logs, cp, a classic build, rmi; and gets the guard's refusal for what it refuses."""
    ctx = bed["ctx"]
    env = {**os.environ, "DOCKER_HOST": f"unix://{ctx.sock}", "DOCKER_BUILDKIT": "0"}

    def docker_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=120
        )

    assert docker_cli("run", "--rm", BASE, "echo", "hi").stdout == "hi\n"
    made = docker_cli("run", "-d", BASE, "sleep", "60").stdout.strip()
    try:
        assert docker_cli("exec", made, "id", "-u").stdout.strip() == "1000"
        assert docker_cli("cp", "/etc/hostname", f"{made}:/tmp/x").returncode == 0
    finally:
        docker_cli("rm", "-f", made)
    context = Path(tempfile.mkdtemp())
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo built\n")
    built = docker_cli("build", "-q", "-t", "guard-attack-build:1", str(context))
    assert built.returncode == 0, built.stderr
    assert docker_cli("rmi", "guard-attack-build:1").returncode == 0
    refused = docker_cli("run", "--rm", "--privileged", BASE, "true")
    assert refused.returncode != 0 and "HostConfig.Privileged" in refused.stderr

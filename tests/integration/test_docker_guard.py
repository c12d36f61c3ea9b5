"""A guarded kernel (docker_access = guarded, the default) on a real daemon: what
%%remote_run needs works through the guard, what would reach the host is refused with a
403 naming the field, and the guard leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.guard import GUARD_KERNEL, current_guard
from nbcontainer_kernel.guard.server import DIR_PREFIX
from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import docker_provisioner, inspected, run, started, stdout_of

BASE = "nbcontainer/base:bookworm"

# Run inside the kernel: each attempt, and what the guard answered.
ATTEMPTS = textwrap.dedent(
    """
    import http.client, json, socket, docker
    client = docker.from_env()
    BASE, FOREIGN = {base!r}, {foreign!r}
    attempts = {{
        "privileged": lambda: client.containers.create(BASE, "true", privileged=True),
        "bind of /": lambda: client.containers.create(BASE, "true", volumes=["/:/host"]),
        "host network": lambda: client.containers.create(BASE, "true", network_mode="host"),
        "host pid": lambda: client.containers.create(BASE, "true", pid_mode="host"),
        "cap_add": lambda: client.containers.create(BASE, "true", cap_add=["SYS_ADMIN"]),
        "devices": lambda: client.containers.create(BASE, "true", devices=["/dev/kmsg"]),
        "exec into foreign": lambda: client.api.exec_create(FOREIGN, "true"),
        "remove foreign": lambda: client.api.remove_container(FOREIGN, force=True),
        "build on the host network": lambda: client.api.build(
            fileobj=__import__("io").BytesIO(b"FROM " + BASE.encode()), network_mode="host",
            rm=True, decode=True),
    }}
    out = {{}}
    for name, attempt in attempts.items():
        try:
            result = attempt()
            list(result) if name.startswith("build") else None
            out[name] = [0, "allowed"]
        except docker.errors.APIError as exc:
            out[name] = [exc.status_code, str(exc.explanation)]

    # A hand-written create that hides a bind of / in HostConfig.Mounts.
    body = json.dumps({{"Image": BASE, "Cmd": ["true"], "HostConfig": {{"Mounts": [
        {{"Type": "bind", "Source": "/", "Target": "/host"}}]}}}})
    conn = http.client.HTTPConnection("docker")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect("/var/run/docker.sock")
    conn.request("POST", "/v1.41/containers/create", body=body,
                 headers={{"Content-Type": "application/json"}})
    answer = conn.getresponse()
    out["hidden mount"] = [answer.status, json.loads(answer.read())["message"]]
    print(json.dumps(out))
    """
)

EXPECTED = {
    "privileged": "HostConfig.Privileged",
    "bind of /": "HostConfig.Binds",
    "host network": "HostConfig.NetworkMode",
    "host pid": "HostConfig.PidMode",
    "cap_add": "HostConfig.CapAdd",
    "devices": "HostConfig.Devices",
    "exec into foreign": "was not created by this kernel",
    "remove foreign": "was not created by this kernel",
    "build on the host network": "networkmode",
    "hidden mount": "HostConfig.Mounts[0].Source",
}


def test_a_guarded_kernel_is_refused_what_would_reach_the_host(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    foreign = engine.create_container(
        BASE, command=["sleep", "60"], labels=labels.container_labels(labels.ROLE_PROBE)
    )
    try:
        engine.start(foreign)
        with started(make_kernelspec("nbc-guard-refusals"), cwd=str(tmp_path)) as (km, kc):
            assert docker_provisioner(km).docker_access_mode == "guarded"
            content, outputs = run(kc, ATTEMPTS.format(base=BASE, foreign=foreign.id), 120)
            assert content["status"] == "ok", outputs
            answers = json.loads(stdout_of(outputs))
        for case, field in EXPECTED.items():
            status, message = answers[case]
            assert status == 403 and field in message, (case, answers[case])
            assert "nbcontainer's Docker guard refused" in message
        info = engine.inspect(foreign.id)
        assert info is not None and info["State"]["Running"], "the foreign container lives on"
    finally:
        engine.remove(foreign.id)


def test_a_guarded_kernel_runs_remote_run_local_and_a_sweep_and_owns_what_it_made(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    with started(make_kernelspec("nbc-guard-runs"), cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, "import pandas as pd\nbase = 40", 60)
        cell = "%%remote_run --local --name g\nanswer = base + 2\ndf = pd.DataFrame({'x': [1, 2]})"
        content, outputs = run(kc, cell, 600)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        assert stdout_of(run(kc, "print(answer, type(df).__name__, df.x.sum())")[1]) == (
            "42 DataFrame 3\n"
        )
        sweep = "%%remote_run --local --name gs --sweep k=1,2,3 --max-parallel 2\ny = k * 10"
        content, outputs = run(kc, sweep, 600)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        children = ledger.find(parent="gs-1")
        assert sorted(c["status"] for c in children) == ["SUCCEEDED"] * 3
        assert ledger.get("g-1")["status"] == "SUCCEEDED"
        # Everything the kernel made carries its id, put there by the guard.
        made = engine.containers({GUARD_KERNEL: km.kernel_id})
        assert made and all(c.labels[GUARD_KERNEL] == km.kernel_id for c in made)
        # A build through the guard: its own label wins over the Dockerfile's.
        code = (
            "import io, docker\nc = docker.from_env()\n"
            f"img, _ = c.images.build(fileobj=io.BytesIO(b'FROM {BASE}\\n"
            f"LABEL {GUARD_KERNEL}=somebody-else\\n'), tag='nbc-guard-test:1')\n"
            f"print(img.labels['{GUARD_KERNEL}'])\nc.images.remove('nbc-guard-test:1')"
        )
        content, outputs = run(kc, code, 300)
        assert content["status"] == "ok", outputs
        assert stdout_of(outputs).strip() == km.kernel_id
    left = engine.containers({GUARD_KERNEL: km.kernel_id})
    assert left == [], [(c.name, c.status, c.labels) for c in left]


def test_twenty_guarded_kernels_leave_no_socket_thread_or_container(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-guard-cycles")
    code = (
        "import docker\nc = docker.from_env()\n"
        f"x = c.containers.create('{BASE}', ['sleep', '60'])\nx.start()\nprint(x.id)"
    )
    made = []
    for i in range(20):
        with started(name, cwd=str(tmp_path)) as (km, kc):
            content, outputs = run(kc, code, 60)
            assert content["status"] == "ok", outputs
            made.append(stdout_of(outputs).strip())
            if i % 2:  # half of them are killed, not shut down
                km.shutdown_kernel(now=True)
        guard = current_guard()
        assert guard is not None and guard.granted() == []
    guard = current_guard()
    assert guard is not None
    # The kernel's cleanup removed what it made; the guard holds no connection or thread.
    assert [engine.inspect(cid) for cid in made] == [None] * 20
    assert guard.connection_count() == 0
    conns = [t for t in threading.enumerate() if t.name == "nbcontainer-guard-conn"]
    assert conns == []
    # One socket serves every kernel of this process, in a directory of its own.
    mine = [
        p for p in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{os.getpid()}-*")
    ]  # fmt: skip
    assert [str(p) for p in mine] == [guard.directory]


ATTACKS_IN_A_CELL = """
import json, sys, traceback
sys.path.insert(0, {root!r})  # the notebook's directory, mounted at the same path
try:
    import guard_attacks as a
    ctx = a.Context(**json.loads({ctx!r}))
    results = a.run_table({{**a.key_spelling(ctx), **a.host_reach(ctx), **a.framing(ctx)}})
    print(json.dumps(results))
except Exception:
    import os
    print(traceback.format_exc(), os.getcwd())
"""

HOLD_IN_A_CELL = """
import threading, guard_attacks as a
held = {{}}
def hold():
    held.update(a.exhaust("/var/run/docker.sock", 5000, hold={hold}))
holder = threading.Thread(target=hold)
holder.start()
"""

RELEASE_IN_A_CELL = """
holder.join()
a.close_all(held.pop("sockets"))
print(json.dumps(held))
"""


def test_attacks_from_a_guarded_kernels_cells_are_refused_and_starve_no_one(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    """The attacker's table from a cell of a real guarded kernel of a real Jupyter server;
    then the same kernel holds 5,000 connections while another kernel's Docker calls and
    the server's own API keep answering."""
    from tests.lab import Lab

    shutil.copy(Path(__file__).parents[1] / "guard_attacks.py", tmp_path)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    name = make_kernelspec("nbc-guard-attacker", mounts=[f"{read_only}:/ro:ro"])
    foreign = engine.create_container(
        BASE, command=["sleep", "300"], labels=labels.container_labels(labels.ROLE_PROBE)
    )
    engine.tag(BASE, "nbc-guard-foreign", "cell")
    lab = Lab(tmp_path)
    try:
        engine.start(foreign)
        # path "": the kernels start in the server's root (tmp_path), mounted at its path.
        attacker = lab.post("/api/kernels", {"name": name, "path": ""}).json()["id"]
        other = lab.post("/api/kernels", {"name": name, "path": ""}).json()["id"]
        ctx = {
            "base": BASE,
            "mount": os.path.realpath(tmp_path),
            "read_only": os.path.realpath(read_only),
            "foreign_container": foreign.id,
            "foreign_image": "nbc-guard-foreign:cell",
        }
        cell = ATTACKS_IN_A_CELL.format(ctx=json.dumps(ctx), root=ctx["mount"])
        out = lab.execute(attacker, cell, timeout=600)
        assert out.strip().startswith("{"), out
        results = json.loads(out)
        user = f"{os.getuid()}:{os.getgid()}"  # the kernel's user: 'host', the default
        mounts = {str(tmp_path.resolve()), str(read_only.resolve())}
        attacks_judge(results, engine, user, attacker, mounts)
        assert foreign.id == inspected(engine, foreign.id)["Id"]  # untouched

        lab.execute(attacker, HOLD_IN_A_CELL.format(hold=8), timeout=120)
        took, api = [], []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            t = time.monotonic()
            assert "1" in lab.execute(
                other, "import docker\nprint(len([docker.from_env().ping()]))"
            )
            took.append(time.monotonic() - t)
            t = time.monotonic()
            assert lab.get("/api/status").ok
            api.append(time.monotonic() - t)
        held = json.loads(lab.execute(attacker, RELEASE_IN_A_CELL, timeout=120).strip())
        guard_max = 48
        assert held["opened"] == 5000 and held["turned_away"] >= 5000 - guard_max, held
        assert len(took) >= 3 and max(took) < 5 and max(api) < 2, (took, api)
    finally:
        lab.stop()
        engine.remove(foreign.id)
        engine.remove_image("nbc-guard-foreign:cell")


def attacks_judge(
    results: dict[str, Any], engine: Engine, user: str, kernel: str, mounts: set[str]
) -> None:
    from tests import guard_attacks

    guard_attacks.judge(results, engine.inspect, engine.remove, user, kernel, mounts)


def test_a_kernel_with_limits_shares_them_among_its_runs_and_sweep_children(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    """The guard keeps a kernel's containers within its memory and CPUs together; a run
    and a sweep's parallel children that ask for none get shares, and run."""
    name = make_kernelspec("nbc-guard-limited", memory="1g", cpus=1.0)
    cell = (
        "import pathlib\n"
        "v1 = pathlib.Path('/sys/fs/cgroup/memory/memory.limit_in_bytes')\n"
        "limit = int((v1 if v1.exists() else pathlib.Path('/sys/fs/cgroup/memory.max'))"
        ".read_text())"
    )
    with started(name, cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, f"%%remote_run --local --name one\n{cell}", 600)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        assert stdout_of(run(kc, "print(limit)")[1]).strip() == str(1 << 30)
        sweep = f"%%remote_run --local --name lim --sweep k=1,2,3 --max-parallel 2\n{cell}"
        content, outputs = run(kc, sweep, 600)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        children = ledger.find(parent="lim-1")
        assert sorted(c["status"] for c in children) == ["SUCCEEDED"] * 3
        shown = stdout_of(run(kc, "print(limit)")[1])
        assert str(1 << 29) in shown and str(1 << 30) not in shown, shown

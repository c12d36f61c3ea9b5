"""The warm kernel pool's state machine over a fake Docker daemon (tests/fakes.py): claims,
refills, the claim lock, closing, and what decides a launch shape. The real-daemon tests
(tests/integration/test_kernel_pool.py) run kernels claimed from a real pool."""

from __future__ import annotations

import json
import threading
from typing import Any

import docker.types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.kernelspec import KernelSpec

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.options import validate_options
from nbcontainer_kernel.kernel import pool as pool_module
from nbcontainer_kernel.kernel.kernelspec import render
from nbcontainer_kernel.kernel.provisioner import KERNEL_PORTS, DockerProvisioner
from nbcontainer_kernel.runtime.contract import KERNEL_CONNECTION_FILE
from nbcontainer_kernel.runtime.errors import InvalidOption
from tests.fakes import FAKE_KERNEL_IMAGE as IMAGE
from tests.fakes import FakeContainer, FakeDocker

CLAIM = f"/{pool_module.CLAIM_FILE.lstrip('/')}"
CONNECTION = f"/{KERNEL_CONNECTION_FILE.lstrip('/')}"


def _provisioner(kernel_id: str = "0123456789abcdef", **options: Any) -> DockerProvisioner:
    spec = KernelSpec(**render(IMAGE, "Fake (Docker)", env={"SPEC_TOKEN": "s3cr3t"}))
    spec.env = {"SPEC_TOKEN": "s3cr3t"}
    return DockerProvisioner(
        kernel_id=kernel_id,
        kernel_spec=spec,
        parent=None,
        image=IMAGE,
        mount_cwd=False,
        mount_ledger=False,
        **{"docker_access": "none", **options},  # the guard has its own tests
    )


async def _start(prov: DockerProvisioner) -> DockerProvisioner:
    kwargs = await prov.pre_launch()
    await prov.launch_kernel(**kwargs)
    return prov


def _pool_containers(daemon: FakeDocker) -> list[FakeContainer]:
    """The waiting ones (a claimed one keeps its labels, and takes its kernel's name)."""
    return [
        c
        for c in daemon.containers_by_id.values()
        if c.labels.get(labels.ROLE) == labels.ROLE_KERNEL_POOL
        and not c.name.startswith("nbcontainer-kernel-")
    ]


def _the_pool() -> pool_module.KernelPool:
    [pool] = pool_module.pools()
    return pool


async def test_the_first_kernel_starts_cold_and_the_pool_fills_after_it(
    daemon: FakeDocker,
) -> None:
    prov = await _start(_provisioner())
    assert prov.container_name and prov.container_name.startswith("nbcontainer-kernel-01234567")
    assert _pool_containers(daemon) == []  # nothing made on the kernel's own path
    pool = _the_pool()
    pool.fill()
    [waiting] = _pool_containers(daemon)
    assert waiting.state["Running"] and waiting.labels[labels.POOL_SHAPE] == pool.shape
    assert waiting.labels[labels.OWNER_PID] and labels.KERNEL_ID not in waiting.labels


async def test_a_waiting_container_holds_no_kernel_keys_or_environment(daemon: FakeDocker) -> None:
    await _start(_provisioner())
    _the_pool().fill()
    [waiting] = _pool_containers(daemon)
    assert waiting.files == {}
    env = waiting.kwargs["environment"]
    assert "SPEC_TOKEN" not in env and "NBCONTAINER_KERNEL_ID" not in env
    assert waiting.kwargs["entrypoint"] == ["python3"]
    assert waiting.kwargs["command"][:1] == ["-c"] and waiting.kwargs["command"][-1] == CLAIM


async def test_a_kernel_started_while_a_container_waits_claims_it(daemon: FakeDocker) -> None:
    await _start(_provisioner())
    _the_pool().fill()
    [waiting] = _pool_containers(daemon)
    before = set(daemon.containers_by_id)
    prov = await _start(_provisioner("fedcba9876543210"))
    assert set(daemon.containers_by_id) == before  # no container made for it
    assert prov.container_id == waiting.id
    assert waiting.name == "nbcontainer-kernel-fedcba9876543210"
    assert waiting.signals == ["SIGWINCH"]
    connection = json.loads(waiting.files[CONNECTION])
    claim = json.loads(waiting.files[CLAIM])
    assert connection["key"] and connection["shell_port"] == KERNEL_PORTS["shell_port"]
    assert claim["argv"][:3] == ["python3", "-m", "ipykernel_launcher"]
    assert claim["env"]["NBCONTAINER_KERNEL_ID"] == "fedcba9876543210"
    assert claim["env"]["SPEC_TOKEN"] == "s3cr3t"
    published = {p: int(b[0]["HostPort"]) for p, b in waiting.ports.items()}
    assert {name: prov.connection_info[name] for name in KERNEL_PORTS} == {
        name: published[f"{port}/tcp"] for name, port in KERNEL_PORTS.items()
    }


async def test_two_kernels_started_at_once_never_share_a_container(daemon: FakeDocker) -> None:
    await _start(_provisioner())
    pool = _the_pool()
    pool.fill()
    [waiting] = _pool_containers(daemon)
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def claim(n: int) -> None:
        barrier.wait()
        got.append(pool.claim_kernel(f"kernel{n}", {}, ["python3", "-m", "x"], {}, None, 0, 0))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [w for w in got if w is not None]
    assert [w.container_id for w in claimed] == [waiting.id] and len(got) == 8


async def test_a_container_that_died_waiting_is_removed_and_the_kernel_starts_cold(
    daemon: FakeDocker,
) -> None:
    await _start(_provisioner())
    _the_pool().fill()
    [waiting] = _pool_containers(daemon)
    waiting.exit(1, log=b"ModuleNotFoundError: No module named 'ipykernel'\n")
    prov = await _start(_provisioner("fedcba9876543210"))
    assert waiting.id not in daemon.containers_by_id
    assert prov.container_id != waiting.id and await prov.poll() is None


async def test_a_restart_keeps_its_ports_in_a_fresh_container(daemon: FakeDocker) -> None:
    await _start(_provisioner())
    _the_pool().fill()
    prov = await _start(_provisioner("fedcba9876543210"))
    ports = {k: prov.connection_info[k] for k in KERNEL_PORTS}
    _the_pool().fill()
    [waiting] = _pool_containers(daemon)
    await prov.cleanup(restart=True)
    await _start(prov)
    assert prov.container_id != waiting.id and waiting.id in daemon.containers_by_id
    assert {k: prov.connection_info[k] for k in KERNEL_PORTS} == ports


async def test_pool_size_zero_makes_no_pool(daemon: FakeDocker) -> None:
    for n in range(3):
        prov = await _start(_provisioner(f"kernel{n}", pool_size=0))
        assert await prov.poll() is None
    assert pool_module.pools() == [] and _pool_containers(daemon) == []


async def test_closing_removes_waiting_containers_and_any_made_afterwards(
    daemon: FakeDocker,
) -> None:
    await _start(_provisioner(pool_size=3))
    pool = _the_pool()
    pool.fill()
    assert len(_pool_containers(daemon)) == 3
    assert pool_module.close_all() == 3
    assert _pool_containers(daemon) == []
    pool.fill()  # a refill that comes after the close makes nothing
    assert _pool_containers(daemon) == []


async def test_a_refill_is_scheduled_after_a_claim_not_run_in_it(
    daemon: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr(
        pool_module.KernelPool, "fill_later", lambda self, delay=1.0: delays.append(delay)
    )
    await _start(_provisioner())
    assert delays == [pool_module.REFILL_DELAY] and _pool_containers(daemon) == []


@pytest.mark.parametrize("size", [-1, 17])
def test_a_pool_size_out_of_range_is_refused_at_install(size: int) -> None:
    with pytest.raises(InvalidOption, match="pool_size"):
        validate_options({"image": IMAGE, "pool_size": size}, check_paths=False)


# ----------------------------------------------------------------- shapes
def _kwargs(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "nbcontainer-kernel-a",
        "labels": {labels.KERNEL_ID: "a"},
        "environment": {"HOME": "/tmp", "NBCONTAINER_KERNEL_ID": "a", "JPY_SESSION_NAME": "x"},
        "entrypoint": ["python3"],
        "command": ["-m", "ipykernel_launcher"],
        "working_dir": "/srv/notebooks/a",
        "user": "1000:1000",
        "mounts": [docker.types.Mount(target="/srv", source="/srv", type="bind")],
        "ports": {f"{p}/tcp": ("127.0.0.1",) for p in KERNEL_PORTS.values()},
        "init": True,
    }
    base.update(over)
    return base


_PER_KERNEL = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=20),
        "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
        "environment": st.fixed_dictionaries(
            {"HOME": st.just("/tmp")},
            optional={
                "NBCONTAINER_KERNEL_ID": st.text(max_size=20),
                "JPY_SESSION_NAME": st.text(max_size=20),
                "AWS_SECRET_ACCESS_KEY": st.text(max_size=40),
            },
        ),
        "working_dir": st.one_of(st.none(), st.text(max_size=30)),
        "ports": st.just(
            {f"{p}/tcp": ("127.0.0.1", 40000 + i) for i, p in enumerate(KERNEL_PORTS.values())}
        ),
    }
)


@given(_PER_KERNEL)
def test_what_differs_per_kernel_never_changes_the_launch_shape(per_kernel: dict[str, Any]) -> None:
    assert pool_module.launch_shape("sha256:1", "python3", _kwargs(**per_kernel)) == (
        pool_module.launch_shape("sha256:1", "python3", _kwargs())
    )


@pytest.mark.parametrize(
    ("image_id", "python", "over"),
    [
        ("sha256:2", "python3", {}),
        ("sha256:1", "python3.11", {}),
        ("sha256:1", "python3", {"user": "0:0"}),
        ("sha256:1", "python3", {"mounts": []}),
        ("sha256:1", "python3", {"mem_limit": 1 << 30}),
        ("sha256:1", "python3", {"nano_cpus": 10**9}),
        ("sha256:1", "python3", {"network_mode": "host"}),
        ("sha256:1", "python3", {"init": False}),
        ("sha256:1", "python3", {"environment": {"HOME": "/tmp", "PYTHONPATH": "/lib"}}),
        ("sha256:1", "python3", {"environment": {"HOME": "/home/u"}}),
        ("sha256:1", "python3", {"group_add": ["998"]}),
    ],
)
def test_what_a_container_fixes_at_creation_changes_the_launch_shape(
    image_id: str, python: str, over: dict[str, Any]
) -> None:
    assert pool_module.launch_shape(image_id, python, _kwargs(**over)) != (
        pool_module.launch_shape("sha256:1", "python3", _kwargs())
    )


def test_start_env_keeps_only_what_python_reads_at_start() -> None:
    env = {
        "PYTHONPATH": "/lib",
        "PYTHONHASHSEED": "0",
        "LD_LIBRARY_PATH": "/opt",
        "PATH": "/usr/bin",
        "HOME": "/tmp",
        "IPYTHONDIR": "/tmp/.ipython",
        "AWS_SECRET_ACCESS_KEY": "x",
        "NBCONTAINER_KERNEL_ID": "a",
        "TOKEN": "y",
    }
    assert set(pool_module.start_env(env)) == {
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "LD_LIBRARY_PATH",
        "PATH",
        "HOME",
        "IPYTHONDIR",
    }


async def test_a_kernels_cleanup_removes_what_its_process_made_but_a_detached_run(
    daemon: FakeDocker,
) -> None:
    prov = await _start(_provisioner(pool_size=0))
    assert prov.container_id is not None
    owner = {labels.OWNER_CONTAINER: prov.container_id[:12], labels.OWNER_PID: "7"}
    made = {
        role: daemon.containers.create(IMAGE, labels={**owner, labels.ROLE: role, **extra})
        for role, extra in (
            (labels.ROLE_RUN_POOL, {}),
            (labels.ROLE_RUN, {}),
            ("detached-run", {labels.DETACHED: "true"}),
        )
    }
    other = daemon.containers.create(
        IMAGE, labels={labels.OWNER_CONTAINER: "someoneelse0", labels.ROLE: labels.ROLE_RUN}
    )
    for c in [*made.values(), other]:
        c.start()
    await prov.cleanup()
    assert set(daemon.containers_by_id) == {made["detached-run"].id, other.id}


def test_a_container_made_for_a_claim_that_dies_at_once_is_reported_not_retried(
    daemon: FakeDocker,
) -> None:
    import pickle

    from nbcontainer_kernel.docker import warm
    from nbcontainer_kernel.docker.archives import make_tar
    from nbcontainer_kernel.docker.engine import Engine
    from nbcontainer_kernel.runtime.errors import WaiterDied

    pool = warm.WarmPool(
        lambda: Engine(daemon),
        role=labels.ROLE_RUN_POOL,
        shape="s" * 16,
        image=IMAGE,
        image_id="sha256:1",
        create_kwargs={},
        size=1,
    )
    real_start = daemon.api.start

    def start_and_die(ident: str) -> None:
        real_start(ident)
        daemon.get(ident).exit(1, log=b"/opt/nbcontainer/venv/bin/nbcontainer-run: not found\n")

    daemon.api.start = start_and_die  # type: ignore[method-assign]
    with pytest.raises(WaiterDied, match="nbcontainer-run: not found") as err:
        pool.claim(lambda: make_tar({"claim": b"{}"}), "nbcontainer-run-x-000000", make=True)
    assert daemon.containers_by_id == {} and daemon.made == 1
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)

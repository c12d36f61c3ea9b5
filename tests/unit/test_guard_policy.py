"""The Docker guard's policy (nbcontainer_kernel/guard/policy.py), decided without a daemon.

Create bodies are made by docker-py itself (its HostConfig and ContainerConfig types), so
the table checks what a kernel's docker-py really sends; hand-written bodies cover what
docker-py would not write (a bind hidden in HostConfig.Mounts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import docker.types
import pytest
from docker.api.container import ContainerConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel import labels
from nbcontainer_kernel.guard.policy import (
    GUARD_KERNEL,
    Grant,
    Lookups,
    Refused,
    check_build,
    check_create,
    decide,
)

API = "1.41"
KERNEL = "k-0123"
KERNEL_CID = "a" * 64
MINE = "b" * 64
FOREIGN = "c" * 64


def _grant(tmp: Path | None = None, **kw: Any) -> Grant:
    mounts = ((str(tmp), False),) if tmp is not None else ()
    return Grant(kernel_id=KERNEL, container_id=KERNEL_CID, mounts=mounts, **kw)


def _containers(ref: str) -> dict[str, Any] | None:
    """A daemon with: the kernel's container, one it made (also named 'mine'), a foreign one."""
    table = {
        KERNEL_CID: {"Id": KERNEL_CID, "Config": {"Labels": {labels.ROLE: "kernel"}}},
        MINE: {"Id": MINE, "Config": {"Labels": {GUARD_KERNEL: KERNEL}}},
        "mine": {"Id": MINE, "Config": {"Labels": {GUARD_KERNEL: KERNEL}}},
        FOREIGN: {"Id": FOREIGN, "Config": {"Labels": {GUARD_KERNEL: "another-kernel"}}},
        "theirs": {"Id": FOREIGN, "Config": {"Labels": {}}},
    }
    return table.get(ref)


def _images(ref: str) -> dict[str, Any] | None:
    table = {
        "mine:1": {"Id": "sha256:m", "Config": {"Labels": {GUARD_KERNEL: KERNEL}}},
        "nbcontainer/base:bookworm": {"Id": "sha256:b", "Config": {"Labels": None}},
        "theirs:latest": {"Id": "sha256:t", "Config": {"Labels": {GUARD_KERNEL: "other"}}},
    }
    return table.get(ref)


def _look() -> Lookups:
    return Lookups(container=_containers, image=_images)


def _body(host: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """A create body as docker-py sends it."""
    return dict(
        ContainerConfig(
            API,
            "nbcontainer/base:bookworm",
            ["true"],
            host_config=docker.types.HostConfig(API, **(host or {})),
            **config,
        )
    )


# ------------------------------------------------------------------------- create
REFUSED_CREATES = [
    ({"privileged": True}, "HostConfig.Privileged"),
    ({"network_mode": "host"}, "HostConfig.NetworkMode"),
    ({"network_mode": "container:" + FOREIGN}, "HostConfig.NetworkMode"),
    ({"pid_mode": "host"}, "HostConfig.PidMode"),
    ({"ipc_mode": "host"}, "HostConfig.IpcMode"),
    ({"uts_mode": "host"}, "HostConfig.UTSMode"),
    ({"userns_mode": "host"}, "HostConfig.UsernsMode"),
    ({"cap_add": ["SYS_ADMIN"]}, "HostConfig.CapAdd"),
    ({"devices": ["/dev/kmsg"]}, "HostConfig.Devices"),
    ({"device_cgroup_rules": ["c 1:3 mr"]}, "HostConfig.DeviceCgroupRules"),
    ({"binds": {"/": {"bind": "/host", "mode": "rw"}}}, "HostConfig.Binds"),
    ({"binds": {"/etc": {"bind": "/etc2", "mode": "ro"}}}, "HostConfig.Binds"),
    ({"binds": {"somevolume": {"bind": "/v", "mode": "rw"}}}, "HostConfig.Binds"),
    ({"mounts": [docker.types.Mount("/host", "/", type="bind")]}, "HostConfig.Mounts[0].Source"),
    ({"mounts": [docker.types.Mount("/v", "named", type="volume")]}, "HostConfig.Mounts[0]"),
    ({"security_opt": ["seccomp=unconfined"]}, "HostConfig.SecurityOpt"),
    ({"security_opt": ["apparmor=unconfined"]}, "HostConfig.SecurityOpt"),
    ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "HostConfig.Sysctls"),
    ({"oom_kill_disable": True}, "HostConfig.OomKillDisable"),
    ({"cgroup_parent": "/"}, "HostConfig.CgroupParent"),
    ({"volumes_from": [FOREIGN]}, "HostConfig.VolumesFrom"),
    ({"port_bindings": {80: 8080}}, "HostConfig.PortBindings"),
    ({"port_bindings": {80: ("0.0.0.0", 8080)}}, "HostConfig.PortBindings"),
    ({"publish_all_ports": True}, "HostConfig.PublishAllPorts"),
    ({"runtime": "nvidia"}, "HostConfig.Runtime"),
    ({"ulimits": [docker.types.Ulimit(name="nofile", soft=1, hard=2)]}, "HostConfig.Ulimits"),
    ({"device_requests": [docker.types.DeviceRequest(count=-1)]}, "HostConfig.DeviceRequests"),
    ({"storage_opt": {"size": "1G"}}, "HostConfig.StorageOpt"),
    ({"volume_driver": "local"}, "HostConfig.VolumeDriver"),
]


@pytest.mark.parametrize(("host", "field"), REFUSED_CREATES, ids=[f for _, f in REFUSED_CREATES])
def test_a_create_that_reaches_beyond_its_container_is_refused_naming_the_field(
    host: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(Refused) as caught:
        check_create(_body(host), _grant(tmp_path))
    assert field in str(caught.value) and caught.value.status == 403
    assert json.loads(caught.value.body())["message"] == str(caught.value)


def test_a_bind_hidden_in_hand_written_mounts_is_refused(tmp_path: Path) -> None:
    body = {
        "Image": "x",
        "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]},
    }
    with pytest.raises(Refused, match=r"HostConfig\.Mounts\[0\]\.Source binds /,"):
        check_create(body, _grant(tmp_path))


ALLOWED_CREATES = [
    {},
    {"auto_remove": True, "init": True, "shm_size": "1g", "tmpfs": {"/scratch": "rw"}},
    {"port_bindings": {80: ("127.0.0.1", None)}, "network_mode": "bridge"},
    {"network_mode": "none"},
    {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"], "read_only": True},
    {"mounts": [docker.types.Mount("/t", None, type="tmpfs")]},
    {"mounts": [docker.types.Mount("/anon", None, type="volume")]},
    {"group_add": ["1000"], "extra_hosts": {"a": "127.0.0.1"}, "dns": ["10.0.0.1"]},
    {"restart_policy": {"Name": "no"}, "log_config": {"Type": "json-file", "Config": {}}},
]


@pytest.mark.parametrize("host", ALLOWED_CREATES)
def test_a_plain_create_passes_with_the_kernels_labels(host: dict[str, Any]) -> None:
    out = check_create(_body(host, labels={"mine": "yes"}), _grant())
    assert out["Labels"]["mine"] == "yes"
    assert out["Labels"][GUARD_KERNEL] == KERNEL
    assert out["Labels"][labels.OWNER_CONTAINER] == KERNEL_CID[:12]


def test_the_kernels_own_mount_may_be_bound_and_a_read_only_one_stays_read_only(
    tmp_path: Path,
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir(), ro.mkdir()
    grant = Grant(KERNEL, KERNEL_CID, mounts=((str(rw), False), (str(ro), True)))
    check_create(_body({"binds": {str(rw): {"bind": "/a", "mode": "rw"}}}), grant)
    check_create(_body({"binds": {str(ro): {"bind": "/b", "mode": "ro"}}}), grant)
    check_create(
        _body({"mounts": [docker.types.Mount("/b", str(ro), type="bind", read_only=True)]}), grant
    )
    for host in (
        {"binds": {str(ro): {"bind": "/b", "mode": "rw"}}},
        {"mounts": [docker.types.Mount("/b", str(ro), type="bind")]},
    ):
        with pytest.raises(Refused, match="writable; the kernel has it read-only"):
            check_create(_body(host), grant)


def test_a_path_below_or_a_symlink_into_a_kernel_mount_is_not_that_mount(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "root").symlink_to("/")
    grant = _grant(tmp_path)
    for source in (tmp_path / "sub", tmp_path / "root", tmp_path / "sub" / ".." / ".."):
        with pytest.raises(Refused, match="not one of this kernel's own mounts"):
            check_create(_body({"binds": {str(source): {"bind": "/x", "mode": "ro"}}}), grant)
    # A symlink to the mount itself resolves to it: the host path is what counts.
    (tmp_path.parent / f"{tmp_path.name}-link").symlink_to(tmp_path)
    link = str(tmp_path.parent / f"{tmp_path.name}-link")
    check_create(_body({"binds": {link: {"bind": "/x", "mode": "rw"}}}), grant)
    os.unlink(link)


@settings(max_examples=200, deadline=None)
@given(asked=st.dictionaries(st.text(min_size=1, max_size=40), st.text(max_size=40), max_size=6))
def test_no_label_a_kernel_asks_for_overrides_the_owner_labels(asked: dict[str, str]) -> None:
    asked = {**asked, GUARD_KERNEL: "someone-else", labels.OWNER_CONTAINER: "f" * 12}
    out = check_create({"Image": "x", "Labels": asked}, _grant())
    assert out["Labels"][GUARD_KERNEL] == KERNEL
    assert out["Labels"][labels.OWNER_CONTAINER] == KERNEL_CID[:12]
    built = dict(check_build([("labels", json.dumps(asked))], _grant(), _look()))
    assert json.loads(built["labels"])[GUARD_KERNEL] == KERNEL


@settings(max_examples=200, deadline=None)
@given(source=st.text(min_size=1, max_size=60))
def test_any_host_path_other_than_the_kernels_mounts_is_refused(source: str) -> None:
    allowed = "/srv/notebooks-of-this-kernel"
    grant = Grant(KERNEL, KERNEL_CID, mounts=((allowed, False),))
    path = source if source.startswith("/") else "/" + source
    body = {"HostConfig": {"Mounts": [{"Type": "bind", "Source": path, "Target": "/x"}]}}
    if "\x00" not in path and path.isprintable() and os.path.realpath(path) == allowed:
        check_create(body, grant)
    else:
        with pytest.raises(Refused, match="HostConfig.Mounts"):
            check_create(body, grant)


@settings(max_examples=200, deadline=None)
@given(
    field_name=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1),
    value=st.one_of(st.just(True), st.integers(1, 10), st.text(min_size=1), st.just(["x"])),
)
def test_a_host_field_the_guard_does_not_know_is_refused_when_set(
    field_name: str, value: Any
) -> None:
    known_ok = {
        "AutoRemove", "Annotations", "CapDrop", "ConsoleSize", "ContainerIDFile", "Dns",
        "DnsOptions", "DnsSearch", "ExtraHosts", "GroupAdd", "Init", "LogConfig", "PidsLimit",
        "ReadonlyRootfs", "RestartPolicy", "ShmSize", "Tmpfs", "CpuShares", "BlkioWeight",
        "MemoryReservation", "MemorySwappiness", "KernelMemory", "OomScoreAdj", "Memory",
        "MemorySwap", "NanoCpus", "CpuQuota", "CpuPeriod", "CpusetCpus", "NetworkMode",
        "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode", "Binds", "Mounts",
        "PortBindings", "SecurityOpt", "Runtime", "Isolation",
    }  # fmt: skip
    if field_name in known_ok:
        return
    with pytest.raises(Refused, match=f"HostConfig.{field_name} "):
        check_create({"HostConfig": {field_name: value}}, _grant())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    host=st.dictionaries(
        st.sampled_from(
            [
                "Binds",
                "Mounts",
                "PortBindings",
                "SecurityOpt",
                "DeviceRequests",
                "Memory",
                "NanoCpus",
                "CpuQuota",
                "NetworkMode",
                "OomScoreAdj",
                "MaskedPaths",
                "Tmpfs",
            ]
        ),
        JSON,
        max_size=4,
    ),  # fmt: skip
    labels_value=JSON,
)
def test_a_malformed_body_is_refused_never_a_crash(host: dict[str, Any], labels_value: Any) -> None:
    grant = _grant(memory=1 << 30, nano_cpus=10**9, gpus="1")
    try:
        out = check_create({"Image": "x", "HostConfig": host, "Labels": labels_value}, grant)
    except Refused as refused:
        assert refused.status in (400, 403)
    else:
        assert out["Labels"][GUARD_KERNEL] == KERNEL


def test_limits_are_the_kernels_own_at_most_and_set_when_none_are_asked() -> None:
    grant = _grant(memory=1 << 30, nano_cpus=2_000_000_000)
    out = check_create(_body({}), grant)["HostConfig"]
    assert out["Memory"] == 1 << 30 and out["MemorySwap"] == 1 << 30
    assert out["NanoCpus"] == 2_000_000_000
    smaller = check_create(_body({"mem_limit": "512m", "nano_cpus": 10**9}), grant)
    assert smaller["HostConfig"]["Memory"] == 512 << 20
    assert smaller["HostConfig"]["NanoCpus"] == 10**9
    for host, field in (
        ({"mem_limit": "2g"}, "HostConfig.Memory"),
        ({"mem_limit": "512m", "memswap_limit": -1}, "HostConfig.MemorySwap"),
        ({"nano_cpus": 3 * 10**9}, "HostConfig.NanoCpus"),
        ({"cpu_quota": 400_000, "cpu_period": 100_000}, "HostConfig.NanoCpus"),
    ):
        with pytest.raises(Refused, match=field):
            check_create(_body(host), grant)


GPU_CASES = [
    # the kernelspec's gpus, what a create asks (count, ids), allowed?
    (None, (1, None), False),
    ("all", (-1, None), True),
    ("all", (0, ["3"]), True),
    ("2", (2, None), True),
    ("2", (1, None), True),
    ("2", (3, None), False),
    ("2", (-1, None), False),
    ("2", (0, ["0", "1"]), True),
    ("2", (0, ["0", "1", "2"]), False),
    ("device=0,1", (0, ["1"]), True),
    ("device=0,1", (0, ["2"]), False),
    ("device=0,1", (1, None), False),
]


@pytest.mark.parametrize(("granted", "asked", "allowed"), GPU_CASES)
def test_gpus_pass_only_within_what_the_kernelspec_grants(
    granted: str | None, asked: tuple[int, list[str] | None], allowed: bool
) -> None:
    count, ids = asked
    request = docker.types.DeviceRequest(count=count, device_ids=ids, capabilities=[["gpu"]])
    body = _body({"device_requests": [request]})
    if allowed:
        check_create(body, _grant(gpus=granted))
    else:
        with pytest.raises(Refused, match="HostConfig.DeviceRequests"):
            check_create(body, _grant(gpus=granted))


# ------------------------------------------------------------------------ routing
ROUTES = [
    # method, path, query, allowed?, what the message names
    ("GET", "/_ping", [], True, ""),
    ("GET", "/v1.41/version", [], True, ""),
    ("GET", "/v1.41/info", [], True, ""),
    ("GET", "/v1.41/containers/json", [("all", "1")], True, ""),
    ("POST", f"/v1.41/containers/{MINE}/start", [], True, ""),
    ("POST", "/v1.41/containers/mine/kill", [("signal", "SIGWINCH")], True, ""),
    ("PUT", f"/v1.41/containers/{MINE}/archive", [("path", "/")], True, ""),
    ("GET", f"/v1.41/containers/{MINE}/logs", [("follow", "1")], True, ""),
    ("POST", f"/v1.41/containers/{MINE}/wait", [], True, ""),
    ("DELETE", f"/v1.41/containers/{MINE}", [("force", "1")], True, ""),
    ("POST", f"/v1.41/containers/{MINE}/exec", [], True, ""),
    ("GET", f"/v1.41/containers/{KERNEL_CID}/json", [], True, ""),
    ("GET", f"/v1.41/containers/{KERNEL_CID}/changes", [], True, ""),
    ("POST", f"/v1.41/containers/{KERNEL_CID}/kill", [], False, "its own container"),
    ("DELETE", f"/v1.41/containers/{KERNEL_CID}", [], False, "its own container"),
    ("DELETE", f"/v1.41/containers/{FOREIGN}", [], False, "not created by this kernel"),
    ("DELETE", "/v1.41/containers/theirs", [], False, "not created by this kernel"),
    ("POST", f"/v1.41/containers/{FOREIGN}/exec", [], False, "not created by this kernel"),
    ("GET", f"/v1.41/containers/{FOREIGN}/json", [], False, "not created by this kernel"),
    ("GET", f"/v1.41/containers/{FOREIGN}/archive", [], False, "not created by this kernel"),
    ("POST", f"/v1.41/containers/{MINE}/update", [], False, "not available"),
    ("POST", f"/v1.41/containers/{MINE}/export", [], False, "not available"),
    ("POST", "/v1.41/exec/e1/start", [], False, "exec e1 was not made by this kernel"),
    ("GET", "/v1.41/images/json", [], True, ""),
    ("GET", "/v1.41/images/nbcontainer/base:bookworm/json", [], True, ""),
    ("POST", "/v1.41/images/mine/push", [("tag", "1")], True, ""),
    ("POST", "/v1.41/images/mine/push", [], False, "tag is missing"),
    ("POST", "/v1.41/images/theirs/push", [("tag", "latest")], False, "not made by this kernel"),
    ("POST", "/v1.41/images/mine:1/tag", [("repo", "mine"), ("tag", "2")], True, ""),
    ("POST", "/v1.41/images/mine:1/tag", [("repo", "theirs")], False, "repo theirs"),
    ("DELETE", "/v1.41/images/mine:1", [], True, ""),
    ("DELETE", "/v1.41/images/theirs:latest", [], False, "not made by this kernel"),
    ("POST", "/v1.41/images/nbcontainer/base:bookworm/tag", [("repo", "x")], False, "not made"),
    ("POST", "/v1.41/images/create", [("fromImage", "x")], False, "pulling"),
    ("POST", "/v1.41/build", [("t", "new:1")], True, ""),
    ("POST", "/v1.41/build", [("t", "theirs")], False, "t theirs names an image"),
    ("POST", "/v1.41/build", [("networkmode", "host")], False, "networkmode is 'host'"),
    ("POST", "/v1.41/build", [("remote", "https://x/y.git")], False, "remote is set"),
    ("POST", "/v1.41/build", [("version", "2")], False, "BuildKit"),
    ("POST", "/v1.41/commit", [("container", KERNEL_CID), ("repo", "snap")], True, ""),
    ("POST", "/v1.41/commit", [("container", "mine")], True, ""),
    ("POST", "/v1.41/commit", [("container", FOREIGN)], False, "not created by this kernel"),
    ("GET", "/v1.41/volumes", [], False, "not available"),
    ("POST", "/v1.41/volumes/create", [], False, "not available"),
    ("POST", "/v1.41/networks/create", [], False, "not available"),
    ("GET", "/v1.41/events", [], False, "not available"),
    ("POST", "/v1.41/swarm/init", [], False, "not available"),
    ("POST", "/v1.41/plugins/pull", [], False, "not available"),
    ("GET", "/v1.41/system/df", [], False, "not available"),
    ("POST", "/session", [], False, "not available"),
    ("POST", "/v1.41/containers/prune", [], False, "not available"),
    ("POST", f"/v1.23/containers/{MINE}/start", [], False, "API versions before 1.24"),
    ("POST", "/v1.12/containers/create", [], False, "API versions before 1.24"),
    ("POST", f"/v1.24/containers/{MINE}/start", [], True, ""),
    ("GET", f"/v1.41/containers/{MINE}/..%2F..%2Fvolumes", [], False, "dot segment"),
    ("DELETE", f"/v1.41/containers/{MINE}%2F..%2F{FOREIGN}", [], False, "dot segment"),
    ("POST", f"/v1.41/containers/{MINE}%2Fupdate", [], False, "not available"),
]


@pytest.mark.parametrize(("method", "path", "query", "allowed", "names"), ROUTES)
def test_each_endpoint_is_allowed_or_refused_with_its_reason(
    method: str, path: str, query: list[tuple[str, str]], allowed: bool, names: str
) -> None:
    if allowed:
        decide(method, path, query, _grant(), _look())
    else:
        with pytest.raises(Refused) as caught:
            decide(method, path, query, _grant(), _look())
        assert names in str(caught.value)
        assert f"{method} " in str(caught.value)


def test_a_container_named_in_the_path_is_forwarded_by_its_full_id() -> None:
    action = decide("POST", "/v1.41/containers/mine/kill", [], _grant(), _look())
    assert action.path == f"/v1.41/containers/{MINE}/kill"


def test_a_container_the_kernel_made_is_known_without_asking_the_daemon() -> None:
    def daemon_down(ref: str) -> dict[str, Any] | None:
        raise AssertionError("asked the daemon")

    look = Lookups(container=daemon_down, image=_images)
    created = decide("POST", "/containers/create", [], _grant(), look)
    assert created.answer is not None
    created.answer({"Id": "d" * 64, "Warnings": []})
    decide("POST", f"/containers/{'d' * 64}/start", [], _grant(), look)


def test_a_listing_shows_only_the_kernels_containers_and_its_own() -> None:
    action = decide("GET", "/containers/json", [], _grant(), _look())
    listing = [
        {"Id": MINE, "Labels": {GUARD_KERNEL: KERNEL}},
        {"Id": FOREIGN, "Labels": {GUARD_KERNEL: "other"}},
        {"Id": "e" * 64, "Labels": {}},
        {"Id": KERNEL_CID, "Labels": {}},
    ]
    assert action.answer is not None
    assert [c["Id"] for c in action.answer(listing)] == [MINE, KERNEL_CID]


def test_exec_instances_are_the_kernels_once_it_made_them() -> None:
    look = _look()
    action = decide("POST", f"/containers/{MINE}/exec", [], _grant(), look)
    assert action.body is not None and action.answer is not None
    with pytest.raises(Refused, match="Privileged"):
        action.body({"Cmd": ["sh"], "Privileged": True})
    action.answer({"Id": "e1"})
    assert decide("POST", "/exec/e1/start", [], _grant(), look).hijack


def test_a_commit_gets_the_kernels_labels_and_the_containers_full_id() -> None:
    action = decide("POST", "/commit", [("container", "mine"), ("repo", "r")], _grant(), _look())
    params = action.query
    assert ("container", MINE) in params
    assert ("changes", f"LABEL {GUARD_KERNEL}={KERNEL}") in params
    assert action.body is not None
    assert action.body({"Labels": {GUARD_KERNEL: "x"}})["Labels"][GUARD_KERNEL] == KERNEL


def test_a_build_is_limited_to_the_kernels_memory_and_removes_its_containers() -> None:
    grant = _grant(memory=1 << 30)
    out = dict(check_build([("rm", "0"), ("forcerm", "0")], grant, _look()))
    assert out["memory"] == str(1 << 30)
    assert (out["rm"], out["forcerm"]) == ("1", "1")
    with pytest.raises(Refused, match="memory is"):
        check_build([("memory", str(2 << 30))], grant, _look())


def test_a_refusal_survives_pickling() -> None:
    import pickle

    refused = Refused("POST /x", "because", 404)
    again = pickle.loads(pickle.dumps(refused))
    assert (again.what, again.reason, again.status) == ("POST /x", "because", 404)

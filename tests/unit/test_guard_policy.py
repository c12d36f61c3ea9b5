"""The Docker guard's policy (nbcontainer_kernel/guard/policy.py), decided without a daemon.

Create bodies are made by docker-py itself (its HostConfig and ContainerConfig types), so
the tables check what a kernel's docker-py really sends, read through the same strict
JSON model the guard uses; hand-written bodies cover what docker-py would not write (a
bind hidden in HostConfig.Mounts, keys spelled as Go's decoder still matches them).
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

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.guard.canonical import decode_json
from nbcontainer_kernel.guard.models import CREATE
from nbcontainer_kernel.guard.policy import (
    GUARD_KERNEL,
    SAFE_CAPABILITIES,
    Grant,
    Live,
    Lookups,
    Refused,
    check_build,
    check_create,
    decide,
)
from tests.helpers import examples

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


def _look(live: list[Live] | None = None) -> Lookups:
    return Lookups(container=_containers, image=_images, live=lambda: list(live or []))


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


def _check(body: dict[str, Any] | bytes, grant: Grant, look: Lookups | None = None) -> Any:
    """A create as the guard reads it: strict JSON, the model, then the policy."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        decoded = decode_json(raw, CREATE)
    except ValueError as exc:  # canonical.Bad: the guard answers 400
        raise Refused("POST /containers/create", str(exc), 400) from None
    return check_create(decoded, grant, look or _look())


# ------------------------------------------------------------------------- create
REFUSED_CREATES = [
    ({"privileged": True}, "HostConfig.Privileged"),
    ({"network_mode": "host"}, "HostConfig.NetworkMode"),
    ({"network_mode": "container:" + FOREIGN}, "HostConfig.NetworkMode"),
    ({"network_mode": "some-user-network"}, "HostConfig.NetworkMode"),
    ({"pid_mode": "host"}, "HostConfig.PidMode"),
    ({"ipc_mode": "host"}, "HostConfig.IpcMode"),
    ({"uts_mode": "host"}, "HostConfig.UTSMode"),
    ({"userns_mode": "host"}, "HostConfig.UsernsMode"),
    ({"cap_add": ["SYS_ADMIN"]}, "HostConfig.CapAdd"),
    ({"cap_add": ["CAP_MKNOD"]}, "HostConfig.CapAdd"),
    ({"devices": ["/dev/kmsg"]}, "HostConfig.Devices"),
    ({"device_cgroup_rules": ["c 1:3 mr"]}, "HostConfig.DeviceCgroupRules"),
    ({"binds": {"/": {"bind": "/host", "mode": "rw"}}}, "HostConfig.Binds"),
    ({"binds": {"/etc": {"bind": "/etc2", "mode": "ro"}}}, "HostConfig.Binds"),
    ({"binds": {"somevolume": {"bind": "/v", "mode": "rw"}}}, "HostConfig.Binds"),
    ({"mounts": [docker.types.Mount("/host", "/", type="bind")]}, "HostConfig.Mounts[0].Source"),
    ({"mounts": [docker.types.Mount("/v", "named", type="volume")]}, "HostConfig.Mounts[0]"),
    (
        {
            "mounts": [
                docker.types.Mount(
                    "/v",
                    None,
                    type="volume",
                    driver_config=docker.types.DriverConfig(
                        "local", {"type": "none", "o": "bind", "device": "/etc"}
                    ),
                )
            ]
        },
        "HostConfig.Mounts[0].VolumeOptions.DriverConfig",
    ),
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
    ({"group_add": ["0"]}, "HostConfig.GroupAdd"),
    ({"log_config": {"Type": "syslog", "Config": {}}}, "HostConfig.LogConfig.Type"),
    ({"log_config": {"Type": "awslogs", "Config": {}}}, "HostConfig.LogConfig.Type"),
    ({"restart_policy": {"Name": "always"}}, "HostConfig.RestartPolicy"),
    ({"restart_policy": {"Name": "unless-stopped"}}, "HostConfig.RestartPolicy"),
    ({"links": {"other": "alias"}}, "HostConfig.Links"),
    ({"cpu_rt_runtime": 1000}, "HostConfig.CpuRealtimeRuntime"),
]


@pytest.mark.parametrize(("host", "field"), REFUSED_CREATES, ids=[f for _, f in REFUSED_CREATES])
def test_a_create_that_reaches_beyond_its_container_is_refused_naming_the_field(
    host: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(Refused) as caught:
        _check(_body(host), _grant(tmp_path))
    assert field in str(caught.value) and caught.value.status == 403
    assert json.loads(caught.value.body())["message"] == str(caught.value)


def test_a_bind_hidden_in_hand_written_mounts_is_refused(tmp_path: Path) -> None:
    body = {
        "Image": "x",
        "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]},
    }
    with pytest.raises(Refused, match=r"HostConfig\.Mounts\[0\]\.Source binds /,"):
        _check(body, _grant(tmp_path))


ALLOWED_CREATES = [
    {},
    {"auto_remove": True, "init": True, "shm_size": "1g", "tmpfs": {"/scratch": "rw"}},
    {"port_bindings": {80: ("127.0.0.1", None)}, "network_mode": "bridge"},
    {"network_mode": "none"},
    {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"], "read_only": True},
    {"mounts": [docker.types.Mount("/t", None, type="tmpfs")]},
    {"mounts": [docker.types.Mount("/anon", None, type="volume")]},
    {"extra_hosts": {"a": "127.0.0.1"}, "dns": ["10.0.0.1"]},
    {"restart_policy": {"Name": "no"}, "log_config": {"Type": "json-file", "Config": {}}},
    {"cap_add": ["KILL"], "cap_drop": ["ALL"]},
]


@pytest.mark.parametrize("host", ALLOWED_CREATES)
def test_a_plain_create_passes_with_the_kernels_labels(host: dict[str, Any]) -> None:
    out = _check(_body(host, labels={"mine": "yes"}), _grant())
    assert out["Labels"]["mine"] == "yes"
    assert out["Labels"][GUARD_KERNEL] == KERNEL
    assert out["Labels"][labels.OWNER_CONTAINER] == KERNEL_CID[:12]


@pytest.mark.parametrize("host", ALLOWED_CREATES)
def test_every_container_gets_the_safe_defaults_whatever_it_asked(host: dict[str, Any]) -> None:
    out = _check(_body(host), _grant(user="1000:100"))
    h = out["HostConfig"]
    assert out["User"] == "1000:100"
    assert h["SecurityOpt"] == ["no-new-privileges"] and h["CapDrop"] == ["ALL"]
    assert set(h["CapAdd"]) <= set(SAFE_CAPABILITIES)
    assert h["RestartPolicy"] == {"Name": "no"}
    assert h["LogConfig"]["Type"] in ("", "json-file")


@pytest.mark.parametrize(
    ("asked", "allowed"),
    [("", True), ("1000:100", True), ("1000", True), ("0", False), ("root", False),
     ("0:0", False), ("1000:0", False), ("1001:100", False)],
)  # fmt: skip
def test_a_container_runs_as_the_kernels_own_user_and_no_other(asked: str, allowed: bool) -> None:
    grant = _grant(user="1000:100")
    if allowed:
        assert _check({"Image": "x", "User": asked}, grant)["User"] == "1000:100"
    else:
        with pytest.raises(Refused, match="User is"):
            _check({"Image": "x", "User": asked}, grant)


def test_capabilities_are_the_safe_set_less_what_is_dropped() -> None:
    out = _check(_body({"cap_drop": ["KILL", "setuid"]}), _grant())["HostConfig"]
    assert set(out["CapAdd"]) == set(SAFE_CAPABILITIES) - {"KILL", "SETUID"}
    out = _check(_body({"cap_drop": ["ALL"], "cap_add": ["CAP_CHOWN"]}), _grant())["HostConfig"]
    assert out["CapAdd"] == ["CHOWN"]


def test_the_kernels_own_mount_may_be_bound_and_a_read_only_one_stays_read_only(
    tmp_path: Path,
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    grant = Grant(KERNEL, KERNEL_CID, mounts=((str(rw), False), (str(ro), True)))
    out = _check(_body({"binds": {str(rw): {"bind": "/a", "mode": "rw"}}}), grant)
    assert out["HostConfig"]["Binds"] == [f"{rw}:/a"]
    _check(_body({"binds": {str(ro): {"bind": "/b", "mode": "ro"}}}), grant)
    _check(
        _body({"mounts": [docker.types.Mount("/b", str(ro), type="bind", read_only=True)]}), grant
    )
    for host in (
        {"binds": {str(ro): {"bind": "/b", "mode": "rw"}}},
        {"mounts": [docker.types.Mount("/b", str(ro), type="bind")]},
    ):
        # Asked writable: the kernel's read-only mount is given read-only (never writable).
        out = _check(_body(host), grant)["HostConfig"]
        assert out.get("Binds") == [f"{ro}:/b:ro"] or out["Mounts"][0]["ReadOnly"] is True


def test_a_bind_source_is_the_resolved_path_itself(tmp_path: Path) -> None:
    """Not a path below a mount, not a symlink (even to the mount: it could be re-pointed
    between the check and the start), no '..', no trailing '/'."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root").symlink_to("/")
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    grant = _grant(tmp_path)
    try:
        for source in (
            tmp_path / "sub",
            tmp_path / "root",
            f"{tmp_path}/sub/..",
            f"{tmp_path}/sub/../..",
            f"{tmp_path}/",
            f"{tmp_path}/.",
            str(link),
        ):
            for host in (
                {"binds": {str(source): {"bind": "/x", "mode": "ro"}}},
                {"mounts": [docker.types.Mount("/x", str(source), type="bind")]},
            ):
                with pytest.raises(Refused, match="HostConfig"):
                    _check(_body(host), grant)
    finally:
        link.unlink()


@pytest.mark.parametrize("propagation", ["shared", "rshared", "slave", "rslave"])
def test_a_bind_does_not_propagate_mounts(tmp_path: Path, propagation: str) -> None:
    grant = _grant(tmp_path)
    host = {"mounts": [docker.types.Mount("/x", str(tmp_path), type="bind",
                                          propagation=propagation)]}  # fmt: skip
    with pytest.raises(Refused, match="Propagation"):
        _check(_body(host), grant)
    with pytest.raises(Refused, match="ro or rw only"):
        _check(_body({"binds": [f"{tmp_path}:/x:{propagation}"]}), grant)


@settings(max_examples=examples(200), deadline=None)
@given(asked=st.dictionaries(st.text(min_size=1, max_size=40), st.text(max_size=40), max_size=6))
def test_no_label_a_kernel_asks_for_overrides_the_owner_labels(asked: dict[str, str]) -> None:
    asked = {**asked, GUARD_KERNEL: "someone-else", labels.OWNER_CONTAINER: "f" * 12}
    try:
        out = _check({"Image": "x", "Labels": asked}, _grant())
    except Refused as refused:  # a lone surrogate in a key: not JSON the daemon reads
        assert refused.status == 400
        return
    assert out["Labels"][GUARD_KERNEL] == KERNEL
    assert out["Labels"][labels.OWNER_CONTAINER] == KERNEL_CID[:12]
    built = check_build({"labels": json.dumps(asked)}, _grant(), _look())
    assert json.loads(str(built["labels"]))[GUARD_KERNEL] == KERNEL


@settings(max_examples=examples(200), deadline=None)
@given(source=st.text(min_size=1, max_size=60))
def test_any_host_path_other_than_the_kernels_mounts_is_refused(source: str) -> None:
    allowed = "/srv/notebooks-of-this-kernel"
    grant = Grant(KERNEL, KERNEL_CID, mounts=((allowed, False),))
    path = source if source.startswith("/") else "/" + source
    for host in (
        {"Mounts": [{"Type": "bind", "Source": path, "Target": "/x"}]},
        {"Binds": [f"{path}:/x"]},
    ):
        body = {"HostConfig": host}
        if path == allowed:
            _check(body, grant)
        else:
            with pytest.raises(Refused):
                _check(body, grant)


@settings(max_examples=examples(200), deadline=None)
@given(
    field_name=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1),
    value=st.one_of(st.just(True), st.integers(1, 10), st.text(min_size=1), st.just(["x"])),
)
def test_a_host_field_the_guard_does_not_allow_is_refused_when_set(
    field_name: str, value: Any
) -> None:
    allowed_as_asked = {
        "autoremove", "consolesize", "containeridfile", "dns", "dnsoptions", "dnssearch",
        "extrahosts", "init", "pidslimit", "readonlyrootfs", "shmsize", "tmpfs", "cpushares",
        "blkioweight", "memoryreservation", "memoryswappiness", "cpusetcpus", "cpusetmems",
        "memory", "memoryswap", "nanocpus", "cpuquota", "cpuperiod", "capdrop", "oomscoreadj",
    }  # fmt: skip
    try:
        _check({"HostConfig": {field_name: value}}, _grant())
    except Refused as refused:
        assert refused.status in (400, 403)
    else:
        assert field_name.lower() in allowed_as_asked, field_name


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=examples(300), deadline=None)
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
                "LogConfig",
                "RestartPolicy",
                "CapAdd",
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
        out = _check({"Image": "x", "HostConfig": host, "Labels": labels_value}, grant)
    except Refused as refused:
        assert refused.status in (400, 403)
    else:
        assert out["Labels"][GUARD_KERNEL] == KERNEL


# ------------------------------------------------- what Go's decoder reads as one key
def _spellings(name: str) -> st.SearchStrategy[str]:
    """Spellings of a field name that Go's encoding/json matches to it: any case, and the
    long s (ſ) for s and the Kelvin sign (K) for k."""

    def spell(flags: list[int]) -> str:
        out = []
        for c, f in zip(name, flags, strict=True):
            if c.lower() == "s" and f == 2:
                out.append("ſ")
            elif c.lower() == "k" and f == 2:
                out.append("K")
            else:
                out.append(c.upper() if f else c.lower())
        return "".join(out)

    return st.lists(st.integers(0, 2), min_size=len(name), max_size=len(name)).map(spell)


@settings(max_examples=examples(300), deadline=None)
@given(
    host_key=_spellings("HostConfig"),
    field_key=_spellings("Privileged"),
    beside=st.booleans(),
)
def test_a_risky_field_in_any_spelling_is_refused(
    host_key: str, field_key: str, beside: bool
) -> None:
    """Go folds keys (hostConfig, HOSTCONFIG, Hoſtconfig all reach HostConfig): a spelling
    alone is read as the field (and refused); beside the canonical one it is two keys
    that the daemon takes as one (a 400)."""
    body: dict[str, Any] = {"Image": "x", host_key: {field_key: True}}
    if beside and host_key != "HostConfig":
        body["HostConfig"] = {}
    with pytest.raises(Refused) as caught:
        _check(body, _grant())
    assert caught.value.status in (400, 403)


@settings(max_examples=examples(200), deadline=None)
@given(type_key=_spellings("Type"), source_key=_spellings("Source"), ro_key=_spellings("ReadOnly"))
def test_a_mount_spelled_twice_never_becomes_a_bind_of_the_host(
    type_key: str, source_key: str, ro_key: str, tmp_path_factory: Any
) -> None:
    mount = json.dumps({"Type": "tmpfs", "Target": "/x"})[:-1]
    raw = (
        '{"Image":"x","HostConfig":{"Mounts":[' + mount + f',"{type_key}":"bind",'
        f'"{source_key}":"/etc","{ro_key}":false' + "}]}}"
    ).encode()
    with pytest.raises(Refused) as caught:
        _check(raw, _grant())
    assert caught.value.status in (400, 403)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Image":"x","HostConfig":{},"HostConfig":{"Privileged":true}}',
        b'{"Image":"x","HostConfig":{"Privileged":false,"Privileged":true}}',
        b'{"Image":"x","hostconfig":{"Privileged":true},"HostConfig":{}}',
        b'{"Image":"x","Labels":{"a":"1","a":"2"}}',
        b'{"Image":"x","HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"127.0.0.1",'
        b'"hostip":"0.0.0.0"}]}}}',
        b'{"Image":"x","HostConfig":{"Mounts":[{"Type":"tmpfs","type":"bind","Target":"/x"}]}}',
        b'{"Image":"x","HostConfig":{"Memory":NaN}}',
        b'{"Image":"x"}garbage',
        b'{"Image":"\xff"}',
        b"[1,2]",
    ],
)
def test_a_body_two_readers_could_read_differently_is_a_400(raw: bytes) -> None:
    with pytest.raises(Refused) as caught:
        _check(raw, _grant())
    assert caught.value.status == 400, caught.value


def test_a_spelling_alone_is_read_as_the_field_and_written_canonically(tmp_path: Path) -> None:
    raw = '{"image":"x","hoſtconfig":{"autoremove":true},"LABELS":{"a":"b"}}'.encode()
    out = _check(raw, _grant())
    assert out["Image"] == "x" and out["HostConfig"]["AutoRemove"] is True
    assert out["Labels"]["a"] == "b" and "hoſtconfig" not in out


# ------------------------------------------------------------------------ resources
def test_limits_are_what_the_kernels_other_containers_leave() -> None:
    grant = _grant(memory=1 << 30, nano_cpus=2_000_000_000)
    out = _check(_body({}), grant)["HostConfig"]
    assert out["Memory"] == 1 << 30 and out["MemorySwap"] == 1 << 30
    assert out["NanoCpus"] == 2_000_000_000
    smaller = _check(_body({"mem_limit": "512m", "nano_cpus": 10**9}), grant)
    assert smaller["HostConfig"]["Memory"] == 512 << 20
    assert smaller["HostConfig"]["NanoCpus"] == 10**9
    quota = _check(_body({"cpu_quota": 50_000, "cpu_period": 100_000}), grant)["HostConfig"]
    assert quota["NanoCpus"] == 500_000_000 and "CpuQuota" not in quota
    running = [Live("r" * 64, "run-1", "running", 768 << 20, 1_500_000_000)]
    left = _check(_body({}), grant, _look(running))["HostConfig"]
    assert (left["Memory"], left["NanoCpus"]) == (256 << 20, 500_000_000)
    for host, field, live in (
        ({"mem_limit": "2g"}, "HostConfig.Memory", []),
        ({"mem_limit": "512m", "memswap_limit": -1}, "HostConfig.MemorySwap", []),
        ({"nano_cpus": 3 * 10**9}, "HostConfig.NanoCpus", []),
        ({"cpu_quota": 400_000, "cpu_period": 100_000}, "HostConfig.NanoCpus", []),
        ({"mem_limit": "512m"}, "run-1", running),
        ({"nano_cpus": 10**9}, "run-1", running),
    ):
        with pytest.raises(Refused, match=field):
            _check(_body(host), grant, _look(live))


def test_a_kernel_has_no_more_containers_than_its_limit() -> None:
    live = [Live(f"{i:064x}", f"c{i}", "running", 0, 0) for i in range(3)]
    with pytest.raises(Refused, match=r"guard_max_containers 3\).*c0 \(running\)"):
        _check(_body({}), _grant(max_containers=3), _look(live))
    _check(_body({}), _grant(max_containers=4), _look(live))
    # Starting an exited one again counts too.
    with pytest.raises(Refused, match="guard_max_containers 3"):
        decide("POST", f"/containers/{MINE}/start", _grant(max_containers=3), _look(live))


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
        _check(body, _grant(gpus=granted))
    else:
        with pytest.raises(Refused, match="HostConfig.DeviceRequests"):
            _check(body, _grant(gpus=granted))


# ------------------------------------------------------------------------ routing
ROUTES = [
    # method, target, allowed?, what the message names
    ("GET", "/_ping", True, ""),
    ("GET", "/v1.41/version", True, ""),
    ("GET", "/v1.41/info", True, ""),
    ("GET", "/v1.41/containers/json?all=1", True, ""),
    ("POST", f"/v1.41/containers/{MINE}/start", True, ""),
    ("POST", "/v1.41/containers/mine/kill?signal=SIGWINCH", True, ""),
    ("PUT", f"/v1.41/containers/{MINE}/archive?path=/", True, ""),
    ("GET", f"/v1.41/containers/{MINE}/logs?follow=1", True, ""),
    ("POST", f"/v1.41/containers/{MINE}/wait", True, ""),
    ("DELETE", f"/v1.41/containers/{MINE}?force=1&v=False&link=False", True, ""),
    ("DELETE", f"/v1.41/containers/{MINE}?link=1", False, "link is set"),
    ("POST", f"/v1.41/containers/{MINE}/exec", True, ""),
    ("GET", f"/v1.41/containers/{KERNEL_CID}/json", True, ""),
    ("GET", f"/v1.41/containers/{KERNEL_CID}/changes", True, ""),
    ("POST", f"/v1.41/containers/{KERNEL_CID}/kill", False, "its own container"),
    ("DELETE", f"/v1.41/containers/{KERNEL_CID}", False, "its own container"),
    ("DELETE", f"/v1.41/containers/{FOREIGN}", False, "not created by this kernel"),
    ("DELETE", "/v1.41/containers/theirs", False, "not created by this kernel"),
    ("POST", f"/v1.41/containers/{FOREIGN}/exec", False, "not created by this kernel"),
    ("GET", f"/v1.41/containers/{FOREIGN}/json", False, "not created by this kernel"),
    ("GET", f"/v1.41/containers/{FOREIGN}/archive", False, "not created by this kernel"),
    ("POST", f"/v1.41/containers/{MINE}/update", False, "not available"),
    ("POST", f"/v1.41/containers/{MINE}/export", False, "not available"),
    ("POST", "/v1.41/exec/e1/start", False, "exec e1 was not made by this kernel"),
    ("GET", "/v1.41/images/json", True, ""),
    ("GET", "/v1.41/images/nbcontainer/base:bookworm/json", True, ""),
    ("POST", "/v1.41/images/mine/push?tag=1", True, ""),
    ("POST", "/v1.41/images/mine/push", False, "tag is missing"),
    ("POST", "/v1.41/images/theirs/push?tag=latest", False, "not made by this kernel"),
    ("POST", "/v1.41/images/mine:1/tag?repo=mine&tag=2", True, ""),
    ("POST", "/v1.41/images/mine:1/tag?repo=theirs", False, "repo theirs"),
    ("DELETE", "/v1.41/images/mine:1", True, ""),
    ("DELETE", "/v1.41/images/theirs:latest", False, "not made by this kernel"),
    ("POST", "/v1.41/images/nbcontainer/base:bookworm/tag?repo=x", False, "not made"),
    ("POST", "/v1.41/images/create?fromImage=x", False, "pulling"),
    ("POST", "/v1.41/build?t=new:1", True, ""),
    ("POST", "/v1.41/build?t=new:1&t=new:2", True, ""),
    ("POST", "/v1.41/build?t=theirs", False, "t theirs names an image"),
    ("POST", "/v1.41/build?t=new:1&t=theirs", False, "t theirs names an image"),
    ("POST", "/v1.41/build?networkmode=host", False, "networkmode is 'host'"),
    ("POST", "/v1.41/build?remote=https://x/y.git", False, "remote is set"),
    ("POST", "/v1.41/build?version=2", False, "BuildKit"),
    ("POST", "/v1.41/build?pull=1", False, "pull is set"),
    ("POST", "/v1.41/build?cgroupparent=/", False, "cgroupparent is set"),
    ("POST", "/v1.41/build?platform=linux/arm64", False, "platform is set"),
    ("POST", f"/v1.41/commit?container={KERNEL_CID}&repo=snap", True, ""),
    ("POST", "/v1.41/commit?container=mine", True, ""),
    ("POST", f"/v1.41/commit?container={FOREIGN}", False, "not created by this kernel"),
    ("POST", "/v1.41/commit?container=mine&changes=ONBUILD+ADD+x+y", False, "ONBUILD"),
    ("POST", "/v1.41/commit?container=mine&changes=ENV+a%3Db%0AONBUILD+RUN+x", False, "spans"),
    ("GET", "/v1.41/volumes", False, "not available"),
    ("POST", "/v1.41/volumes/create", False, "not available"),
    ("POST", "/v1.41/networks/create", False, "not available"),
    ("GET", "/v1.41/events", False, "not available"),
    ("POST", "/v1.41/swarm/init", False, "not available"),
    ("POST", "/v1.41/plugins/pull", False, "not available"),
    ("GET", "/v1.41/system/df", False, "not available"),
    ("POST", "/session", False, "not available"),
    ("POST", "/v1.41/containers/prune", False, "not available"),
    ("POST", f"/v1.23/containers/{MINE}/start", False, "API versions before 1.24"),
    ("POST", "/v1.12/containers/create", False, "API versions before 1.24"),
    ("POST", f"/v1.24/containers/{MINE}/start", True, ""),
    ("GET", f"/v1.41/containers/{MINE}/..%2F..%2Fvolumes", False, "dot segment"),
    ("DELETE", f"/v1.41/containers/{MINE}%2F..%2F{FOREIGN}", False, "dot segment"),
    ("POST", f"/v1.41/containers/{MINE}%2Fupdate", False, "not available"),
    ("GET", f"/v1.41//containers/{MINE}/json", False, "empty segment"),
]


@pytest.mark.parametrize(("method", "target", "allowed", "names"), ROUTES)
def test_each_endpoint_is_allowed_or_refused_with_its_reason(
    method: str, target: str, allowed: bool, names: str
) -> None:
    if allowed:
        decide(method, target, _grant(), _look())
    else:
        with pytest.raises(Refused) as caught:
            decide(method, target, _grant(), _look())
        assert names in str(caught.value)
        assert f"{method} " in str(caught.value)


QUERY_ATTACKS = [
    # a key repeated (dockerd reads the first, other readers the last)
    ("POST", "/build?networkmode=bridge&networkmode=host", "repeated"),
    ("POST", "/build?version=1&version=2", "repeated"),
    ("POST", "/build?remote=&remote=https://x", "repeated"),
    ("POST", "/build?ulimits=&ulimits=x", "repeated"),
    ("POST", "/v1.41/images/mine:1/tag?repo=mine&tag=2&repo=theirs&tag=latest", "repeated"),
    ("POST", "/commit?container=mine&repo=a&repo=theirs", "repeated"),
    ("DELETE", f"/containers/{MINE}?force=0&force=1", "repeated"),
    # keys the endpoint does not take (Go's FormValue is case-sensitive: never read)
    ("POST", "/build?NetworkMode=host", "not one this endpoint takes"),
    ("POST", "/v1.41/containers/create?hostconfig=x", "not one this endpoint takes"),
    # what two readers could split differently
    ("POST", "/build?networkmode=bridge;networkmode=host", "';'"),
    ("POST", "/build?networkmode=%zz", "malformed escape"),
    ("POST", "/build?labels=%FF", "not UTF-8"),
    ("POST", '/build?labels={"a":"1","a":"2"}', "twice"),
    ("POST", "/build#x?networkmode=host", "fragment"),
]


@pytest.mark.parametrize(("method", "target", "names"), QUERY_ATTACKS)
def test_a_query_two_readers_could_read_differently_is_a_400(
    method: str, target: str, names: str
) -> None:
    with pytest.raises(Refused) as caught:
        decide(method, target, _grant(), _look())
    assert caught.value.status == 400 and names in caught.value.reason, caught.value


@settings(max_examples=examples(200), deadline=None)
@given(
    key=st.sampled_from(["networkmode", "remote", "version", "memory", "dockerfile", "q"]),
    values=st.lists(st.sampled_from(["", "1", "host", "2", "bridge", "x"]), min_size=2, max_size=4),
)
def test_no_single_valued_query_key_may_be_repeated(key: str, values: list[str]) -> None:
    target = "/build?" + "&".join(f"{key}={v}" for v in values)
    with pytest.raises(Refused, match="repeated"):
        decide("POST", target, _grant(), _look())


def test_the_forwarded_query_is_rebuilt_from_the_validated_values() -> None:
    action = decide("POST", "/v1.41/build?t=new%3A1&nocache=yes&rm=0&q=", _grant(), _look())
    query = action.query
    assert ("nocache", "1") in query and ("q", "0") in query and ("t", "new:1") in query
    assert ("rm", "1") in query and ("forcerm", "1") in query
    assert ("networkmode", "none") in query and ("version", "1") in query
    assert action.target.startswith("/v1.41/build?")


def test_a_container_named_in_the_path_is_forwarded_by_its_full_id() -> None:
    action = decide("POST", "/v1.41/containers/mine/kill", _grant(), _look())
    assert action.path == f"/v1.41/containers/{MINE}/kill"


def test_a_container_the_kernel_made_is_known_without_asking_the_daemon() -> None:
    def daemon_down(ref: str) -> dict[str, Any] | None:
        raise AssertionError("asked the daemon")

    look = Lookups(container=daemon_down, image=_images)
    look.owned.add("d" * 64)
    decide("POST", f"/containers/{'d' * 64}/start", _grant(), look)


def test_a_listing_shows_only_the_kernels_containers_and_its_own() -> None:
    action = decide("GET", "/containers/json", _grant(), _look())
    listing = [
        {"Id": MINE, "Labels": {GUARD_KERNEL: KERNEL}},
        {"Id": FOREIGN, "Labels": {GUARD_KERNEL: "other"}},
        {"Id": "e" * 64, "Labels": {}},
        {"Id": KERNEL_CID, "Labels": {}},
    ]
    assert action.answer is not None
    assert [c["Id"] for c in action.answer(listing)] == [MINE, KERNEL_CID]


def test_an_exec_runs_as_the_kernels_user_unprivileged_and_is_the_kernels_once_checked() -> None:
    look = _look()
    action = decide("POST", f"/containers/{MINE}/exec", _grant(user="1000:1000"), look)
    assert action.rewrite is not None and action.verify == "exec"
    for raw in (b'{"Cmd":["sh"],"Privileged":true}', b'{"Cmd":["sh"],"privileged":true}'):
        with pytest.raises(Refused, match="Privileged"):
            action.rewrite(raw)
    with pytest.raises(Refused, match="User is 'root'"):
        action.rewrite(b'{"Cmd":["sh"],"user":"root"}')
    out = json.loads(action.rewrite(b'{"Cmd":["sh"]}'))
    assert out["User"] == "1000:1000" and out["Privileged"] is False
    with pytest.raises(Refused, match="not made by this kernel"):
        decide("POST", "/exec/e1/start", _grant(), look)
    look.exec_ids.add("e1")  # what the guard does once the daemon's record checks out
    assert decide("POST", "/exec/e1/start", _grant(), look).hijack


def test_a_commit_gets_the_kernels_labels_and_the_containers_full_id() -> None:
    action = decide("POST", "/commit?container=mine&repo=r", _grant(), _look())
    assert ("container", MINE) in action.query
    assert ("changes", f"LABEL {GUARD_KERNEL}={KERNEL}") in action.query
    assert action.rewrite is not None
    body = json.loads(action.rewrite(b'{"Labels":{"io.nbcontainer.guard-kernel":"x"}}'))
    assert body["Labels"][GUARD_KERNEL] == KERNEL
    with pytest.raises(Refused, match="OnBuild"):
        action.rewrite(b'{"onbuild":["ADD http://x /y"]}')


def test_a_build_runs_offline_within_the_kernels_limits_and_removes_its_containers() -> None:
    grant = _grant(memory=1 << 30, nano_cpus=10**9)
    out = check_build({"rm": "0", "forcerm": "0"}, grant, _look())
    assert out["memory"] == str(1 << 30) and out["networkmode"] == "none"
    assert (out["rm"], out["forcerm"]) == ("1", "1")
    assert (out["cpuperiod"], out["cpuquota"]) == ("100000", "100000")
    with pytest.raises(Refused, match="memory is"):
        check_build({"memory": str(2 << 30)}, grant, _look())


def test_a_refusal_survives_pickling() -> None:
    import pickle

    refused = Refused("POST /x", "because", 404)
    again = pickle.loads(pickle.dumps(refused))
    assert (again.what, again.reason, again.status) == ("POST /x", "because", 404)


def test_the_kernels_directory_is_not_what_it_is_checked_against(tmp_path: Path) -> None:
    """The grant's mount is resolved on the host: a grant given as a symlink to a directory
    allows binding the directory itself (spelled resolved), not the symlink."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    grant = Grant(KERNEL, KERNEL_CID, mounts=((str(tmp_path / "alias"), False),))
    _check({"HostConfig": {"Binds": [f"{os.path.realpath(real)}:/x"]}}, grant)
    with pytest.raises(Refused, match="not a resolved path"):
        _check({"HostConfig": {"Binds": [f"{tmp_path / 'alias'}:/x"]}}, grant)


def test_a_push_always_says_its_credentials_in_the_header_never_in_a_body() -> None:
    """dockerd reads a push's body as its credentials when the header is missing; the guard
    forwards no body, so a push without the header gets an empty one."""
    action = decide("POST", "/v1.41/images/mine/push?tag=1", _grant(), _look())
    assert action.body == "none"
    assert ("x-registry-auth", "e30=") in action.default_headers
    assert "x-registry-auth" in action.headers  # the kernel's own, when it sends one

from __future__ import annotations

import os

import pytest

from nbcontainer_kernel.docker.options import (
    parse_bytes,
    parse_gpus,
    parse_mount,
    parse_user,
    validate_options,
)
from nbcontainer_kernel.runtime.errors import InvalidOption


def test_valid_options_are_kept() -> None:
    config = {
        "image": "img:1",
        "cpus": 1.5,
        "memory": "2g",
        "gpus": "all",
        "mounts": ["/tmp:/data:ro"],
        "network_mode": "bridge",
        "user": "image",
    }
    assert validate_options(config) == config


@pytest.mark.parametrize(
    "config, option, fragment",
    [
        ({"image": ""}, "image", "required"),
        ({"image": "i", "memory": "lots"}, "memory", "'512m'"),
        ({"image": "i", "memory": "1k"}, "memory", "at least 6m"),
        ({"image": "i", "cpus": -1}, "cpus", "positive"),
        ({"image": "i", "cpus": "many"}, "cpus", ""),
        ({"image": "i", "gpus": "some"}, "gpus", "'all'"),
        ({"image": "i", "mounts": ["relative:/x"]}, "mounts", "absolute"),
        ({"image": "i", "mounts": ["/tmp:/x:rx"]}, "mounts", "'ro' or 'rw'"),
        ({"image": "i", "mounts": ["/no/such/dir:/x"]}, "mounts", "does not exist"),
        ({"image": "i", "network_mode": "none"}, "network_mode", "cannot be reached"),
        ({"image": "i", "user": "root"}, "user", "'host'"),
        ({"image": "i", "pull_policy": "sometimes"}, "pull_policy", ""),
        ({"image": "i", "env_allowlist": ["BAD NAME"]}, "env_allowlist", "not an environment"),
        ({"image": "i", "memroy": "1g"}, "memroy", "unknown option"),
    ],
)
def test_bad_options_are_named(config: dict, option: str, fragment: str) -> None:
    with pytest.raises(InvalidOption) as err:
        validate_options(config)
    assert err.value.option == option
    assert fragment in str(err.value)


def test_parsers() -> None:
    assert parse_bytes("memory", "512m") == 512 * 1024**2
    assert parse_bytes("memory", "1.5g") == int(1.5 * 1024**3)
    assert parse_bytes("memory", "2GiB") == 2 * 1024**3
    assert parse_gpus("all") == (-1, [])
    assert parse_gpus("2") == (2, [])
    assert parse_gpus("device=0,1") == (0, ["0", "1"])
    assert parse_mount("/a:/b") == ("/a", "/b", "rw")
    assert parse_user("host") == f"{os.getuid()}:{os.getgid()}"
    assert parse_user("image") is None
    assert parse_user("1000:1000") == "1000:1000"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {}),
        ({"cpus": 1.5}, {"nano_cpus": 1_500_000_000}),
        ({"memory": "512m"}, {"mem_limit": 512 * 1024**2, "memswap_limit": 512 * 1024**2}),
        ({"shm_size": "1g"}, {"shm_size": 1024**3}),
    ],
)
def test_one_translation_of_resources_for_kernels_and_runs(given: dict, expected: dict) -> None:
    from nbcontainer_kernel.docker.options import resource_kwargs

    assert resource_kwargs(**given) == expected


def test_gpus_become_device_requests() -> None:
    from nbcontainer_kernel.docker.options import resource_kwargs

    [req] = resource_kwargs(gpus="device=0,1")["device_requests"]
    assert req["DeviceIDs"] == ["0", "1"] and req["Capabilities"] == [["gpu"]]
    [req] = resource_kwargs(gpus="all")["device_requests"]
    assert req["Count"] == -1

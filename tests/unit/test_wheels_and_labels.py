from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.images.wheels import TargetPython, build_self_wheel, pinned


def test_platform_tags_for_glibc_and_musl() -> None:
    glibc = TargetPython((3, 11, 2), "x86_64", "glibc", "2.36")
    tags = glibc.platforms()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags
    assert glibc.abi == "cp311" and glibc.minor == "3.11"
    musl = TargetPython((3, 12, 1), "aarch64", "", "")
    assert musl.platforms() == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64"]


def test_pinned_uses_the_host_versions() -> None:
    import importlib.metadata

    out = pinned(["traitlets", "surely-not-installed-pkg", "x>=1"])
    assert out == [
        f"traitlets=={importlib.metadata.version('traitlets')}",
        "surely-not-installed-pkg",
        "x>=1",
    ]


def test_self_wheel_is_deterministic_and_complete(tmp_path: Path) -> None:
    a = build_self_wheel(tmp_path / "a")
    b = build_self_wheel(tmp_path / "b")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    names = zipfile.ZipFile(a).namelist()
    assert "nbcontainer_kernel/__init__.py" in names
    assert "nbcontainer_kernel/kernel/kernelspecs/python/kernel.json" in names
    assert not any("__pycache__" in n for n in names)
    record = zipfile.ZipFile(a).read("nbcontainer_kernel-0.1.0.dist-info/RECORD").decode()
    assert "nbcontainer_kernel/kernel/provisioner.py,sha256=" in record


def test_owner_liveness() -> None:
    me = labels.Owner.current()
    assert me.is_alive()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    import socket

    gone = labels.Owner(socket.gethostname(), proc.pid, "1.00")
    assert not gone.is_alive()
    elsewhere = labels.Owner("some-other-host", proc.pid, "1.00")
    assert elsewhere.is_alive(), "another host's owner is never judged dead from here"
    assert labels.Owner.from_labels(me.labels()) == me

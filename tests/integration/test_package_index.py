"""A containerized kernel's package index (package_index = host | none) on a real daemon,
with an HTTPS package index this test serves on 127.0.0.1 from a CA it makes: the host is
told to trust that CA and use that index (PIP_CERT, PIP_INDEX_URL), and the kernel gets
what the host has. The kernels share the host's network to reach 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.images.package_index import NO_INDEX_NOTE
from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import docker_provisioner, inspected, run, started, stdout_of
from tests.index_server import (
    closed_port_url,
    make_pki,
    make_wheel,
    serve_index,
    simple_index,
)

PACKAGE = "nbc-probe-pkg"


def _stream(outputs: list[dict]) -> str:
    return "".join(
        m["content"].get("text", "")
        + "".join(m["content"].get("traceback") or [])
        + str(m["content"].get("evalue", ""))
        for m in outputs
    )


@pytest.fixture
def https_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test's index, and a host whose pip uses it and trusts its CA (and nothing of
    this machine's own pip configuration)."""
    pki = make_pki(tmp_path / "pki")
    simple_index(tmp_path / "index", [make_wheel(tmp_path, PACKAGE, "1.0", "VALUE = 42\n")])
    with serve_index(tmp_path / "index", pki) as url:
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("PIP_INDEX_URL", url)
        for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.setenv(name, str(pki.ca_file))
        yield url


@pytest.mark.parametrize("user", ["host", "1000:1000"])
def test_pip_install_in_a_kernel_uses_the_hosts_index_and_ca(
    engine: Engine, make_kernelspec, https_index: str, tmp_path: Path, user: str
) -> None:
    tmp_path.chmod(0o777)  # a kernel of another uid starts in it
    name = make_kernelspec(f"nbc-index-{user.replace(':', '-')}", network_mode="host", user=user)
    with started(name, cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, f"%pip install --no-input {PACKAGE}", 120)
        assert content["status"] == "ok", _stream(outputs)
        assert f"Successfully installed {PACKAGE}-1.0" in _stream(outputs), _stream(outputs)
        content, outputs = run(kc, "import nbc_probe_pkg\nprint(nbc_probe_pkg.VALUE)")
        assert stdout_of(outputs) == "42\n", _stream(outputs)
        if user != "host":  # not the image's environment: the user's own site
            where = stdout_of(run(kc, "print(nbc_probe_pkg.__file__)")[1])
            assert where.startswith("/tmp/.local/"), where
        info = engine.inspect(docker_provisioner(km).container_id)
        assert info is not None
        # Read when the kernel started, from the host; the CA mounted read-only.
        ca = [m for m in info["Mounts"] if m["Destination"].endswith("host-ca-certificates.crt")]
        assert ca and ca[0]["RW"] is False


def test_pip_install_from_a_file_index_mirror_whose_pages_link_elsewhere(
    engine: Engine, make_kernelspec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common mirror layout (ROOT/simple/<project>/ linking to ROOT/files/<wheel>): the
    kernel gets both directories, read-only, and pip installs from them."""
    mirror = tmp_path / "mirror"
    wheel = make_wheel(tmp_path, "nbc-mirror-pkg", "2.0", "VALUE = 7\n")
    (mirror / "files").mkdir(parents=True)
    (mirror / "files" / wheel.name).write_bytes(wheel.read_bytes())
    page = mirror / "simple" / "nbc-mirror-pkg" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(
        f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>'
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for variable in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", f"file://{mirror}/simple")
    name = make_kernelspec("nbc-index-mirror")
    with started(name, cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, "%pip install --no-input nbc-mirror-pkg", 120)
        assert "Successfully installed nbc-mirror-pkg-2.0" in _stream(outputs), _stream(outputs)
        assert stdout_of(run(kc, "import nbc_mirror_pkg\nprint(nbc_mirror_pkg.VALUE)")[1]) == "7\n"
        mounts = {
            m["Source"]: m["RW"]
            for m in inspected(engine, docker_provisioner(km).container_id)["Mounts"]
        }
        assert mounts[str(mirror / "files")] is False and mounts[str(mirror / "simple")] is False


def test_pip_install_with_this_machines_own_pip_configuration(
    make_kernelspec, tmp_path: Path
) -> None:
    """What a user of this machine meets: a default kernel, the host's pip settings as they
    are, a small package that is not in the kernel image."""
    name = make_kernelspec("nbc-index-own")
    with started(name, cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, "%pip install --no-input tabulate", 300)
        assert "Successfully installed tabulate" in _stream(outputs), _stream(outputs)
        content, outputs = run(kc, "import tabulate\nprint(tabulate.tabulate([[1]]))")
        assert content["status"] == "ok" and "1" in stdout_of(outputs), _stream(outputs)


def test_a_kernel_without_a_package_index_fails_at_once_saying_why(
    engine: Engine, make_kernelspec, https_index: str, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-index-none", network_mode="host", package_index="none")
    with started(name, cwd=str(tmp_path)) as (km, kc):
        t = time.monotonic()
        content, outputs = run(kc, f"%pip install --no-input {PACKAGE}", 120)
        took = time.monotonic() - t
        text = _stream(outputs)
        assert NO_INDEX_NOTE in text and "No matching distribution" in text, text
        assert took < 20, took
        content, outputs = run(kc, "import nbc_probe_pkg")
        assert content["status"] == "error"


def test_a_base_build_with_an_unreachable_index_fails_fast_naming_it(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url = closed_port_url()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    # A package no dependency layer has had yet, installed from a file (no index needed),
    # so that this kernel's layer must resolve its wheels.
    version = f"0.0.{secrets.randbelow(10**9)}"
    wheel = make_wheel(tmp_path, "nbc-unique-pkg", version, "X = 1\n")
    name = make_kernelspec("nbc-index-unreachable", network_mode="host")
    with started(name, cwd=str(tmp_path)) as (km, kc):
        content, outputs = run(kc, f"%pip install --no-input --no-index {wheel}", 120)
        assert content["status"] == "ok", _stream(outputs)
        t = time.monotonic()
        cell = "%%remote_run --local --base nbcontainer/base:bookworm --name unreach\ny = 1"
        content, outputs = run(kc, cell, 300)
        took = time.monotonic() - t
    text = _stream(outputs)
    assert content["status"] == "error" and "PackageIndexUnreachable" in text, text
    assert url in text and "cannot be reached" in text and "package_index" in text, text
    assert took < 30, took
    assert ledger.get("unreach-1")["status"] == "FAILED"


def test_credentials_in_the_index_url_stay_out_of_run_images(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path,
    https_index: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    password = f"pw{secrets.token_hex(8)}"
    monkeypatch.setenv("PIP_INDEX_URL", https_index.replace("https://", f"https://u:{password}@"))
    name = make_kernelspec("nbc-index-creds", network_mode="host")
    with started(name, cwd=str(tmp_path)) as (km, kc):
        run(kc, "%config LocalBackend.run_pool_size = 0")  # a run image, built from a commit
        content, outputs = run(kc, "%%remote_run --local --name creds\nimport os\ny = 1", 600)
        assert content["status"] == "ok", _stream(outputs)
        content, outputs = run(kc, "import os\nprint(os.environ['PIP_INDEX_URL'])")
        assert password in stdout_of(outputs)  # the kernel itself has it, in its environment
        image = ledger.get("creds-1")["image"]
        assert image
        inspected = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, text=True, check=True
        ).stdout
        assert password not in inspected and json.loads(inspected)
        found = False
        with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as saved:
            assert saved.stdout is not None
            tail = b""
            while chunk := saved.stdout.read(1 << 20):
                found = found or password.encode() in tail + chunk
                tail = chunk[-64:]
        assert not found, "the index's password is in the run image's layers"

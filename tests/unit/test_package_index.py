"""The host's package index settings for kernels (kernel/package_index.py) and the wheel
resolution's failures that are the index's, not a package's (wheels.py). The last tests
run the real pip against indexes this test serves on 127.0.0.1 (no Docker)."""

from __future__ import annotations

import functools
import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.images.package_index import (
    CA_IN_KERNEL,
    NO_INDEX_NOTE,
    describe_index,
    host_settings,
    pip_config,
    prepare_pip,
)
from nbcontainer_kernel.images.wheels import index_trouble, resolution_budget, run_pip
from nbcontainer_kernel.runtime.errors import PackageIndexUnreachable, WheelResolutionError
from nbcontainer_kernel.snapshots.env import filter_env
from tests.helpers import examples
from tests.index_server import (
    closed_port_url,
    make_pki,
    make_wheel,
    serve_index,
    silent_server,
    simple_index,
)


@pytest.fixture(autouse=True)
def only_the_tests_pip_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip's files outside the environment's reach (/etc/pip.conf, the venv's) are the
    test's own, which it does not write."""
    from nbcontainer_kernel.images import package_index

    monkeypatch.setattr(package_index, "SYSTEM_FILE", tmp_path / "etc-pip.conf")
    monkeypatch.setattr("sys.prefix", str(tmp_path / "prefix"))


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose pip sees only `tmp_path`'s files."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"), **extra}


def _conf(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_pip_settings_come_from_its_files_in_order_then_the_environment(tmp_path: Path) -> None:
    _conf(tmp_path / "xdg" / "pip" / "pip.conf", "[global]\nindex-url = https://a/simple\n"
          "timeout = 5\ntrusted-host = a\n")  # fmt: skip
    _conf(tmp_path / "home" / ".config" / "pip" / "pip.conf", "[global]\ntimeout = 7\n"
          "[install]\nfind-links =\n    /w1\n    /w2\n[freeze]\ntimeout = 99\n")  # fmt: skip
    env_file = _conf(tmp_path / "env.conf", "[global]\nextra-index-url = file:///x\n")
    environ = _environ(tmp_path, PIP_CONFIG_FILE=str(env_file), PIP_TRUSTED_HOST="b")
    assert pip_config(environ) == {
        "index-url": "https://a/simple",
        "timeout": "7",  # the user's file over the global one; [freeze] is not pip install's
        "trusted-host": "b",  # the environment over every file
        "find-links": "/w1 /w2",  # [install] over [global]; lines joined
        "extra-index-url": "file:///x",
    }
    assert pip_config({**environ, "PIP_CONFIG_FILE": os.devnull}) == {"trusted-host": "b"}


def test_a_kernel_gets_the_hosts_index_ca_proxies_and_local_paths_read_only(
    tmp_path: Path,
) -> None:
    wheels, index, ca = tmp_path / "wheels", tmp_path / "pypi" / "simple", tmp_path / "ca.pem"
    wheels.mkdir()
    index.mkdir(parents=True)
    ca.write_text("CA")
    constraints = _conf(tmp_path / "c.txt", "x==1\n")
    environ = _environ(
        tmp_path,
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="https://user:s3cret@index.example/simple",
        PIP_EXTRA_INDEX_URL=f"file://{index} https://other.example/simple",
        PIP_FIND_LINKS=f"{wheels} /no/such/dir",
        PIP_CONSTRAINT=str(constraints),
        PIP_CERT=str(ca),
        HTTPS_PROXY="http://proxy:3128",
        no_proxy="localhost",
    )
    got = host_settings("host", environ)
    assert got.mounts == {
        str(index): str(index),
        str(wheels): str(wheels),
        str(constraints): str(constraints),
        str(ca): CA_IN_KERNEL,
    }
    assert got.env["PIP_INDEX_URL"] == "https://user:s3cret@index.example/simple"
    # A path that does not exist here is left out, and said.
    assert got.env["PIP_FIND_LINKS"] == str(wheels)
    assert got.left_out == ["find-links /no/such/dir: it does not exist on this host"]
    assert {got.env[k] for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")} == {
        CA_IN_KERNEL
    }
    assert got.env["HTTPS_PROXY"] == "http://proxy:3128" and got.env["no_proxy"] == "localhost"
    assert got.env["NBCONTAINER_PACKAGE_INDEX"] == "host"
    assert got.index == "https://***@index.example/simple"


def test_no_package_index_is_no_index_and_nothing_of_the_hosts(tmp_path: Path) -> None:
    environ = _environ(tmp_path, PIP_INDEX_URL="https://index.example/simple")
    got = host_settings("none", environ)
    assert got.env == {"PIP_NO_INDEX": "1", "NBCONTAINER_PACKAGE_INDEX": "none"}
    assert got.mounts == {}


_USERINFO = st.text(
    st.characters(whitelist_categories=("L", "N"), whitelist_characters="-._~!$&'()*+,;="),
    min_size=3,
    max_size=20,
)


@settings(max_examples=examples(200), deadline=None)
@given(user=_USERINFO, password=_USERINFO)
def test_index_credentials_never_show_in_a_message_and_never_travel_in_a_snapshot(
    user: str, password: str
) -> None:
    url = f"https://{user}:{password}@index.example:8443/simple"
    shown = describe_index(url)
    assert shown == "https://***@index.example:8443/simple"
    kept, dropped, _ = filter_env(
        {"PIP_INDEX_URL": url, "PIP_EXTRA_INDEX_URL": f"file:///x {url}", "PIP_TIMEOUT": "5"}
    )
    assert set(dropped) >= {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"}
    assert "PIP_TIMEOUT" not in dropped and "PIP_INDEX_URL" not in kept  # a secret by value only


PIP_LINES = [
    (
        "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) "
        "after connection broken by 'SSLError(SSLCertVerificationError(1, '[SSL: "
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed'))': /simple/tomli-w/",
        "TLS verification failed",
        True,
    ),
    (
        "Could not fetch URL https://x/simple/a/: There was a problem confirming the ssl "
        "certificate: HTTPSConnectionPool(...): Max retries exceeded (Caused by SSLError(...))",
        "the TLS connection to the index failed",
        True,
    ),
    (
        "WARNING: Retrying (Retry(total=4...)) after connection broken by 'ProxyError('Cannot "
        "connect to proxy.', OSError('Tunnel connection failed: 407 Proxy Authentication "
        "Required'))': /simple/a/",
        "the proxy refused the connection",
        True,
    ),
    (
        "WARNING: Retrying (Retry(total=3...)) after connection broken by "
        "'NewConnectionError('<...>: Failed to establish a new connection: [Errno 111] "
        "Connection refused')': /simple/a/",
        "the index cannot be reached",
        False,
    ),
    (
        "WARNING: Retrying (Retry(total=4...)) after connection broken by "
        "'ConnectTimeoutError(<...>, 'Connection to x timed out. (connect timeout=15)')'",
        "did not answer in time",
        False,
    ),
    ("Collecting ssl-error-tools==1.0", None, None),  # a package's name is not a failure
    (
        "ERROR: Could not find a version that satisfies the requirement x (from versions: none)",
        None,
        None,
    ),  # fmt: skip
    ("  Downloading timed_out_pkg-1.0-py3-none-any.whl (2 kB)", None, None),
]


@pytest.mark.parametrize(("line", "cause", "never_heals"), PIP_LINES)
def test_pips_words_for_an_index_it_cannot_use_are_told_from_a_missing_wheel(
    line: str, cause: str | None, never_heals: bool | None
) -> None:
    found = index_trouble(line)
    if cause is None:
        assert found is None
    else:
        assert found is not None and cause in found[0] and found[1] is never_heals


def _download(url: str, dest: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("PIP_INDEX_URL", url)
    return run_pip(["download", "--no-deps", "--retries", "5", "-d", str(dest), "nbc-probe-pkg"])


@pytest.fixture
def pip_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees nothing of the host's configuration; a CA of this test's own."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "")
    return tmp_path


def test_an_index_whose_certificate_is_not_trusted_stops_pip_at_once(
    pip_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(pip_env / "pki")
    simple_index(pip_env / "idx", [make_wheel(pip_env, "nbc-probe-pkg", "1.0", "V = 1\n")])
    with serve_index(pip_env / "idx", pki) as url:
        t = time.monotonic()
        with pytest.raises(PackageIndexUnreachable) as caught:
            _download(url, pip_env / "out", monkeypatch)
        took = time.monotonic() - t
        assert "TLS verification failed" in caught.value.cause and took < 5, took
        assert caught.value.index == url
        # Trusted (the CA given, as the host's settings give it to a kernel): it downloads.
        monkeypatch.setenv("PIP_CERT", str(pki.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))
        code, output = _download(url, pip_env / "out", monkeypatch)
        assert code == 0, output
        assert (pip_env / "out" / "nbc_probe_pkg-1.0-py3-none-any.whl").exists()


def test_an_index_that_cannot_be_reached_stops_pip_after_its_first_retry(
    pip_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = time.monotonic()
    with pytest.raises(PackageIndexUnreachable, match="cannot be reached"):
        _download(closed_port_url(), pip_env / "out", monkeypatch)
    assert time.monotonic() - t < 10


def test_an_index_that_never_answers_fails_when_the_budget_is_spent(
    pip_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with silent_server() as url, resolution_budget(1.0):
        t = time.monotonic()
        with pytest.raises(PackageIndexUnreachable, match="budget of 1 s"):
            _download(url, pip_env / "out", monkeypatch)
        assert time.monotonic() - t < 5


def test_a_missing_wheel_is_still_a_missing_wheel(
    pip_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.images.wheels import TargetPython, resolve_wheels

    pki = make_pki(tmp_path / "pki")
    simple_index(tmp_path / "idx", [make_wheel(tmp_path, "other-pkg", "1.0", "V = 1\n")])
    target = TargetPython.from_probe(_probe())
    with serve_index(tmp_path / "idx", pki) as url:
        for name, value in (("PIP_INDEX_URL", url), ("PIP_CERT", str(pki.ca_file))):
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))
        with pytest.raises(WheelResolutionError):
            resolve_wheels(["nbc-missing-pkg==1.0"], target, tmp_path / "out", no_deps=True)


def test_no_index_fails_at_once_saying_so(pip_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcontainer_kernel.images.wheels import TargetPython, resolve_wheels

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = TargetPython.from_probe(_probe())
    with pytest.raises(PackageIndexUnreachable, match="no package index here"):
        resolve_wheels(["nbc-missing-pkg==1.0"], target, pip_env / "out", no_deps=True)


@functools.cache
def _probe() -> str:
    """The interpreter's own probe, asked once: every test here targets the same Python."""
    import subprocess
    import sys

    from nbcontainer_kernel.images.wheels import PROBE_SNIPPET

    return subprocess.run(
        [sys.executable, "-c", PROBE_SNIPPET], capture_output=True, text=True, check=True
    ).stdout


class _Magics:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.magics: dict[str, dict[str, Any]] = {"line": {"pip": self.calls.append}}

    def register_function(self, func: Any, kind: str, name: str) -> None:
        self.magics[kind][name] = func


class _Shell:
    def __init__(self) -> None:
        self.magics_manager = _Magics()


def test_pip_in_a_kernel_without_an_index_says_why_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell = _Shell()
    prepare_pip(shell, {"NBCONTAINER_PACKAGE_INDEX": "none"})
    shell.magics_manager.magics["line"]["pip"]("install tomli_w")
    assert shell.magics_manager.calls == ["install tomli_w"]
    assert NO_INDEX_NOTE in capsys.readouterr().err
    plain = _Shell()
    prepare_pip(plain, {"NBCONTAINER_PACKAGE_INDEX": "host"})
    assert plain.magics_manager.magics["line"]["pip"] == plain.magics_manager.calls.append


def test_the_ca_a_kernel_is_given_is_one_python_can_load(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    assert context.cert_store_stats()["x509_ca"] == 1


def test_pip_in_a_real_shell_without_an_index_says_why_and_runs_pip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.magics.packaging import PackagingMagics

    ran: list[str] = []
    monkeypatch.setattr(PackagingMagics, "pip", lambda self, line: ran.append(line))
    shell = InteractiveShell.instance()
    try:
        prepare_pip(shell, {"NBCONTAINER_PACKAGE_INDEX": "none"})
        shell.run_line_magic("pip", "install tomli_w")
        assert ran == ["install tomli_w"]
        assert NO_INDEX_NOTE in capsys.readouterr().err
    finally:
        InteractiveShell.clear_instance()


def _mirror(root: Path, links: dict[str, str]) -> Path:
    """ROOT/simple/<project>/index.html, each linking to its href (the mirror layout)."""
    for project, href in links.items():
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(f'<html><body><a href="{href}#sha256=00">{project}.whl</a></body></html>')
    return root / "simple"


def test_a_file_index_is_mounted_with_the_directory_its_pages_link_into(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    index = _mirror(
        tmp_path, {f"p{i}": f"../../files/p{i}-1.0-py3-none-any.whl" for i in range(40)}
    )
    got = host_settings(
        "host",
        _environ(tmp_path, PIP_CONFIG_FILE=os.devnull, PIP_EXTRA_INDEX_URL=f"file://{index}"),
    )
    assert got.mounts[str(index)] == str(index)
    assert got.mounts[str(tmp_path / "files")] == str(tmp_path / "files")
    assert got.env["PIP_EXTRA_INDEX_URL"] == f"file://{index}" and got.left_out == []


@pytest.mark.parametrize(
    ("href", "kept"),
    [
        ("../../files/x.whl", True),  # relative, into ROOT/files
        ("file://{root}/elsewhere/x.whl", True),  # an absolute file URL
        ("https://files.example/x.whl", True),  # served from elsewhere: nothing to mount
        ("x.whl", True),  # beside the page: inside the index
        ("../../gone/x.whl", False),  # a directory that is not there
    ],
)
def test_an_index_whose_links_cannot_be_mounted_is_left_out_and_said(
    tmp_path: Path, href: str, kept: bool
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "elsewhere").mkdir()
    index = _mirror(tmp_path, {"a": href.format(root=tmp_path)})
    environ = _environ(
        tmp_path,
        PIP_CONFIG_FILE=os.devnull,
        PIP_EXTRA_INDEX_URL=f"file://{index} https://other.example/simple",
    )
    got = host_settings("host", environ)
    if kept:
        assert got.env["PIP_EXTRA_INDEX_URL"].startswith(f"file://{index} ") and not got.left_out
    else:
        assert got.env["PIP_EXTRA_INDEX_URL"] == "https://other.example/simple"
        assert "does not exist" in got.left_out[0] and str(index) not in got.mounts

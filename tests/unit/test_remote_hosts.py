"""Remote Docker hosts without a daemon: the docker_host grammar (nothing ssh could take
for an option), the ssh command line, which layers an image copy sends, what seeds a
remote kernel's working directory, and paths that would leave it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbcontainer_kernel.docker.hosts import SSH_OPTIONS, DockerHost, HostConnection, ssh_command
from nbcontainer_kernel.docker.image_copy import shared_layers
from nbcontainer_kernel.docker.options import validate_options
from nbcontainer_kernel.docker.workdir import collect, remote_path
from nbcontainer_kernel.kernel.provisioner import _names_registry
from nbcontainer_kernel.runtime.errors import HostUnreachable, InvalidOption, WorkdirTooLarge


@pytest.mark.parametrize(
    ("url", "scheme", "user", "host", "port"),
    [
        ("ssh://gpu-box", "ssh", None, "gpu-box", None),
        ("ssh://alice@gpu-box", "ssh", "alice", "gpu-box", None),
        ("ssh://alice@gpu-box:2222", "ssh", "alice", "gpu-box", 2222),
        ("ssh://10.0.0.7:22/", "ssh", None, "10.0.0.7", 22),
        ("ssh://my_alias", "ssh", None, "my_alias", None),
        ("tcp://docker.example.org:2376", "tcp", None, "docker.example.org", 2376),
    ],
)
def test_a_docker_host_in_either_form_is_read_into_its_parts(
    url: str, scheme: str, user: str | None, host: str, port: int | None
) -> None:
    parsed = DockerHost.parse(url)
    assert (parsed.scheme, parsed.user, parsed.host, parsed.port) == (scheme, user, host, port)


@pytest.mark.parametrize(
    "url",
    [
        "gpu-box",
        "http://gpu-box",
        "ssh://",
        "ssh://-oProxyCommand=touch${IFS}/tmp/x",
        "ssh://-oProxyCommand=x@gpu-box",
        "ssh://gpu box",
        "ssh://gpu-box:0",
        "ssh://gpu-box:65536",
        "ssh://gpu-box:22x",
        "ssh://a@b@gpu-box",
        "ssh://gpu-box\n-oProxyCommand=x",
        "tcp://gpu-box",
        "tcp://alice@gpu-box:2376",
        "ssh://gpu-box/path",
    ],
)
def test_a_docker_host_that_is_not_one_of_the_two_forms_is_refused_naming_the_option(
    url: str,
) -> None:
    with pytest.raises(InvalidOption) as err:
        DockerHost.parse(url)
    assert err.value.option == "docker_host"


@given(st.text(max_size=40))
def test_no_docker_host_reaches_ssh_as_an_option(text: str) -> None:
    for url in (text, "ssh://" + text):
        try:
            host = DockerHost.parse(url)
        except InvalidOption:
            continue
        argv = ssh_command(host, None, "-N")
        # Everything after "--" is the destination; it never starts with "-".
        assert argv[-2] == "--" and argv[-1] == host.destination
        assert not host.destination.startswith("-")
        assert all(ch.isalnum() or ch in "._-@" for ch in host.destination)


def test_the_ssh_command_verifies_host_keys_whatever_the_users_config_says() -> None:
    argv = ssh_command(DockerHost.parse("ssh://alice@gpu-box:2222"), "/etc/cfg", "-N")
    assert argv[1:3] == ["-F", "/etc/cfg"]
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    # Command-line options come before the config file's (ssh takes the first value).
    assert argv.index("StrictHostKeyChecking=yes") < argv.index("--")
    assert argv[-4:] == ["-p", "2222", "--", "alice@gpu-box"]
    assert set(SSH_OPTIONS) <= set(argv)


def test_a_host_that_does_not_resolve_is_said_in_sshs_own_words() -> None:
    conn = HostConnection(DockerHost.parse("ssh://nbc-no-such-host.invalid"))
    with pytest.raises(HostUnreachable) as err:
        conn.engine  # noqa: B018 (the property connects)
    assert "nbc-no-such-host.invalid" in err.value.reason
    assert "resolve" in err.value.reason.lower()
    conn.close()
    assert not conn.dir.exists()


layer_lists = st.lists(st.sampled_from("abcdef"), max_size=6)


@given(layer_lists, st.lists(layer_lists, max_size=5))
def test_an_image_copy_skips_exactly_the_longest_prefix_some_image_there_has(
    wanted: list[str], present: list[list[str]]
) -> None:
    n = shared_layers(wanted, present)
    assert any(p[:n] == wanted[:n] for p in present) or n == 0
    # No image there shares one more layer.
    assert not any(len(p) > n < len(wanted) and p[: n + 1] == wanted[: n + 1] for p in present)


@pytest.mark.parametrize(
    ("ref", "names_one"),
    [
        ("nbcontainer/python:3.11", False),
        ("python:3.11", False),
        ("registry.example.org/team/kernel:1", True),
        ("127.0.0.1:5000/nbcontainer:abc", True),
        ("localhost/kernel", True),
        ("team/kernel", False),
    ],
)
def test_only_an_image_name_that_names_its_registry_is_pulled_on_the_remote_host(
    ref: str, names_one: bool
) -> None:
    assert _names_registry(ref) is names_one


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_seeding_leaves_out_what_gitignore_at_every_level_and_dockerignore_leave_out(
    tmp_path: Path,
) -> None:
    _tree(
        tmp_path,
        {
            "nb.ipynb": "{}",
            "pkg/mod.py": "x = 1",
            "pkg/.gitignore": "*.pyc\nlocal/\n",
            "pkg/mod.pyc": "",
            "pkg/local/cache.bin": "",
            ".gitignore": "secret.env\n/data/raw/\n!keep.env\n*.env\n",
            ".dockerignore": "big/\n",
            "secret.env": "TOKEN=x",
            "keep.env": "A=1",
            "data/raw/huge.csv": "",
            "data/clean.csv": "a",
            "big/blob": "",
            ".git/HEAD": "ref",
            ".ipynb_checkpoints/nb-checkpoint.ipynb": "{}",
            ".nbcontainer/runs.db": "",
        },
    )
    os.symlink("/etc", tmp_path / "etc-link")
    os.symlink("/etc/hostname", tmp_path / "file-link")
    got = [rel for rel, _ in collect(tmp_path, 1 << 20)]
    assert got == [
        ".dockerignore",
        ".gitignore",
        "nb.ipynb",
        "data/clean.csv",
        "pkg/.gitignore",
        "pkg/mod.py",
    ]


def test_a_working_directory_over_its_cap_is_refused_naming_its_largest_files(
    tmp_path: Path,
) -> None:
    _tree(tmp_path, {"small.txt": "x", "model.bin": "y" * 5000})
    with pytest.raises(WorkdirTooLarge) as err:
        collect(tmp_path, 1000)
    assert err.value.biggest[0] == ("model.bin", 5000)
    assert "workdir_max_size" in str(err.value) and ".gitignore" in str(err.value)


@given(st.lists(st.sampled_from(["..", ".", "a", "b", "", "/"]), min_size=1, max_size=6))
def test_no_path_asked_for_leaves_the_kernels_working_directory(parts: list[str]) -> None:
    rel = "/".join(parts)
    try:
        resolved = remote_path("/home/u/project", rel)
    except InvalidOption:
        return
    assert resolved == "/home/u/project" or resolved.startswith("/home/u/project/")


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"docker_host": "ssh://gpu-box", "docker_access": "guarded"}, "docker_access"),
        ({"docker_host": "ssh://gpu-box", "network_mode": "host"}, "network_mode"),
        ({"docker_host": "tcp://gpu-box"}, "docker_host"),
        ({"docker_host": "ssh://gpu-box", "workdir_max_size": "lots"}, "workdir_max_size"),
        ({"docker_host": "ssh://gpu-box", "ssh_config": "/nonexistent/cfg"}, "ssh_config"),
    ],
)
def test_a_remote_kernelspec_that_cannot_work_is_refused_at_install(
    options: dict[str, str], option: str
) -> None:
    with pytest.raises(InvalidOption) as err:
        validate_options({"image": "img", **options})
    assert err.value.option == option


def test_a_remote_kernelspec_may_have_no_docker_or_the_hosts_own_socket() -> None:
    for access in ("none", "raw"):
        assert (
            validate_options(
                {"image": "img", "docker_host": "ssh://gpu-box", "docker_access": access}
            )["docker_access"]
            == access
        )
    # Left unsaid, the trait's default ('guarded') is not a choice of the kernelspec's.
    unsaid = {"image": "img", "docker_host": "ssh://gpu-box"}
    assert validate_options(unsaid) == unsaid


def test_a_pulled_folders_links_are_left_out_and_named_not_refusing_the_rest(
    tmp_path: Path,
) -> None:
    import io
    import tarfile

    from nbcontainer_kernel.docker.archives import extract_tar
    from nbcontainer_kernel.runtime.errors import UnsafeArchive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in [("r/model.txt", tarfile.REGTYPE), ("r/evil", tarfile.SYMTYPE),
                           ("r/hard", tarfile.LNKTYPE), ("r/fifo", tarfile.FIFOTYPE)]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = b"weights" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        escape = tarfile.TarInfo("../escape.txt")
        escape.size = 1
        tar.addfile(escape, io.BytesIO(b"x"))
    data = buf.getvalue()
    skipped: list[str] = []
    with pytest.raises(UnsafeArchive):  # a path out of the destination is still refused
        extract_tar(data, tmp_path / "a", 1 << 20, skipped=skipped)
    assert not (tmp_path / "escape.txt").exists()
    cut = data[: data.index(b"../escape.txt")]  # the archive without its escaping member
    skipped = []
    extract_tar(cut.ljust(len(cut) + 1024, b"\0"), tmp_path / "b", 1 << 20, skipped=skipped)
    assert skipped == ["r/evil", "r/hard", "r/fifo"]
    assert [p.name for p in (tmp_path / "b" / "r").iterdir()] == ["model.txt"]
    with pytest.raises(UnsafeArchive):  # without `skipped`, a link refuses the archive
        extract_tar(cut.ljust(len(cut) + 1024, b"\0"), tmp_path / "c", 1 << 20)


def test_a_kernels_tunnel_still_open_at_exit_is_ended_with_its_folder() -> None:
    import subprocess

    from nbcontainer_kernel.docker import hosts

    tunnel = hosts.SshTunnel(DockerHost.parse("ssh://gpu-box"), None, {1: 1})
    # A stand-in for its ssh (no server here): a process that would outlive us.
    tunnel.proc = subprocess.Popen(["sleep", "60"])
    hosts._tunnels.add(tunnel)
    proc = tunnel.proc
    hosts.close_all()
    assert proc.poll() is not None and tunnel.proc is None
    assert not tunnel.dir.exists()
    assert tunnel not in hosts._tunnels

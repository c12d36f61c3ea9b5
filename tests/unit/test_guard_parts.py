"""The guard's readers, no daemon: Go's key folding, strict JSON and queries
(guard/canonical.py), Dockerfiles (guard/dockerfile.py), tar streams (guard/archives.py),
and the check of what the daemon stored (guard/stored.py)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.guard.archives import ArchiveRefused, rewrite_archive, rewrite_context
from nbcontainer_kernel.guard.canonical import Bad, decode_json, go_fold, parse_query
from nbcontainer_kernel.guard.dockerfile import DockerfileRefused, check_dockerfile, parse
from nbcontainer_kernel.guard.models import CREATE, EXEC_CREATE
from nbcontainer_kernel.guard.policy import GUARD_KERNEL, Grant
from nbcontainer_kernel.guard.stored import container_outside, exec_outside, volume_outside
from tests.helpers import examples

# ------------------------------------------------------------------------- folding
FOLDS = [
    # a key, a field name, does Go's encoding/json match them?
    ("hostconfig", "HostConfig", True),
    ("HOSTCONFIG", "HostConfig", True),
    ("Hoſtconfig", "HostConfig", True),  # U+017F LATIN SMALL LETTER LONG S
    ("Networ\u212aMode", "NetworkMode", True),  # U+212A KELVIN SIGN
    ("Host_Config", "HostConfig", False),
    ("HostConfig ", "HostConfig", False),
    ("Hostconfıg", "HostConfig", True),  # dotless i: Go keeps it apart; joining is stricter
]


@pytest.mark.parametrize(("key", "name", "same"), FOLDS)
def test_keys_fold_as_gos_decoder_matches_them(key: str, name: str, same: bool) -> None:
    assert (go_fold(key) == go_fold(name)) is same


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=20))
def test_folding_is_case_blind_and_idempotent(name: str) -> None:
    assert go_fold(go_fold(name)) == go_fold(name)
    if name.isascii():
        assert go_fold(name.upper()) == go_fold(name.lower())


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.sampled_from(["Image", "image", "IMAGE", "User", "user", "Labels", "Tty", "tTY"]),
        min_size=2,
        max_size=4,
    )
)
def test_two_keys_go_reads_as_one_field_are_refused(keys: list[str]) -> None:
    value = {"image": "x", "user": "x", "labels": {}, "tty": True}
    body = "{" + ",".join(f'"{k}":{json.dumps(value[k.lower()])}' for k in keys) + "}"
    folded = [go_fold(k) for k in keys]
    if len(set(folded)) < len(folded):
        with pytest.raises(Bad, match="given twice"):
            decode_json(body.encode(), CREATE)
    else:
        decode_json(body.encode(), CREATE)


def test_a_field_is_written_back_under_its_canonical_name() -> None:
    out = decode_json(b'{"cmd":["id"],"PRIVILEGED":false,"uSeR":"1:1"}', EXEC_CREATE)
    assert out == {"Cmd": ["id"], "Privileged": False, "User": "1:1"}


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1,"a":2}', b'{"Labels":{"x":"1","x":"2"}}', b"NaN", b'{"Memory":Infinity}',
     b'{"Image":"\\ud800"}', b"\xff", b'{"Image":1}', b'{"Tty":"true"}', b'{"Memory":1.5}',
     b'{"Memory":1e30}', b'{"Unknown":{"x":1}}'],
)  # fmt: skip
def test_json_two_readers_could_disagree_on_is_refused(raw: bytes) -> None:
    with pytest.raises(Bad):
        decode_json(raw, CREATE)


def test_an_unknown_field_left_empty_is_dropped_not_refused() -> None:
    assert decode_json(b'{"Image":"x","Unknown":null,"Other":""}', CREATE) == {"Image": "x"}


QUERIES = [
    ("a=1&b=2", {"a": "1", "b": "2"}),
    ("a=1&a=2", {"a": ["1", "2"]}),
    ("t=x%3A1&t=y", {"t": ["x:1", "y"]}),
    ("a=b+c", {"a": "b c"}),
    ("flag", {"flag": ""}),
    ("", {}),
]


@pytest.mark.parametrize(("raw", "parsed"), QUERIES)
def test_a_query_is_read_with_its_repeated_keys_kept(raw: str, parsed: dict[str, Any]) -> None:
    assert parse_query(raw) == parsed


@pytest.mark.parametrize("raw", ["a=1;b=2", "a=%zz", "a=%", "a=%ff%fe"])
def test_a_query_go_would_refuse_is_refused(raw: str) -> None:
    with pytest.raises(Bad):
        parse_query(raw)


# ---------------------------------------------------------------------- Dockerfiles
def _never(_: str) -> bool:
    return False


def _local(ref: str) -> bool:
    return ref in {"base:1", "base:2"}


DOCKERFILES = [
    # the Dockerfile, build args, refused because (or "" when it builds)
    ("FROM base:1\nRUN echo hi\n", {}, ""),
    ("FROM base:1 AS a\nFROM base:2\nCOPY --from=a /x /y\nCOPY --from=0 /x /z\n", {}, ""),
    ("ARG B=base:1\nFROM $B\n", {}, ""),
    ("ARG B\nFROM ${B}\n", {"B": "base:2"}, ""),
    ("ARG B\nFROM ${B:-base:1}\n", {}, ""),
    ("FROM scratch\nADD local.tar /\n", {}, ""),
    ("FROM base:1\nADD http://example.invalid/x /x\n", {}, "fetches"),
    ("FROM base:1\nADD HTTPS://example.invalid/x /x\n", {}, "fetches"),
    ("FROM base:1\nadd ftp://example.invalid/x /x\n", {}, "fetches"),
    ('FROM base:1\nADD ["http://example.invalid/x", "/x"]\n', {}, "fetches"),
    ("FROM base:1\nADD --chown=1 \\\n   http://example.invalid/x \\\n  /x\n", {}, "fetches"),
    ("# escape=`\nFROM base:1\nADD `\n  http://example.invalid/x /x\n", {}, "fetches"),
    ("FROM base:1\nADD git@example.invalid:a/b.git /x\n", {}, "fetches"),
    ("FROM base:1\nARG U=http://example.invalid/x\nADD $U /x\n", {}, "variable"),
    ("FROM base:1\nADD ${U} /x\n", {}, "variable"),
    ("FROM other:9\n", {}, "not an image on this host"),
    ("ARG B=other:9\nFROM $B\n", {}, "not an image on this host"),
    ("ARG B\nFROM $B\n", {}, "no ARG or build argument"),
    ("FROM base:1\nCOPY --from=other:9 /x /y\n", {}, "not an image on this host"),
    ("FROM base:1\nCOPY --from=$X /x /y\n", {}, "variable"),
    ("FROM base:1\nONBUILD ADD http://example.invalid/x /x\n", {}, "fetches"),
    ("FROM --platform=linux/arm64 base:1\n", {}, "platform"),
    ("FROM base:1\n# ADD http://example.invalid/x /x\nRUN true\n", {}, ""),
]


@pytest.mark.parametrize(("text", "args", "why"), DOCKERFILES)
def test_a_dockerfile_builds_only_from_what_is_on_the_host(
    text: str, args: dict[str, str], why: str
) -> None:
    if not why:
        check_dockerfile(text, args, _local, lambda _: [])
    else:
        with pytest.raises(DockerfileRefused, match=why):
            check_dockerfile(text, args, _local, lambda _: [])


def test_a_base_images_onbuild_triggers_are_checked_as_part_of_the_build() -> None:
    triggers = {"base:1": ["ADD http://example.invalid/x /x"], "base:2": ["RUN true"]}
    check_dockerfile("FROM base:2\n", {}, _local, lambda ref: triggers.get(ref, []))
    with pytest.raises(DockerfileRefused, match="ONBUILD"):
        check_dockerfile("FROM base:1\n", {}, _local, lambda ref: triggers.get(ref, []))


def test_continuations_and_comments_join_as_the_builder_joins_them() -> None:
    text = "FROM a\nRUN one \\\n# a comment\n  two\n\nADD x \\\n y\n"
    assert [(i.keyword, i.rest) for i in parse(text)] == [
        ("FROM", "a"),
        ("RUN", "one two"),
        ("ADD", "x y"),
    ]


# ---------------------------------------------------------------------- archives
def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            body = (data or {}).get(m.name)
            if body is not None:
                m.size = len(body)
            tar.addfile(m, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


def _file(name: str, mode: int = 0o644, uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid = mode, uid, uid
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/shadow"
    return info


def _rewrite(raw: bytes, chunk: int = 1000) -> list[tarfile.TarInfo]:
    out = bytearray()
    chunks = iter([raw[i : i + chunk] for i in range(0, len(raw), chunk)])
    rewrite_archive(chunks, out.extend, 1000, 1001)
    with tarfile.open(fileobj=io.BytesIO(bytes(out))) as tar:
        return tar.getmembers()


@settings(max_examples=examples(100), deadline=None)
@given(mode=st.integers(0, 0o7777), uid=st.integers(0, 65535), chunk=st.integers(1, 4096))
def test_an_archive_comes_out_owned_by_the_kernel_without_set_id_bits(
    mode: int, uid: int, chunk: int
) -> None:
    raw = _tar([_file("a", mode, uid), _file("d/", mode | 0o040000, uid)], {"a": b"x" * 700})
    for member in _rewrite(raw, chunk):
        assert (member.uid, member.gid) == (1000, 1001)
        assert member.mode & 0o6000 == 0
        assert member.mode & 0o1777 == mode & 0o1777


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]
)
def test_devices_fifos_and_links_are_refused_in_an_archive(kind: bytes) -> None:
    with pytest.raises(ArchiveRefused):
        _rewrite(_tar([_file("ok"), _special("bad", kind)], {"ok": b"1"}))


def test_a_compressed_archive_is_read_and_passed_on_plain() -> None:
    raw = gzip.compress(_tar([_file("a", 0o4755)], {"a": b"data"}))
    [member] = _rewrite(raw)
    assert member.name == "a" and member.mode == 0o755


def test_an_archive_that_is_not_a_tar_is_refused() -> None:
    with pytest.raises(ArchiveRefused):
        _rewrite(b"not a tar at all" * 100)


def _context(members: list[tarfile.TarInfo], data: dict[str, bytes]) -> str:
    seen: list[str] = []
    out = bytearray()
    raw = _tar(members, data)
    rewrite_context(iter([raw]), out.extend, "Dockerfile", seen.append, 1 << 20)
    return seen[0]


def test_a_build_context_hands_its_dockerfile_to_the_check() -> None:
    text = _context([_file("Dockerfile"), _file("x")], {"Dockerfile": b"FROM a\n", "x": b"1"})
    assert text == "FROM a\n"


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([_file("Dockerfile"), _file("./Dockerfile")], "twice"),
        ([_special("Dockerfile", tarfile.SYMTYPE)], "symbolic link"),
        ([_file("x")], "no Dockerfile"),
        ([_file("Dockerfile"), _special("sub", tarfile.SYMTYPE), _file("sub/Dockerfile")], "link"),
        ([_file("Dockerfile"), _special("dev", tarfile.CHRTYPE)], "a device"),
    ],
)
def test_a_build_context_that_could_hide_its_dockerfile_is_refused(
    members: list[tarfile.TarInfo], why: str
) -> None:
    data = {m.name: b"FROM a\n" for m in members if m.type == tarfile.REGTYPE}
    with pytest.raises(ArchiveRefused, match=why):
        _context(members, data)


# --------------------------------------------------------------------- what was stored
GRANT = Grant("k1", "a" * 64, mounts=(("/srv/k", False), ("/srv/ro", True)), user="1000:1000",
              memory=1 << 30)  # fmt: skip


def _stored(**changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "Config": {
            "User": "1000:1000",
            "Labels": GRANT.forced_labels(),
        },
        "HostConfig": {
            "Privileged": False,
            "CapDrop": ["ALL"],
            "CapAdd": ["CAP_CHOWN", "KILL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file"},
            "RestartPolicy": {"Name": "no"},
            "NetworkMode": "default",
            "MaskedPaths": ["/proc/kcore"],
            "ReadonlyPaths": ["/proc/sys"],
            "Memory": 1 << 29,
        },
        "Mounts": [{"Type": "bind", "Source": "/srv/k", "RW": True, "Propagation": "rprivate"}],
    }
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            info[section][key] = value
        else:
            info[section] = value
    return info


STORED = [
    ({}, ""),
    ({"Config__User": "0:0"}, "Config.User"),
    ({"Config__User": ""}, "Config.User"),
    ({"Config__Labels": {GUARD_KERNEL: "other"}}, "Config.Labels"),
    ({"HostConfig__Privileged": True}, "Privileged"),
    ({"HostConfig__CapAdd": ["SYS_ADMIN"]}, "CapAdd"),
    ({"HostConfig__CapDrop": []}, "CapDrop"),
    ({"HostConfig__SecurityOpt": []}, "no-new-privileges"),
    ({"HostConfig__SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]}, "SecurityOpt"),
    ({"HostConfig__LogConfig": {"Type": "syslog"}}, "LogConfig"),
    ({"HostConfig__RestartPolicy": {"Name": "always"}}, "RestartPolicy"),
    ({"HostConfig__NetworkMode": "host"}, "NetworkMode"),
    ({"HostConfig__PidMode": "host"}, "PidMode"),
    ({"HostConfig__MaskedPaths": []}, "MaskedPaths"),
    ({"HostConfig__Devices": [{"PathOnHost": "/dev/kmsg"}]}, "Devices"),
    ({"HostConfig__GroupAdd": ["0"]}, "GroupAdd"),
    ({"HostConfig__Memory": 2 << 30}, "Memory"),
    ({"HostConfig__Memory": 0}, "Memory"),
    ({"HostConfig__PortBindings": {"80/tcp": [{"HostIp": ""}]}}, "HostIp"),
    ({"Mounts": [{"Type": "bind", "Source": "/etc", "RW": False}]}, "Mounts[0]"),
    ({"Mounts": [{"Type": "bind", "Source": "/srv/ro", "RW": True}]}, "read-only"),
    ({"Mounts": [{"Type": "bind", "Source": "/srv/k", "Propagation": "rshared"}]}, "Propagation"),
    ({"Mounts": [{"Type": "volume", "Driver": "nfs"}]}, "driver"),
    ({"Mounts": [{"Type": "npipe"}]}, "type"),
]


@pytest.mark.parametrize(("changes", "names"), STORED)
def test_what_the_daemon_stored_is_checked_field_by_field(
    changes: dict[str, Any], names: str
) -> None:
    problem = container_outside(_stored(**changes), GRANT)
    assert (problem == "") if not names else (names in problem), problem


def test_cgroup_v1_daemons_store_host_cgroup_namespaces_for_every_container() -> None:
    info = _stored(HostConfig__CgroupnsMode="host")
    assert container_outside(info, GRANT, cgroup_v1=True) == ""
    assert "CgroupnsMode" in container_outside(info, GRANT, cgroup_v1=False)


def test_a_volume_with_driver_options_and_a_root_exec_are_outside() -> None:
    assert "options" in volume_outside({"Name": "v", "Driver": "local", "Options": {"o": "bind"}})
    assert volume_outside({"Name": "v", "Driver": "local", "Options": None}) == ""
    assert "privileged" in exec_outside({"ProcessConfig": {"privileged": True}}, GRANT)
    assert "user" in exec_outside({"ProcessConfig": {"user": "root"}}, GRANT)
    assert exec_outside({"ProcessConfig": {"user": "1000:1000"}}, GRANT) == ""

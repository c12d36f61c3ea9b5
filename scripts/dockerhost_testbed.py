"""The remote Docker host test bed: a second Docker engine reachable only by SSH.

    python scripts/dockerhost_testbed.py start [--state DIR]   # prints KEY=VALUE lines
    python scripts/dockerhost_testbed.py stop  [--state DIR]
    python scripts/dockerhost_testbed.py env   [--state DIR]

A container of the image scripts/dockerhost-image.sh makes (Debian's docker.io and
openssh-server) runs `dockerd` and `sshd`; its SSH port, and its engine's TLS port (a CA,
a server and a client certificate made here with openssl), are published on 127.0.0.1 only.
The engine inside has nothing but what a test puts there. `start` makes, in the state
directory, a client key, the host's own host key (made here and given to the container, so
that the known_hosts entry is written from the key itself, never learnt on first use), and
an OpenSSH client config naming the host `nbc-testbed`:

    NBCONTAINER_TESTBED_DOCKER_HOST=ssh://nbc-testbed
    NBCONTAINER_TESTBED_SSH_CONFIG=<state>/ssh_config
    NBCONTAINER_TESTBED_TCP_HOST=tcp://127.0.0.1:<port>     (TLS, client certificate)
    NBCONTAINER_TESTBED_TLS_DIR=<state>/client              (ca.pem, cert.pem, key.pem)

`stop` removes the container, its engine's storage (a volume) and the state directory.
`--privileged` is refused on these machines; the capabilities below are what works.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

IMAGE = os.environ.get(
    "NBCONTAINER_TESTBED_DOCKERHOST_IMAGE", "nbcontainer/testbed-dockerhost:bookworm"
)
CONTAINER = "nbcontainer-testbed-dockerhost"
VOLUME = "nbcontainer-testbed-dockerhost-storage"
ALIAS = "nbc-testbed"
LABEL = "io.nbcontainer.role=testbed-dockerhost"

# dockerd on a volume (a real file system, so overlay2 works inside), sshd in front. The
# inner engine's log goes where `docker logs` shows it.
START = """#!/bin/sh
set -e
mkdir -p /run/sshd /var/run
dockerd --host unix:///var/run/docker.sock --host tcp://0.0.0.0:2376 --tlsverify \
  --tlscacert /etc/docker/tls/ca.pem --tlscert /etc/docker/tls/cert.pem \
  --tlskey /etc/docker/tls/key.pem --storage-driver overlay2 >/var/log/dockerd.log 2>&1 &
exec /usr/sbin/sshd -D -e
"""
SSHD_CONFIG = """Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
ClientAliveInterval 5
"""


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nbcontainer" / "dockerhost-testbed"


def _docker(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_tls(state: Path) -> dict[str, bytes]:
    """A CA, the engine's certificate (127.0.0.1) and a client's (state/client/)."""
    pki = state / "pki"
    client = state / "client"
    pki.mkdir()
    client.mkdir()
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=pki)
    _openssl("req", "-new", "-x509", "-key", "ca.key", "-days", "2", "-subj",
             "/CN=nbcontainer test bed CA", "-out", "ca.pem", cwd=pki)  # fmt: skip
    for who, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{who}.key",
                 cwd=pki)  # fmt: skip
        _openssl("req", "-new", "-key", f"{who}.key", "-subj", f"/CN={who}", "-out",
                 f"{who}.csr", cwd=pki)  # fmt: skip
        (pki / f"{who}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext", "-out",
                 f"{who}.pem", cwd=pki)  # fmt: skip
    for src, dst in (("ca.pem", "ca.pem"), ("client.pem", "cert.pem"), ("client.key", "key.pem")):
        (client / dst).write_bytes((pki / src).read_bytes())
    return {
        "etc/docker/tls/ca.pem": (pki / "ca.pem").read_bytes(),
        "etc/docker/tls/cert.pem": (pki / "server.pem").read_bytes(),
        "etc/docker/tls/key.pem": (pki / "server.key").read_bytes(),
    }


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def start(state: Path) -> dict[str, str]:
    if state.exists() or _docker("inspect", CONTAINER, check=False).returncode == 0:
        stop(state)
    if _docker("image", "inspect", IMAGE, check=False).returncode != 0:
        here = Path(__file__).resolve().parent
        subprocess.run([str(here / "dockerhost-image.sh"), IMAGE], check=True)
    state.mkdir(parents=True, mode=0o700)
    client_pub = _keygen(state / "id_ed25519", "nbcontainer-testbed-client")
    host_pub = _keygen(state / "host_ed25519", "nbcontainer-testbed-host")
    _docker("volume", "create", "--label", LABEL, VOLUME)
    _docker(
        "create", "--name", CONTAINER, "--label", LABEL, "--hostname", "gpu-box",
        "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--security-opt", "systempaths=unconfined",
        "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "-v", f"{VOLUME}:/var/lib/docker",
        "-p", "127.0.0.1::22", "-p", "127.0.0.1::2376",
        "--entrypoint", "/bin/sh", IMAGE, "/start.sh",
    )  # fmt: skip
    tls = _make_tls(state)
    files = {
        **{name: (data, 0o600) for name, data in tls.items()},
        "start.sh": (START.encode(), 0o755),
        "etc/ssh/sshd_config": (SSHD_CONFIG.encode(), 0o644),
        "etc/ssh/ssh_host_ed25519_key": ((state / "host_ed25519").read_bytes(), 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": (host_pub.encode() + b"\n", 0o644),
        "root/.ssh/authorized_keys": (client_pub.encode() + b"\n", 0o600),
    }
    subprocess.run(
        ["docker", "cp", "-", f"{CONTAINER}:/"], input=_tar(files), check=True, capture_output=True
    )
    _docker("start", CONTAINER)
    port = _docker("port", CONTAINER, "22/tcp").stdout.split(":")[-1].strip()
    tls_port = _docker("port", CONTAINER, "2376/tcp").stdout.split(":")[-1].strip()
    known = state / "known_hosts"
    known.write_text(f"{ALIAS} {' '.join(host_pub.split()[:2])}\n")
    config = state / "ssh_config"
    config.write_text(
        f"Host {ALIAS}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User root\n"
        f"  HostKeyAlias {ALIAS}\n"
        f"  IdentityFile {state / 'id_ed25519'}\n"
        f"  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n"
        f"  GlobalKnownHostsFile /dev/null\n"
        f"  StrictHostKeyChecking yes\n"
        f"  BatchMode yes\n"
    )
    _wait_engine(config)
    env = {
        "NBCONTAINER_TESTBED_DOCKER_HOST": f"ssh://{ALIAS}",
        "NBCONTAINER_TESTBED_SSH_CONFIG": str(config),
        "NBCONTAINER_TESTBED_TCP_HOST": f"tcp://127.0.0.1:{tls_port}",
        "NBCONTAINER_TESTBED_TLS_DIR": str(state / "client"),
    }
    (state / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (state / "testbed.json").write_text(json.dumps({"port": int(port)}))
    return env


def _wait_engine(config: Path, timeout: float = 60) -> None:
    """Until the inner engine answers over SSH (sshd first, then dockerd)."""
    deadline = time.monotonic() + timeout
    while True:
        version = ["docker", "version", "--format", "{{.Server.Version}}"]
        probe = subprocess.run(
            ["ssh", "-F", str(config), ALIAS, *version], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = _docker(
                "exec", CONTAINER, "tail", "-n", "20", "/var/log/dockerd.log", check=False
            )
            raise SystemExit(
                f"the test bed's engine did not answer over SSH: {probe.stderr.strip()}\n"
                f"{log.stdout}"
            )
        time.sleep(0.5)


def stop(state: Path) -> None:
    _docker("rm", "-f", "-v", CONTAINER, check=False)
    _docker("volume", "rm", "-f", VOLUME, check=False)
    shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop", "env"])
    p.add_argument("--state", type=Path, default=_default_state())
    args = p.parse_args()
    if args.action == "start":
        env = start(args.state)
        print("".join(f"{k}={v}\n" for k, v in env.items()), end="")
    elif args.action == "env":
        print((args.state / "env").read_text(), end="")
    else:
        stop(args.state)


if __name__ == "__main__":
    main()

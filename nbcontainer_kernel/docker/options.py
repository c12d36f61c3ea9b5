"""Container options shared by the provisioner and `nbcontainer kernelspec install`.

They are traitlets so that a kernelspec's `metadata.kernel_provisioner.config`
is applied (and type-checked) by jupyter_client's provisioner factory, and so
that `--help-all`-style tooling sees their help text. :func:`validate_options`
adds the checks a type cannot express, and is what `kernelspec install` calls
so that a bad value is refused at install, not at the first kernel start.
"""

from __future__ import annotations

import os
import re
from typing import Any

from traitlets import Bool, CaselessStrEnum, Float, HasTraits, Int, List, TraitError, Unicode

from ..runtime.errors import InvalidOption

__all__ = [
    "ContainerOptions",
    "validate_options",
    "parse_bytes",
    "parse_gpus",
    "parse_mount",
    "effective_docker_access",
    "resource_kwargs",
]

DEFAULT_ENV_ALLOWLIST = ["LANG", "LC_ALL", "LC_CTYPE", "TZ", "JPY_SESSION_NAME", "PYTHONUNBUFFERED"]


class ContainerOptions(HasTraits):
    """How a kernel's container is made. Each trait is a kernelspec provisioner option."""

    image = Unicode(
        "",
        help="Image the kernel runs in (a kernel image from `nbcontainer image build`, "
        "or any image with Python 3 and ipykernel).",
    ).tag(config=True)
    pull_policy = CaselessStrEnum(
        ["missing", "always", "never"],
        default_value="missing",
        help="When to pull the image: only when it is missing, before every start, or never.",
    ).tag(config=True, flag="--pull")
    cpus = Float(None, allow_none=True, help="CPU limit in cores (e.g. 1.5); none by default.").tag(
        config=True
    )
    memory = Unicode(
        None,
        allow_none=True,
        help="Memory limit, e.g. '512m' or '4g'; swap is not "
        "added on top. A kernel that exceeds it is killed and reported as OOMKilled.",
    ).tag(config=True)
    shm_size = Unicode(
        None,
        allow_none=True,
        help="Size of /dev/shm, e.g. '1g' (data loaders need more than Docker's 64m).",
    ).tag(config=True)
    gpus = Unicode(
        None,
        allow_none=True,
        help="GPUs to give the kernel: 'all', a count ('2') or "
        "device ids ('device=0,1'). Needs the NVIDIA container toolkit.",
    ).tag(config=True)
    mounts = List(
        Unicode(), help="Extra bind mounts as 'HOST_PATH:CONTAINER_PATH[:ro|rw]' (repeatable)."
    ).tag(config=True, flag="--mount", metavar="SRC:DST[:ro]")
    network_mode = Unicode(
        None,
        allow_none=True,
        help="Docker network mode or network name "
        "(default: the bridge). 'host' shares the host's network; the kernel "
        "then listens on 127.0.0.1 only.",
    ).tag(config=True, flag="--network")
    user = Unicode(
        "host",
        help="User the kernel runs as: 'host' (the host user's uid:gid, so files "
        "written to mounts are the user's, not root's), 'image' (the image's USER), "
        "or an explicit 'UID[:GID]'.",
    ).tag(config=True)
    mount_cwd = Bool(
        True,
        help="Mount the notebook's working directory at the same path and start the kernel there.",
    ).tag(config=True)
    docker_access = CaselessStrEnum(
        ["guarded", "raw", "none"],
        default_value="guarded",
        help="How the kernel reaches Docker (for %%remote_run, notebook runs and "
        "`nbcontainer image` inside the kernel). 'guarded': through nbcontainer's Docker API "
        "guard, mounted as /var/run/docker.sock, which forwards only what those need and "
        "refuses privileged containers, host namespaces, binds beyond the kernel's own "
        "mounts and containers the kernel did not make. 'raw': the daemon's own socket, "
        "which is root on the host (single-user machines only). 'none': no Docker.",
    ).tag(config=True)
    guard_max_containers = Int(
        16,
        help="With docker_access 'guarded': how many containers (created or running) the "
        "kernel may have at once. Their memory and CPU together stay within the kernel's own "
        "memory and cpus limits, when it has them.",
    ).tag(config=True)
    docker_socket = Bool(
        None,
        allow_none=True,
        help="Deprecated (kernelspecs written before docker_access): true is "
        "docker_access 'raw', false is 'none'.",
    ).tag(config=True)
    package_index = CaselessStrEnum(
        ["host", "none"],
        default_value="host",
        help="Where pip in the kernel finds packages: 'host' gives the kernel the host's "
        "effective pip settings (index URLs, find-links, trusted hosts, timeouts), proxy "
        "variables and CA bundle (read when the kernel starts; local paths they name are "
        "mounted read-only), so %pip install and --base builds work where the host's pip "
        "does; 'none' gives it no index (PIP_NO_INDEX), and they fail at once saying so.",
    ).tag(config=True)
    mount_ledger = Bool(
        True,
        help="Mount the user's nbcontainer data directory (the run ledger and "
        "run results) at the same path, so %%remote_run's records outlive the kernel's "
        "container and are shared with the host.",
    ).tag(config=True)
    env_allowlist = List(
        Unicode(),
        default_value=DEFAULT_ENV_ALLOWLIST,
        help="Names of the server's environment variables passed into the "
        "container (besides the kernelspec's own env). The server's whole "
        "environment is never passed. The flag adds to the default list "
        "(LANG, LC_ALL, LC_CTYPE, TZ, JPY_SESSION_NAME, PYTHONUNBUFFERED).",
    ).tag(config=True, flag="--env-allow", metavar="NAME")
    init = Bool(
        True,
        help="Run an init process (docker --init) as PID 1, so signals reach the "
        "kernel and zombies are reaped.",
    ).tag(config=True)
    transport_encryption = CaselessStrEnum(
        ["auto", "disabled", "required"],
        default_value="auto",
        help="CurveZMQ encryption of the kernel's sockets: 'auto' uses it when pyzmq, "
        "jupyter_client and the image's ipykernel all support it; 'required' refuses to start "
        "otherwise.",
    ).tag(config=True)
    pool_size = Int(
        1,
        help="Containers kept started and waiting, per launch shape (image, user, mounts, "
        "resources, network), so that a kernel starts by claiming one: the server that "
        "starts kernels keeps them, and removes them when it exits. 0 starts every kernel "
        "in a new container.",
    ).tag(config=True)
    docker_host = Unicode(
        None,
        allow_none=True,
        help="Run the kernel on another machine's Docker: 'ssh://[USER@]HOST[:PORT]' (your "
        "ssh's config, agent and known_hosts apply; host keys are always verified) or "
        "'tcp://HOST:2376' with TLS (docker_tls_dir). Its ports stay on that host's loopback "
        "and reach this server through one SSH connection per kernel; its working directory "
        "is a volume there, seeded from the notebook's directory. Default: this machine.",
    ).tag(config=True)
    ssh_config = Unicode(
        None,
        allow_none=True,
        help="With docker_host: an OpenSSH client config file to use instead of "
        "~/.ssh/config (ssh -F).",
    ).tag(config=True)
    ssh_host = Unicode(
        None,
        allow_none=True,
        help="With a tcp:// docker_host: where the kernel's channels go by SSH, "
        "'ssh://[USER@]HOST[:PORT]' (default: ssh:// to the same host). Its ports are on that "
        "host's loopback, which only SSH reaches.",
    ).tag(config=True)
    docker_tls_dir = Unicode(
        None,
        allow_none=True,
        help="With a tcp:// docker_host: the folder of ca.pem, cert.pem and key.pem "
        "(default: DOCKER_CERT_PATH, else ~/.docker). The daemon is always verified.",
    ).tag(config=True)
    workdir_max_size = Unicode(
        "2g",
        help="With docker_host: the most the notebook's directory may send to seed the "
        "kernel's working directory (what .gitignore and .dockerignore leave out is not sent).",
    ).tag(config=True)
    sync_back = Bool(
        False,
        help="With docker_host: at shutdown, bring back every file the kernel made or changed "
        "in its working directory (a file changed here meanwhile is kept; the kernel's "
        "version is written beside it as NAME.remote).",
    ).tag(config=True)
    startup_log_lines = Int(
        20, help="How many of the container's last log lines to report when the kernel dies."
    ).tag(config=True)

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(cls.class_traits(config=True))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(option: str, value: str) -> int:
    """'512m' -> 536870912. Raises InvalidOption for anything else."""
    m = _SIZE.match(str(value))
    if not m:
        raise InvalidOption(option, value, "expected a size such as '512m', '4g' or '1073741824'")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 6 * 1024**2:
        raise InvalidOption(option, value, "Docker needs at least 6m")
    return size


def parse_gpus(value: str) -> tuple[int, list[str]]:
    """'all' -> (-1, []), '2' -> (2, []), 'device=0,1' -> (0, ['0', '1'])."""
    v = value.strip()
    if v == "all":
        return -1, []
    if v.isdigit() and int(v) > 0:
        return int(v), []
    if v.startswith("device="):
        ids = [d.strip() for d in v[len("device=") :].split(",") if d.strip()]
        if ids:
            return 0, ids
    raise InvalidOption("gpus", value, "expected 'all', a positive count, or 'device=ID[,ID...]'")


def resource_kwargs(
    *,
    cpus: float | None = None,
    memory: str | None = None,
    gpus: str | None = None,
    shm_size: str | None = None,
) -> dict[str, Any]:
    """docker-py's create arguments for resource limits: one translation for kernels and runs.

    Memory gets no swap on top (the limit is the limit); GPUs become device requests.
    """
    out: dict[str, Any] = {}
    if cpus:
        out["nano_cpus"] = int(cpus * 1e9)
    if memory:
        out["mem_limit"] = out["memswap_limit"] = parse_bytes("memory", memory)
    if shm_size:
        out["shm_size"] = parse_bytes("shm_size", shm_size)
    if gpus:
        import docker.types

        count, ids = parse_gpus(gpus)
        out["device_requests"] = [
            docker.types.DeviceRequest(
                count=count if not ids else None, device_ids=ids or None, capabilities=[["gpu"]]
            )
        ]
    return out


def parse_mount(value: str) -> tuple[str, str, str]:
    """'SRC:DST[:ro|rw]' -> (SRC, DST, mode); both paths absolute."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise InvalidOption("mounts", value, "expected 'HOST_PATH:CONTAINER_PATH[:ro|rw]'")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidOption("mounts", value, f"mode must be 'ro' or 'rw', not {mode!r}")
    src = os.path.expanduser(src)
    if not os.path.isabs(src) or not os.path.isabs(dst):
        raise InvalidOption("mounts", value, "both paths must be absolute")
    return src, dst, mode


def effective_docker_access(docker_access: str, docker_socket: bool | None) -> str:
    """docker_access, or what an old kernelspec's docker_socket meant."""
    if docker_socket is None:
        return docker_access.lower()
    return "raw" if docker_socket else "none"


def parse_user(value: str) -> str | None:
    """'host' -> 'uid:gid', 'image' -> None, 'UID[:GID]' unchanged."""
    if value == "host":
        return f"{os.getuid()}:{os.getgid()}"
    if value == "image":
        return None
    if re.fullmatch(r"\d+(:\d+)?", value):
        return value
    raise InvalidOption("user", value, "expected 'host', 'image' or 'UID[:GID]'")


def _check_remote(opts: ContainerOptions, config: dict[str, Any], check_paths: bool) -> None:
    """What a kernel on another machine's Docker cannot have."""
    from .hosts import DockerHost

    host = DockerHost.parse(opts.docker_host or "")
    if opts.ssh_host is not None:
        channels = DockerHost.parse(opts.ssh_host)
        if host.scheme != "tcp" or channels.scheme != "ssh":
            raise InvalidOption(
                "ssh_host", opts.ssh_host, "an ssh:// host, for a tcp:// docker_host only"
            )
    if effective_docker_access(opts.docker_access, opts.docker_socket) == "guarded" and (
        "docker_access" in config or config.get("docker_socket") is not None
    ):
        raise InvalidOption(
            "docker_access",
            "guarded",
            "the Docker guard does not yet reach remote hosts (it is a socket this server "
            "serves, on this machine); use 'none' (the default with docker_host) or 'raw' "
            "(the remote daemon's own socket: root on that host)",
        )
    if opts.network_mode == "host":
        raise InvalidOption(
            "network_mode", "host", "a remote host's kernel is reached through published ports"
        )
    parse_size("workdir_max_size", opts.workdir_max_size)
    if check_paths and opts.ssh_config and not os.path.isfile(os.path.expanduser(opts.ssh_config)):
        raise InvalidOption("ssh_config", opts.ssh_config, "no such file on this host")


def _check_env_names(names: list[str]) -> None:
    bad_env = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
    if bad_env:
        raise InvalidOption("env_allowlist", bad_env[0], "not an environment variable name")


def parse_size(option: str, value: str) -> int:
    """'2g' -> bytes, for a cap (no minimum)."""
    m = _SIZE.match(str(value))
    if not m:
        raise InvalidOption(option, value, "expected a size such as '500m' or '2g'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def validate_options(config: dict[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """Check a provisioner config as a kernelspec would carry it; returns it normalised.

    Raises InvalidOption naming the first bad option.
    """
    unknown = sorted(set(config) - set(ContainerOptions.option_names()))
    if unknown:
        raise InvalidOption(
            unknown[0],
            config[unknown[0]],
            f"unknown option; known options: {', '.join(ContainerOptions.option_names())}",
        )
    try:
        opts = ContainerOptions(**config)
    except TraitError as exc:
        name = next((k for k in config if f"'{k}'" in str(exc)), "option")
        raise InvalidOption(name, config.get(name), str(exc).splitlines()[0]) from exc
    if not opts.image:
        raise InvalidOption("image", opts.image, "an image is required")
    if opts.cpus is not None and opts.cpus <= 0:
        raise InvalidOption("cpus", opts.cpus, "must be a positive number of cores")
    if opts.memory is not None:
        parse_bytes("memory", opts.memory)
    if opts.shm_size is not None:
        parse_bytes("shm_size", opts.shm_size)
    if opts.gpus is not None:
        parse_gpus(opts.gpus)
    for mount in opts.mounts:
        src, _, _ = parse_mount(mount)
        if check_paths and not os.path.exists(src):
            raise InvalidOption("mounts", mount, f"{src} does not exist on this host")
    if opts.network_mode == "none":
        raise InvalidOption("network_mode", "none", "a kernel without a network cannot be reached")
    parse_user(opts.user)
    if not 1 <= opts.guard_max_containers <= 1024:
        raise InvalidOption("guard_max_containers", opts.guard_max_containers, "must be 1 to 1024")
    if not 0 <= opts.pool_size <= 16:
        raise InvalidOption("pool_size", opts.pool_size, "must be 0 (no pool) to 16")
    if opts.startup_log_lines < 0:
        raise InvalidOption("startup_log_lines", opts.startup_log_lines, "must be >= 0")
    if opts.docker_host is not None:
        _check_remote(opts, config, check_paths)
    _check_env_names(opts.env_allowlist)
    return {k: getattr(opts, k) for k in config}

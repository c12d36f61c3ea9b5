"""`nbcontainer host check | pull`: remote Docker hosts (a kernelspec's docker_host).

``host check`` says what a host lacks before a kernel is tried there; ``pull`` copies a
file or folder from a remote kernel's working directory to the notebook's machine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.errors import ImageNotFound, NbcontainerError

if TYPE_CHECKING:
    from ..docker.engine import Engine

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["Check", "add_commands", "check_host"]

#: Free space below which the check warns (an image copy, runs' images, the volumes).
MIN_FREE_DISK = 5 * 1024**3


@dataclass(frozen=True)
class Check:
    what: str
    state: str  # "ok", "warn" or "missing"
    detail: str


def check_host(
    url: str, ssh_config: str | None, image: str | None, gpus: bool = False
) -> list[Check]:
    """What a kernel on `url` needs, each said: SSH, Docker, the image, GPUs, disk."""
    from ..docker.hosts import connection_for

    out: list[Check] = []
    conn = connection_for(url, ssh_config)
    try:
        engine = conn.engine
    except NbcontainerError as exc:
        return [Check("connection", "missing", getattr(exc, "reason", str(exc)))]
    out.append(Check("connection", "ok", f"{conn.host.destination} by SSH, host key verified"))
    info: dict[str, Any] = engine.api.info()
    out.append(
        Check(
            "docker",
            "ok",
            f"Docker {info.get('ServerVersion')}, {info.get('NCPU')} CPUs, "
            f"{int(info.get('MemTotal') or 0) / 1024**3:.1f} GiB memory",
        )
    )
    if image:
        out.append(_image_check(engine, image))
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    has_gpu = "nvidia" in runtimes or bool(info.get("CDISpecDirs"))
    out.append(
        Check(
            "gpu runtime",
            "ok" if has_gpu else ("missing" if gpus else "warn"),
            f"runtimes: {', '.join(runtimes)}"
            + ("" if has_gpu else "; no NVIDIA runtime: a kernelspec with gpus cannot start there"),
        )
    )
    out.append(_disk_check(engine, image, str(info.get("DockerRootDir") or "?")))
    return out


def _image_check(engine: Engine, image: str) -> Check:
    if engine.has_image(image):
        return Check("image", "ok", f"{image} is there")
    from ..docker.engine import get_engine

    try:
        local = get_engine().get_image(image)
        size = int(local.attrs.get("Size") or 0)
        return Check(
            "image",
            "warn",
            f"{image} is not there; the first kernel start copies it from this machine "
            f"(at most {size / 1e6:.0f} MB: only the layers the host lacks)",
        )
    except (ImageNotFound, NbcontainerError):
        return Check(
            "image",
            "missing",
            f"{image} is neither there nor here to copy; push it to a registry the host "
            "reaches, or build it here",
        )


def _disk_check(engine: Engine, image: str | None, root: str) -> Check:
    from ..docker import labels

    if not image or not engine.has_image(image):
        return Check("disk", "warn", f"not measured (no image there to probe {root} with)")
    code, said = engine.run_probe(
        image,
        ["python3", "-c", "import shutil; print(shutil.disk_usage('/').free)"],
        labels.container_labels(labels.ROLE_PROBE),
    )
    free = int(said.split()[-1]) if code == 0 and said.split()[-1:][0].isdigit() else -1
    if free < 0:
        return Check("disk", "warn", f"not measured ({said.strip()[-120:]})")
    state = "ok" if free >= MIN_FREE_DISK else "warn"
    return Check("disk", state, f"{free / 1024**3:.1f} GiB free under {root}")


def cmd_host_check(args: argparse.Namespace) -> int:
    checks = check_host(args.url, args.ssh_config, args.image, args.gpus)
    marks = {"ok": "ok", "warn": "warning", "missing": "MISSING"}
    width = max(len(c.what) for c in checks)
    for c in checks:
        print(f"{c.what.ljust(width)}  {marks[c.state]:<8} {c.detail}")
    return 1 if any(c.state == "missing" for c in checks) else 0


def cmd_pull(args: argparse.Namespace) -> int:
    from ..kernel.remote_host import find_record

    record = find_record(args.kernel)
    dest = Path(args.to).resolve() if args.to else Path(record.local_dir)
    pulled = record.pull(args.path, dest)
    print(f"pulled {args.path} ({pulled.bytes:,} bytes) from {record.docker_host} to {dest}")
    if pulled.skipped:
        print(f"left out (links are never followed): {', '.join(pulled.skipped)}")
    return 0


def add_commands(sub: _Commands) -> None:
    host = sub.add_parser("host", help="remote Docker hosts").add_subparsers(
        dest="sub", required=True
    )
    c = host.add_parser(
        "check",
        help="say what a Docker host lacks (SSH, Docker, the image, GPU runtime, disk)",
    )
    c.add_argument("url", help="ssh://[USER@]HOST[:PORT], as a kernelspec's docker_host")
    c.add_argument("--ssh-config", help="an OpenSSH client config (default: ~/.ssh/config)")
    c.add_argument("--image", help="the kernel image to look for there")
    c.add_argument("--gpus", action="store_true", help="a missing GPU runtime is a failure")
    c.set_defaults(func=cmd_host_check)
    p = sub.add_parser(
        "pull", help="copy a file or folder from a remote kernel's working directory here"
    )
    p.add_argument("kernel", help="the kernel's id (or its start)")
    p.add_argument("path", help="relative to the kernel's working directory")
    p.add_argument("--to", help="the folder it goes under (default: the notebook's directory)")
    p.set_defaults(func=cmd_pull)

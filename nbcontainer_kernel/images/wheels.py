"""Wheels for an image, resolved on the host so that no build needs a network.

The host's pip resolves the requirements for the *image's* interpreter and
platform (``pip download --python-version --platform --abi``), into a wheel
cache under the user's cache directory; a later build with the same
requirements resolves from that cache alone (offline). This package itself
travels as a wheel made here from its own files, so it does not matter
whether it is installed from a wheel, an sdist or in editable mode.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..runtime.errors import PackageIndexUnreachable, WheelResolutionError

__all__ = [
    "TargetPython",
    "PROBE_SNIPPET",
    "index_trouble",
    "resolution_budget",
    "resolve_wheels",
    "run_pip",
    "build_self_wheel",
    "pinned",
    "cache_dir",
]

# The deadline of the resolution under way (RemoteRun.resolve_timeout): every pip call
# of one dependency layer shares it.
_deadline: ContextVar[tuple[float, float] | None] = ContextVar(
    "nbcontainer_resolve_deadline", default=None
)


@contextlib.contextmanager
def resolution_budget(seconds: float | None) -> Iterator[None]:
    """Every pip call inside the block stops when `seconds` have passed in all."""
    token = _deadline.set((time.monotonic() + seconds, seconds) if seconds else None)
    try:
        yield
    finally:
        _deadline.reset(token)


# pip's words when it cannot talk to the index at all: not a missing wheel. Those in
# the first group never heal by retrying, so pip is stopped at the first; the others
# get pip's own first retry.
_NEVER_HEALS = [
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError|certificate verify failed"),
        "TLS verification failed: the index's certificate (or a proxy's) is signed by a CA "
        "that this Python does not trust",
    ),
    (re.compile(r"SSLError|SSL: "), "the TLS connection to the index failed"),
    (
        re.compile(r"ProxyError|Tunnel connection failed|407 Proxy Authentication"),
        "the proxy refused the connection",
    ),
]
_MAY_HEAL = [
    (
        re.compile(
            r"NewConnectionError|Failed to establish a new connection|Connection refused|"
            r"Name or service not known|Temporary failure in name resolution|"
            r"Network is unreachable|No route to host|nodename nor servname"
        ),
        "the index cannot be reached (the connection failed)",
    ),
    (
        re.compile(r"ConnectTimeoutError|ReadTimeoutError|timed out"),
        "the index did not answer in time",
    ),
]
# Only pip's own reports of a failed request are read (not package names or output).
_REPORT = re.compile(r"Retrying \(|Could not fetch URL|ERROR: |connection broken by")


def index_trouble(line: str) -> tuple[str, bool] | None:
    """(cause, heals_never) when a line of pip's output says the index cannot be used."""
    if not _REPORT.search(line):
        return None
    for pattern, cause in _NEVER_HEALS:
        if pattern.search(line):
            return cause, True
    for pattern, cause in _MAY_HEAL:
        if pattern.search(line):
            return cause, False
    return None


def _no_index() -> bool:
    return os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on")


def _index_named() -> str:
    from .package_index import describe_index

    if _no_index():
        return "none: PIP_NO_INDEX is set"
    return describe_index(os.environ.get("PIP_INDEX_URL"))


def _unreachable(cause: str) -> PackageIndexUnreachable:
    from ..config import in_container_kernel

    if in_container_kernel():
        fix = (
            "Give the kernel the host's package index settings (its kernelspec option "
            "package_index 'host', the default: `nbcontainer kernelspec install "
            "--package-index host ...`), or run without --base: the kernel's own container "
            "is then committed and no wheel is resolved."
        )
    else:
        fix = (
            "Check that pip on this host reaches it (`pip config list`; the proxy variables; "
            "PIP_CERT for a proxy's CA), or raise RemoteRun.resolve_timeout if it is slow."
        )
    return PackageIndexUnreachable(_index_named(), cause, fix)


def _remaining() -> float | None:
    budget = _deadline.get()
    if budget is None:
        return None
    left = budget[0] - time.monotonic()
    if left <= 0:
        raise _over_budget(budget[1])
    return left


def _over_budget(seconds: float) -> PackageIndexUnreachable:
    return _unreachable(
        f"resolving wheels took more than its budget of {seconds:g} s (RemoteRun.resolve_timeout)"
    )


def run_pip(args: Sequence[str], on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
    """`python -m pip ARGS`: (exit code, output). Stops pip and raises
    PackageIndexUnreachable as soon as its output says the index cannot be used (at the
    first failure that never heals, the second of any other), or when the resolution's
    budget runs out."""
    timeout = _remaining()
    output: list[str] = []
    trouble: dict[str, int] = {}
    over_budget = threading.Event()
    with subprocess.Popen(
        [sys.executable, "-m", "pip", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as pip:

        def stop_at_budget() -> None:
            over_budget.set()
            pip.kill()

        timer = threading.Timer(timeout, stop_at_budget) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            assert pip.stdout is not None
            for line in pip.stdout:
                output.append(line)
                found = index_trouble(line)
                if found is not None:
                    cause, never_heals = found
                    trouble[cause] = trouble.get(cause, 0) + 1
                    if never_heals or trouble[cause] >= 2:
                        pip.kill()
                        raise _unreachable(cause)
                if on_line is not None:
                    on_line(line.rstrip())
            pip.wait()
        finally:
            if timer is not None:
                timer.cancel()
    if over_budget.is_set():
        budget = _deadline.get()
        raise _over_budget(budget[1] if budget else 0)
    return pip.returncode, "".join(output)


# Printed by the image's interpreter: what pip needs to pick wheels for it.
PROBE_SNIPPET = (
    "import json,platform,sys;"
    "l=platform.libc_ver();"
    "print(json.dumps({'version':list(sys.version_info[:3]),'machine':platform.machine(),"
    "'libc':l[0],'libc_version':l[1],'implementation':sys.implementation.name}))"
)


@dataclass(frozen=True)
class TargetPython:
    """The interpreter and platform of an image, as pip needs them."""

    version: tuple[int, int, int]
    machine: str
    libc: str
    libc_version: str
    implementation: str = "cpython"

    @classmethod
    def from_probe(cls, output: str) -> TargetPython:
        data = json.loads(output.strip().splitlines()[-1])
        return cls(
            tuple(data["version"]),
            data["machine"],
            data["libc"],
            data["libc_version"],
            data.get("implementation", "cpython"),
        )

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def platforms(self) -> list[str]:
        m = self.machine
        if self.libc == "glibc":
            major, _, minor = self.libc_version.partition(".")
            top = int(minor) if major == "2" and minor.isdigit() else 17
            tags = [f"manylinux_2_{n}_{m}" for n in range(top, 16, -1)]
            tags.append(f"manylinux2014_{m}")
            if m in ("x86_64", "i686"):
                tags += [f"manylinux2010_{m}", f"manylinux1_{m}"]
            return tags
        # No glibc reported: assume musl (Alpine).
        return [f"musllinux_1_{n}_{m}" for n in (2, 1)]

    def describe(self) -> str:
        libc = f"{self.libc} {self.libc_version}" if self.libc else "musl"
        return f"Python {'.'.join(map(str, self.version))} on {self.machine} ({libc})"

    def cache_key(self) -> str:
        return f"{self.abi}-{self.platforms()[0]}"


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("nbcontainer")) / "wheels"


def pinned(names: list[str]) -> list[str]:
    """Pin each requirement to the host's installed version when there is one.

    Kernel images then hold the same ipykernel/cloudpickle as the host, which
    keeps pickles and protocol features (CurveZMQ) compatible.
    """
    out = []
    for name in names:
        if any(op in name for op in "=<>!~ @"):
            out.append(name)
            continue
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def resolve_wheels(
    requirements: list[str],
    target: TargetPython,
    dest: Path,
    on_line: Callable[[str], None] | None = None,
    *,
    no_deps: bool = False,
) -> list[Path]:
    """Download wheels for `requirements` (and their dependencies) for `target` into dest.

    Tries the local wheel cache alone first (offline); only when that cannot
    satisfy the requirements does pip ask the package index. New wheels are
    added to the cache.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cache = cache_dir() / target.cache_key()
    cache.mkdir(parents=True, exist_ok=True)
    base = [
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        ".".join(map(str, target.version)),
        "--implementation",
        "cp" if target.implementation == "cpython" else "pp",
        "--abi",
        target.abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        *[arg for p in target.platforms() for arg in ("--platform", p)],
        "-d",
        str(dest),
        *(["--no-deps"] if no_deps else []),
    ]
    code, _ = run_pip(base + ["--no-index", "--find-links", str(cache), *requirements])
    if code != 0:
        if on_line:
            on_line(
                f"resolving {len(requirements)} requirement(s) for {target.describe()} from the "
                "package index"
            )
        done = 0

        def progress(line: str) -> None:
            nonlocal done
            if line.startswith(("Saved", "File was already downloaded")):
                done += 1
                if on_line:
                    on_line(f"[{done}/{len(requirements)}] {line}")
            elif on_line and line.startswith(("Collecting", "Downloading")):
                on_line(line)

        code, output = run_pip(
            base + ["--find-links", str(cache), "--progress-bar", "off", *requirements],
            progress,
        )
        if code != 0:
            if _no_index() and "from versions: none" in output:
                raise _unreachable(
                    "pip has no package index here (PIP_NO_INDEX; a kernel's kernelspec "
                    "with package_index 'none')"
                )
            raise WheelResolutionError(requirements, target.describe(), output)
    elif on_line:
        on_line(f"resolved {len(requirements)} requirement(s) from the wheel cache (offline)")
    wheels = sorted(dest.glob("*.whl"))
    for w in wheels:
        if not (cache / w.name).exists():
            shutil.copy2(w, cache / w.name)
    return wheels


# Console scripts that only make sense inside an image.
IMAGE_ONLY_SCRIPTS = {
    "nbcontainer-run": "nbcontainer_kernel.runtime.main:console",
    # SageMaker may start `train` directly when it overrides the entrypoint.
    "train": "nbcontainer_kernel.runtime.main:console_train",
}


def wheel_record(files: dict[str, bytes], record_name: str) -> bytes:
    """A wheel's RECORD for `files` (member name -> content), naming itself last."""
    lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    lines.append(f"{record_name},,")
    return ("\n".join(lines) + "\n").encode()


def build_self_wheel(dest: Path) -> Path:
    """Make a wheel of this package from its own files (deterministic bytes).

    Fixed timestamps and sorted entries make the wheel identical while the
    code is unchanged, so Docker's layer cache holds across builds.
    """
    from .. import __version__

    pkg = Path(__file__).resolve().parent.parent  # the nbcontainer_kernel package
    name, dist = "nbcontainer_kernel", f"nbcontainer_kernel-{__version__}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(pkg.rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and path.suffix not in (".pyc", ".pyo")
        ):
            files[f"{name}/{path.relative_to(pkg).as_posix()}"] = path.read_bytes()
    # The installed distribution's entry points (backends, the provisioner, scripts), plus
    # the scripts that only make sense inside an image.
    groups: dict[str, dict[str, str]] = {"console_scripts": dict(IMAGE_ONLY_SCRIPTS)}
    try:
        for ep in importlib.metadata.distribution("nbcontainer-kernel").entry_points:
            groups.setdefault(ep.group, {})[ep.name] = ep.value
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        groups["console_scripts"]["nbcontainer"] = "nbcontainer_kernel.cli:main"
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: nbcontainer-kernel\nVersion: {__version__}\n"
        "Summary: nbcontainer-kernel's in-container runtime\n"
    ).encode()
    files[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: nbcontainer-kernel\nRoot-Is-Purelib: true\nTag: "
        b"py3-none-any\n"
    )
    files[f"{dist}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(eps.items())) + "\n"
        for group, eps in sorted(groups.items())
    ).encode()
    files[f"{dist}/RECORD"] = wheel_record(files, f"{dist}/RECORD")

    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"nbcontainer_kernel-{__version__}-py3-none-any.whl"
    with (
        tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf,
    ):
        for fname, data in files.items():
            info = zipfile.ZipInfo(fname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    Path(tmp.name).replace(out)
    return out

"""Run images: base -> dependencies (cached) -> snapshot (small, new each run).

* In a kernel on the host, the dependency layer is a virtualenv on the base
  holding the kernel's lock, installed from wheels resolved on the host (the
  build needs no network). Its tag is keyed by a hash of the base image id,
  the lock and the runtime, so runs and kernels with the same dependencies
  share it.
* In a containerized kernel (made by the provisioner), the dependency layer
  is the kernel's own container, committed: whatever was ``pip install``ed at
  run time is in it and nothing is resolved again.
* The snapshot layer copies the snapshot directory in (a build-context stream,
  never a bind mount) and sets the entrypoint and labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import labels as L
from .engine import Engine, build_context, get_engine
from .errors import ImageNotUsable, NbcontainerError, WheelResolutionError
from .images import VENV, dockerfile_labels, probe_python
from .snapshots.capture import MANIFEST, SNAPSHOT_DIR, Snapshot
from .snapshots.env import is_secret
from .wheels import TargetPython, pinned, resolve_wheels

__all__ = ["RunImage", "build_run_image", "default_base", "remove_run_image", "RUNTIME_FOR_CELLS",
           "RUNTIME_FOR_NOTEBOOKS"]


RUNTIME_FOR_CELLS = ["ipython", "cloudpickle"]
RUNTIME_FOR_NOTEBOOKS = ["ipykernel", "cloudpickle", "nbclient", "nbformat", "nbconvert"]
KERNEL_CONNECTION_FILE = "/tmp/nbcontainer-kernel.json"
# This package's code in a run image: its own small layer, on sys.path through a .pth file
# of the dependency layer, so a new version of it never invalidates the dependencies.
RUNTIME_DIR = "/opt/nbcontainer/runtime"
_DEPS_LAYOUT = 2  # bump when the dependency layer's recipe changes


@dataclass
class RunImage:
    tag: str
    image_id: str
    digest: str
    deps_image: str
    deps_reused: bool
    timings: dict[str, float] = field(default_factory=dict)
    skipped_requirements: list[str] = field(default_factory=list)


_python_cache: dict[str, TargetPython] = {}


def _target(engine: Engine, image: str) -> TargetPython:
    img = engine.get_image(image)
    if img.id not in _python_cache:
        _python_cache[img.id] = probe_python(engine, image)
    return _python_cache[img.id]


def default_base(engine: Engine, python: str) -> str:
    """NBCONTAINER_BASE_IMAGE, else python:X.Y-slim when present or pullable, else the
    offline-made nbcontainer/base:bookworm."""
    if os.environ.get("NBCONTAINER_BASE_IMAGE"):
        return os.environ["NBCONTAINER_BASE_IMAGE"]
    minor = ".".join(python.split(".")[:2])
    slim = f"python:{minor}-slim"
    if engine.has_image(slim):
        return slim
    with contextlib.suppress(NbcontainerError):  # no registry here: fall through to the offline base
        engine.pull(slim)
        return slim
    if engine.has_image("nbcontainer/base:bookworm"):
        return "nbcontainer/base:bookworm"
    raise ImageNotUsable(slim, "it is not present and cannot be pulled",
                         "Pass a base image (--base), set NBCONTAINER_BASE_IMAGE, or make the "
                         "offline base with scripts/base-image.sh.")


def _check_python(base: str, target: TargetPython, snap: Snapshot) -> None:
    kernel_minor = ".".join(snap.python.split(".")[:2])
    if target.minor != kernel_minor:
        raise ImageNotUsable(
            base, f"its Python is {target.minor} but the kernel's is {kernel_minor}",
            f"Pickles do not cross Python versions: use a base with Python {kernel_minor} "
            f"(e.g. python:{kernel_minor}-slim).")


# ----------------------------------------------------------------- deps layer
_DEPS_DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/nbcontainer-wheels
RUN {python} -m venv --without-pip --system-site-packages {venv} \\
 && {venv}/bin/python /tmp/nbcontainer-wheels/{pip_wheel}/pip install -q --no-index --no-deps \\
      --no-cache-dir --disable-pip-version-check /tmp/nbcontainer-wheels/*.whl \\
 && rm -rf /tmp/nbcontainer-wheels \\
 && echo {runtime} > "$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nbcontainer-runtime.pth" \\
 && printf '#!/bin/sh\\nexec {venv}/bin/python -m nbcontainer_kernel.runner.main "$@"\\n' > {venv}/bin/nbcontainer-run \\
 && printf '#!/bin/sh\\nexec {venv}/bin/python -m nbcontainer_kernel.runner.main train "$@"\\n' > {venv}/bin/train \\
 && chmod a+rx {venv}/bin/nbcontainer-run {venv}/bin/train \\
 && mkdir -p /opt/ml/model /opt/ml/output/data /opt/ml/input/config /opt/nbcontainer/snapshot \\
 && chmod -R a+rX /opt/nbcontainer && chmod 1777 /opt/ml /opt/ml/model /opt/ml/output /opt/ml/output/data
ENV PATH={venv}/bin:$PATH PYTHONUNBUFFERED=1
LABEL {labels}
"""


def _wheel_name(w: Path) -> str:
    return w.name.split("-")[0].lower().replace("_", "-")


def _resolve_one(req: str, target: TargetPython, dest: Path, say: Callable[[str], None]) -> bool:
    """One pinned requirement: its wheel, else the newest version the image's Python can
    use, else a wheel built here (pure Python only). False when none of these works."""
    name = req.split("==")[0]
    for attempt in (req, name):
        try:
            got = resolve_wheels([attempt], target, dest, None, no_deps=True)
        except WheelResolutionError:
            continue
        if attempt != req:
            version = next((w.name.split("-")[1] for w in got if _wheel_name(w) == name), "?")
            say(f"warning: {req} does not fit {target.describe()}; using {name} {version}")
        return True
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), req],
                           capture_output=True, text=True)
    return built.returncode == 0 and any(_wheel_name(w) == name and w.name.endswith("none-any.whl")
                                         for w in dest.glob("*.whl"))


def _resolve_lock(lock: list[str], runtime: list[str], target: TargetPython, dest: Path,
                  say: Callable[[str], None]) -> list[str]:
    """Wheels for every pinned distribution, then the runtime's; returns what had no wheel.

    The lock is exact (resolved without dependencies: it is complete); the
    runtime fills in what the kernel did not have.
    """
    skipped: list[str] = []
    if lock:
        try:
            resolve_wheels(lock, target, dest, say, no_deps=True)
        except WheelResolutionError:
            # One at a time, so one package without a wheel does not sink the rest. A pin
            # the image's Python cannot use (Requires-Python) falls back to the newest
            # version that it can; a package with no wheel at all is built here when it is
            # pure Python, else left out. Each is reported.
            for req in lock:
                if not _resolve_one(req, target, dest, say):
                    skipped.append(req)
                    say(f"warning: no wheel of {req} for {target.describe()}: left out of the image")
    have = {_wheel_name(w) for w in dest.glob("*.whl")}
    missing = [r for r in runtime if r.split("==")[0].lower().replace("_", "-") not in have]
    resolve_wheels(missing + ["pip"], target, dest, say)
    pins = {r.split("==")[0]: r.split("==")[1] for r in lock if "==" in r}
    # pip --no-deps installs every wheel it is given: keep one version per name, the lock's.
    by_name: dict[str, list[Path]] = {}
    for w in sorted(dest.glob("*.whl")):
        by_name.setdefault(_wheel_name(w), []).append(w)
    for name, wheels in by_name.items():
        keep = next((w for w in wheels if w.name.split("-")[1] == pins.get(name)), wheels[-1])
        for w in wheels:
            if w is not keep:
                w.unlink()
    return skipped


def _deps_image(engine: Engine, base: str, snap: Snapshot, target: TargetPython,
                runtime: list[str], say: Callable[[str], None]) -> tuple[str, bool, list[str]]:
    lock = [f"{n}=={v}" for n, v in sorted(snap.packages.items())]
    runtime_pins = pinned(runtime) + list(snap.requirements)
    with tempfile.TemporaryDirectory(prefix="nbcontainer-deps-") as tmp:
        # This package's own code is not in the key: it is a layer of its own above.
        key_src = json.dumps([_DEPS_LAYOUT, engine.get_image(base).id, lock, runtime_pins])
        key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
        tag = f"nbcontainer/deps:{key}"
        if engine.has_image(tag):
            say(f"dependencies: reusing {tag}")
            return tag, True, []
        say(f"dependencies: building {tag} ({len(lock)} pinned distributions)")
        wheels = Path(tmp) / "wheels"
        skipped = _resolve_lock(lock, runtime_pins, target, wheels, say)
        for w in wheels.glob("nbcontainer_kernel-*.whl"):  # it comes as the runtime layer
            w.unlink()
        pip_wheel = next(w.name for w in wheels.glob("pip-*.whl"))
        labels = {L.ROLE: L.ROLE_DEPS_IMAGE, L.DEPS_KEY: key, L.PYTHON: ".".join(map(str, target.version)),
                  L.OCI_BASE_NAME: base, L.OCI_CREATED: L.now_iso(), L.OCI_SOURCE: L.SOURCE_URL}
        dockerfile = _DEPS_DOCKERFILE.format(base=engine.get_image(base).id, python="python3", venv=VENV,
                                             pip_wheel=pip_wheel, labels=dockerfile_labels(labels),
                                             runtime=RUNTIME_DIR)
        ctx = build_context(dockerfile, {"wheels": wheels})
        engine.build(ctx, tag, on_line=say)
    return tag, False, skipped


def _committed_kernel(engine: Engine, snap: Snapshot, say: Callable[[str], None]) -> tuple[str, bool]:
    """Commit the containerized kernel's container as the dependency layer (cached per lock)."""
    kernel_id = snap.kernel["kernel_id"]
    containers = engine.containers({L.KERNEL_ID: kernel_id}, all=False)
    if not containers:
        raise ImageNotUsable(snap.kernel.get("image", "?"), f"the container of kernel {kernel_id} is gone",
                             "Restart the kernel, or pass a base image.")
    container = containers[0]
    lock_hash = hashlib.sha256(json.dumps(sorted(snap.packages.items())).encode()).hexdigest()[:12]
    tag = f"nbcontainer/kernel-commit:{container.id[:12]}-{lock_hash}"
    if engine.has_image(tag):
        say(f"dependencies: reusing the committed kernel {tag}")
        return tag, True
    # The kernel read its connection file long ago: remove it so its HMAC and Curve
    # keys never reach an image. (We are inside that kernel, so this is our file.)
    with contextlib.suppress(FileNotFoundError, PermissionError):  # already gone, or not ours
        os.unlink(KERNEL_CONNECTION_FILE)
    env_keys = [e.split("=", 1)[0] for e in (container.attrs["Config"].get("Env") or [])]
    changes = ["ENTRYPOINT []", "CMD []", "WORKDIR /", "USER 0", f"LABEL {L.ROLE}={L.ROLE_DEPS_IMAGE}",
               f"LABEL {L.COMMITTED_FROM}={container.id}",
               f"LABEL {L.KERNEL_ID}=", f"LABEL {L.OWNER_PID}=", f"LABEL {L.OWNER_HOST}="]
    changes += [f"ENV {k}=" for k in env_keys if is_secret(k) or k in (
        "NBCONTAINER_KERNEL_ID", "JPY_SESSION_NAME", "JPY_PARENT_PID")]
    say(f"dependencies: committing the kernel's container {container.name} as {tag}")
    repo, _, t = tag.partition(":")
    # No pause: the kernel is blocked in this very call, and freezing it buys nothing.
    container.commit(repository=repo, tag=t, changes=changes, pause=False)
    return tag, False


# -------------------------------------------------------------- snapshot layer
_RUN_DOCKERFILE = """\
FROM {deps}
{runtime_copy}COPY snapshot {snapshot_dir}
ENTRYPOINT ["{venv}/bin/nbcontainer-run"]
CMD []
LABEL {labels}
"""


def build_run_image(
    snap: Snapshot,
    *,
    base: str | None = None,
    tag: str | None = None,
    engine: Engine | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunImage:
    """Build the image that runs `snap` (cell or notebook mode), reusing the dependency layer."""
    engine = engine or get_engine()
    say = on_line or (lambda _l: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    skipped: list[str] = []
    runtime = RUNTIME_FOR_NOTEBOOKS if snap.mode == "notebook" else RUNTIME_FOR_CELLS
    if base is None and snap.kernel.get("kernel_id"):
        deps, reused = _committed_kernel(engine, snap, say)
        target = _target(engine, deps)
        _check_python(deps, target, snap)
    else:
        base = base or default_base(engine, snap.python)
        engine.ensure_image(base, "missing", say)
        target = _target(engine, base)
        _check_python(base, target, snap)
        deps, reused, skipped = _deps_image(engine, base, snap, target, runtime, say)
    timings["dependencies"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    labels = {
        L.ROLE: L.ROLE_RUN_IMAGE,
        L.SNAPSHOT_DIGEST: snap.digest,
        L.PYTHON: snap.python,
        L.MODE: snap.mode,
        L.SOURCE_NOTEBOOK: snap.notebook or "",
        L.PARAMETERS: json.dumps(snap.parameters, default=str),
        L.OCI_CREATED: L.now_iso(),
        L.OCI_TITLE: f"nbcontainer {snap.mode} run" + (f" of {Path(snap.notebook).name}" if snap.notebook else ""),
        L.OCI_SOURCE: snap.notebook or L.SOURCE_URL,
        L.OCI_BASE_NAME: base or snap.kernel.get("image", ""),
    }
    committed = base is None and bool(snap.kernel.get("kernel_id"))
    # A committed kernel has this package installed already (its kernel image's).
    runtime_copy = "" if committed else f"COPY runtime {RUNTIME_DIR}\n"
    dockerfile = _RUN_DOCKERFILE.format(deps=deps, snapshot_dir=SNAPSHOT_DIR, venv=VENV,
                                        labels=dockerfile_labels(labels), runtime_copy=runtime_copy)
    if not (snap.directory / MANIFEST).exists():
        snap.write_manifest()
    tag = tag or f"nbcontainer/run:{snap.digest[:16]}"
    trees = {"snapshot": snap.directory}
    if not committed:
        trees["runtime/nbcontainer_kernel"] = Path(__file__).resolve().parent
    image, _ = engine.build(build_context(dockerfile, trees), tag, on_line=say)
    timings["snapshot_layer"] = time.perf_counter() - t1
    return RunImage(tag, image.id, snap.digest, deps, reused, timings, skipped)


def remove_run_image(tag: str, engine: Engine | None = None) -> None:
    """Remove a run image (its dependency layer stays cached)."""
    (engine or get_engine()).remove_image(tag, force=True)

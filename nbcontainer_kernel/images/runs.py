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
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config
from ..docker import labels
from ..docker.archives import build_context
from ..docker.engine import Engine, get_engine
from ..docker.labels import kernel_containers
from ..runtime.contract import (
    DEFAULT_BASE_IMAGE,
    KERNEL_CONNECTION_FILE,
    RUNTIME_DIR,
    SNAPSHOT_DIR,
    VENV,
)
from ..runtime.errors import ImageNotUsable, NbcontainerError, WheelResolutionError
from ..snapshots.capture import MANIFEST, Snapshot
from ..snapshots.env import is_secret
from .kernel import dockerfile_labels, probe_python
from .wheels import TargetPython, pinned, resolve_wheels, run_pip

__all__ = [
    "RunImage",
    "build_run_image",
    "build_runtime_image",
    "package_digest",
    "default_base",
    "remove_run_image",
    "remove_run_images_of",
    "RUNTIME_FOR_CELLS",
    "RUNTIME_FOR_NOTEBOOKS",
]


RUNTIME_FOR_CELLS = ["ipython", "cloudpickle"]
RUNTIME_FOR_NOTEBOOKS = ["ipykernel", "cloudpickle", "nbclient", "nbformat", "nbconvert"]
_DEPS_LAYOUT = 4  # bump when the resolution changes (the recipe is in the key itself)


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
    if config.base_image():
        return str(config.base_image())
    minor = ".".join(python.split(".")[:2])
    slim = f"python:{minor}-slim"
    if engine.has_image(slim):
        return slim
    with contextlib.suppress(
        NbcontainerError
    ):  # no registry here: fall through to the offline base
        engine.pull(slim)
        return slim
    if engine.has_image(DEFAULT_BASE_IMAGE):
        return DEFAULT_BASE_IMAGE
    raise ImageNotUsable(
        slim,
        "it is not present and cannot be pulled",
        "Pass a base image (--base), set NBCONTAINER_BASE_IMAGE, or make the "
        "offline base with scripts/base-image.sh.",
    )


def _check_python(base: str, target: TargetPython, snap: Snapshot) -> None:
    kernel_minor = ".".join(snap.python.split(".")[:2])
    if target.minor != kernel_minor:
        raise ImageNotUsable(
            base,
            f"its Python is {target.minor} but the kernel's is {kernel_minor}",
            f"Pickles do not cross Python versions: use a base with Python {kernel_minor} "
            f"(e.g. python:{kernel_minor}-slim).",
        )


# ----------------------------------------------------------------- deps layer
_DEPS_DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/nbcontainer-wheels
RUN {python} -m venv --without-pip --system-site-packages {venv} \\
 && {venv}/bin/python /tmp/nbcontainer-wheels/{pip_wheel}/pip install -q --no-index --no-deps \\
      --no-cache-dir --disable-pip-version-check /tmp/nbcontainer-wheels/*.whl \\
 && rm -rf /tmp/nbcontainer-wheels \\
 && purelib="$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \\
 && echo {runtime} > "$purelib/nbcontainer-runtime.pth" \\
 && printf '#!/bin/sh\\nexec {venv}/bin/python -m nbcontainer_kernel.runtime.main "$@"\\n' \\
      > {venv}/bin/nbcontainer-run \\
 && printf '#!/bin/sh\\nexec {venv}/bin/python -m nbcontainer_kernel.runtime.main train "$@"\\n' \\
      > {venv}/bin/train \\
 && chmod a+rx {venv}/bin/nbcontainer-run {venv}/bin/train \\
 && mkdir -p /opt/ml/model /opt/ml/output/data /opt/ml/input/config /opt/nbcontainer/snapshot \\
 && chmod -R a+rX /opt/nbcontainer \\
 && chmod 1777 /opt/ml /opt/ml/model /opt/ml/output /opt/ml/output/data
ENV PATH={venv}/bin:$PATH PYTHONUNBUFFERED=1
LABEL {labels}
"""


def _wheel_name(w: Path) -> str:
    return _canon(w.name.split("-")[0])


def _resolve_one(
    req: str,
    target: TargetPython,
    dest: Path,
    say: Callable[[str], None],
    allow_unpinned: bool = False,
) -> bool:
    """One pinned requirement: its wheel; else, when the index has that very version but
    for another Python, the newest version of it that the image's Python accepts; else a
    wheel built here from that very version (pure Python only). False when none works.

    A pin the index does not have at all (a private package) is never replaced by the
    newest version of the same *name* from the index (someone else's, maybe: dependency
    confusion) unless allow_unpinned says so.
    """
    name, _, version = req.partition("==")
    try:
        resolve_wheels([req], target, dest, None, no_deps=True)
        return True
    except WheelResolutionError as exc:
        other_python = _needs_other_python(exc.output, name, version)
    if other_python or allow_unpinned:
        try:
            got = resolve_wheels([name], target, dest, None, no_deps=True)
        except WheelResolutionError:
            got = []
        if got:
            found = next((w.name.split("-")[1] for w in got if _wheel_name(w) == _canon(name)), "?")
            why = "needs another Python than" if other_python else "has no wheel for"
            say(f"warning: {req} {why} {target.describe()}; using {name} {found}")
            return True
    with tempfile.TemporaryDirectory(prefix="nbcontainer-wheel-") as tmp:
        # Within the resolution's budget, and stopped at once if the index cannot be used.
        code, _ = run_pip(["wheel", "-q", "--no-deps", "-w", tmp, req])
        if code != 0:
            return False
        for wheel in Path(tmp).glob("*.whl"):
            # Only a pure-Python wheel, and only when the image's Python is one it accepts.
            if (
                _wheel_name(wheel) == _canon(name)
                and wheel.name.endswith("none-any.whl")
                and _fits(wheel, target)
            ):
                shutil.move(str(wheel), dest / wheel.name)
                return True
    return False


def _unresolved_pin(pip_output: str, pins: list[str]) -> str | None:
    """The pin pip says it found no distribution for, if it names one of `pins`."""
    by_name = {_canon(p.partition("==")[0]): p for p in pins}
    for m in re.finditer(
        r"(?:No matching distribution found for|satisfies the requirement) ([^\s(]+)", pip_output
    ):
        name = re.split(r"[=<>!~\[;]", m.group(1), maxsplit=1)[0]
        if _canon(name) in by_name:
            return by_name[_canon(name)]
    return None


def _needs_other_python(pip_output: str, name: str, version: str) -> bool:
    """Whether pip says the index (or the wheel cache) has `name` `version`, but for
    another Python than the target's. pip says it in one of two ways."""
    for line in pip_output.splitlines():
        # Versions seen on the index, each with the Pythons it requires.
        if "require a different python version" in line and any(
            part.strip().startswith(f"{version} ") for part in line.split(":", 1)[-1].split(";")
        ):
            return True
        m = re.search(
            r"Package '([^']+)' requires a different Python", line
        )  # the pinned file itself
        if m and _canon(m.group(1)) == _canon(name):
            return True
    return False


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _fits(wheel: Path, target: TargetPython) -> bool:
    """Whether a wheel's Requires-Python admits the target's version."""
    import zipfile

    from packaging.specifiers import SpecifierSet

    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = zf.read(meta).decode("utf-8", "replace") if meta else ""
    for line in text.splitlines():
        if line.lower().startswith("requires-python:"):
            return SpecifierSet(line.split(":", 1)[1].strip()).contains(
                ".".join(map(str, target.version))
            )
        if not line.strip():
            break
    return True


def _resolve_lock(
    lock: list[str],
    runtime: list[str],
    target: TargetPython,
    dest: Path,
    say: Callable[[str], None],
    allow_unpinned: bool = False,
) -> list[str]:
    """Wheels for every pinned distribution, then the runtime's; returns what had no wheel.

    The lock is exact (resolved without dependencies: it is complete); the
    runtime fills in what the kernel did not have.
    """
    skipped: list[str] = []
    # The lock in one pip call; each pin pip names as unresolvable is set aside and the
    # rest tried again, so one odd package costs one more call, not one call per package.
    remaining, odd = list(lock), []
    for _ in range(20):
        if not remaining:
            break
        try:
            resolve_wheels(remaining, target, dest, say, no_deps=True)
            remaining = []
        except WheelResolutionError as exc:
            culprit = _unresolved_pin(exc.output, remaining)
            if culprit is None:
                break
            odd.append(culprit)
            remaining.remove(culprit)
    # Then one at a time: a pin the image's Python cannot use (Requires-Python) falls back
    # to the newest version that it can; a package with no wheel at all is built here when
    # it is pure Python, else left out. Each is reported.
    one_by_one = odd + remaining
    for done, req in enumerate(one_by_one, start=1):
        say(f"[{done}/{len(one_by_one)}] resolving {req} on its own")
        if not _resolve_one(req, target, dest, say, allow_unpinned):
            skipped.append(req)
            say(
                f"warning: no wheel of {req} for {target.describe()}: left out of the image"
                + (
                    ""
                    if allow_unpinned
                    else " (--allow-unpinned takes the newest version "
                    "of that name from the package index)"
                )
            )
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


def _build_deps_image(
    engine: Engine,
    base: str,
    snap: Snapshot,
    target: TargetPython,
    runtime: list[str],
    say: Callable[[str], None],
    allow_unpinned: bool = False,
) -> tuple[str, bool, list[str]]:
    """The dependency layer for this lock on this base: reused when it exists, else built."""
    lock = [f"{n}=={v}" for n, v in sorted(snap.packages.items())]
    runtime_pins = pinned(runtime) + list(snap.requirements)
    with tempfile.TemporaryDirectory(prefix="nbcontainer-deps-") as tmp:
        # This package's own code is not in the key: it is a layer of its own above.
        key_src = json.dumps(
            [_DEPS_LAYOUT, _DEPS_DOCKERFILE, engine.get_image(base).id, lock, runtime_pins]
        )
        key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
        tag = f"nbcontainer/deps:{key}"
        if engine.has_image(tag):
            say(f"dependencies: reusing {tag}")
            return tag, True, []
        say(f"dependencies: building {tag} ({len(lock)} pinned distributions)")
        wheels = Path(tmp) / "wheels"
        skipped = _resolve_lock(lock, runtime_pins, target, wheels, say, allow_unpinned)
        for w in wheels.glob("nbcontainer_kernel-*.whl"):  # it comes as the runtime layer
            w.unlink()
        pip_wheel = next(w.name for w in wheels.glob("pip-*.whl"))
        image_labels = {
            labels.ROLE: labels.ROLE_DEPS_IMAGE,
            labels.DEPS_KEY: key,
            labels.PYTHON: ".".join(map(str, target.version)),
            labels.OCI_BASE_NAME: base,
            labels.OCI_CREATED: labels.now_iso(),
            labels.OCI_SOURCE: labels.SOURCE_URL,
        }
        dockerfile = _DEPS_DOCKERFILE.format(
            base=engine.get_image(base).id,
            python="python3",
            venv=VENV,
            pip_wheel=shlex.quote(pip_wheel),
            labels=dockerfile_labels(image_labels),
            runtime=RUNTIME_DIR,
        )
        ctx = build_context(dockerfile, {"wheels": wheels})
        engine.build(ctx, tag, on_line=say)
    return tag, False, skipped


# Paths that must never reach an image made from a kernel's container: credentials
# under a home directory, IPython's history (every typed cell), snapshot work
# directories, and the kernel's connection file. The kernel's /tmp (also its HOME)
# is a tmpfs, which a commit does not see; this list catches what lands elsewhere.
_NEVER_COMMITTED = [
    re.compile(p)
    for p in (
        r"/\.aws(/|$)",
        r"/\.azure(/|$)",
        r"/\.config/gcloud(/|$)",
        r"/\.ssh(/|$)",
        r"/\.kube/config$",
        r"/\.docker/config\.json$",
        r"/\.netrc$",
        r"/\.git-credentials$",
        r"/\.pypirc$",
        r"/\.pgpass$",
        r"/\.cache/[^/]+/token$",
        r"/\.huggingface/token$",
        r"/\.config/[^/]+/(token|credentials)[^/]*$",
        r"/history\.sqlite",
        r"/nbcontainer-snapshot-",
        r"/nbcontainer-notebook-",
        r"\.ipython/profile_[^/]+/(history|security)",
    )
]


def _forbidden_paths(changes: list[dict[str, Any]] | None) -> list[str]:
    """Paths of a container's changes (docker diff) that must not be committed."""
    paths = [c.get("Path", "") for c in changes or [] if c.get("Kind") in (0, 1)]  # modified, added
    return sorted(
        p
        for p in paths
        if any(rx.search(p) for rx in _NEVER_COMMITTED) or p == KERNEL_CONNECTION_FILE
    )


def _commit_kernel(engine: Engine, snap: Snapshot, say: Callable[[str], None]) -> tuple[str, bool]:
    """Commit the containerized kernel's container as the dependency layer (cached per lock).

    Fails closed: when the connection file, a credential file, IPython's history or a
    snapshot directory is in the container's filesystem, nothing is committed.
    """
    kernel_id = snap.kernel["kernel_id"]
    containers = kernel_containers(engine, kernel_id, all=False)
    if not containers:
        raise ImageNotUsable(
            snap.kernel.get("image", "?"),
            f"the container of kernel {kernel_id} is gone",
            "Restart the kernel, or pass a base image.",
        )
    container = containers[0]
    lock_hash = hashlib.sha256(json.dumps(sorted(snap.packages.items())).encode()).hexdigest()[:12]
    tag = f"nbcontainer/kernel-commit:{container.id[:12]}-{lock_hash}"
    if engine.has_image(tag):
        say(f"dependencies: reusing the committed kernel {tag}")
        return tag, True
    # The kernel read its connection file at start (and the extension removed it): make
    # sure, so that its HMAC and Curve keys never reach an image. We are that kernel.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(KERNEL_CONNECTION_FILE)
    forbidden = _forbidden_paths(engine.container_changes(container.id))
    if forbidden:
        raise ImageNotUsable(
            snap.kernel.get("image", "?"),
            "the kernel's container holds files that must never be in an image: "
            + ", ".join(forbidden[:8]),
            "Remove them (or keep them under /tmp, which is never committed), or pass --base IMAGE "
            "to build the run image from a base instead of this kernel.",
        )
    info = engine.inspect(container.id) or {}
    env = [e.partition("=") for e in ((info.get("Config") or {}).get("Env") or [])]
    changes = [
        "ENTRYPOINT []",
        "CMD []",
        "WORKDIR /",
        "USER 0",
        f"LABEL {labels.ROLE}={labels.ROLE_DEPS_IMAGE}",
        f"LABEL {labels.COMMITTED_FROM}={container.id}",
        f"LABEL {labels.KERNEL_ID}=",
        f"LABEL {labels.POOL_SHAPE}=",
        f"LABEL {labels.OWNER_PID}=",
        f"LABEL {labels.OWNER_HOST}=",
    ]
    # Secrets by name or value, and the kernel's own identity, leave the image's config.
    changes += [
        f"ENV {k}="
        for k, _, v in env
        if is_secret(k, v)
        or k
        in (
            "NBCONTAINER_KERNEL_ID",
            "JPY_SESSION_NAME",
            "JPY_PARENT_PID",
            "NBCONTAINER_CONNECTION_FILE",
        )
    ]
    say(f"dependencies: committing the kernel's container {container.name} as {tag}")
    repo, _, t = tag.partition(":")
    # No pause: the kernel is blocked in this very call, and freezing it buys nothing.
    engine.commit(container.id, repo, t, changes)
    return tag, False


# --------------------------------------------------------------- runtime layer
_RUNTIME_DOCKERFILE = """\
FROM {deps}
{runtime_copy}ENTRYPOINT ["{venv}/bin/nbcontainer-run"]
CMD []
LABEL {labels}
"""

_RUN_DOCKERFILE = """\
FROM {runtime}
COPY snapshot {snapshot_dir}
LABEL {labels}
"""

_package_digest: str | None = None


def _package_tree() -> Path:
    return Path(__file__).resolve().parent.parent


def package_digest() -> str:
    """A digest of this package's code as a runtime layer copies it (once per process)."""
    global _package_digest
    if _package_digest is None:
        h = hashlib.sha256()
        root = _package_tree()
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _package_digest = h.hexdigest()
    return _package_digest


def build_runtime_image(
    snap: Snapshot,
    *,
    base: str | None = None,
    engine: Engine | None = None,
    on_line: Callable[[str], None] | None = None,
    allow_unpinned: bool = False,
) -> RunImage:
    """The image a snapshot runs on: its dependency layer (cached per lock), this package's
    code (cached per digest) and the runner as its entry point. `%%remote_run --local`
    copies the snapshot into a container of it (no build per run); :func:`build_run_image`
    adds the snapshot as a layer, so both run on the same files.

    A pinned distribution with no wheel for the image is left out and reported
    (RunImage.skipped_requirements); allow_unpinned takes the newest version of the same
    name from the package index instead.
    """
    engine = engine or get_engine()
    say = on_line or (lambda _l: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    skipped: list[str] = []
    runtime = RUNTIME_FOR_NOTEBOOKS if snap.mode == "notebook" else RUNTIME_FOR_CELLS
    committed = base is None and bool(snap.kernel.get("kernel_id"))
    if committed:
        deps, reused = _commit_kernel(engine, snap, say)
        target = _target(engine, deps)
        _check_python(deps, target, snap)
    else:
        base = base or default_base(engine, snap.python)
        engine.ensure_image(base, "missing", say)
        target = _target(engine, base)
        _check_python(base, target, snap)
        deps, reused, skipped = _build_deps_image(
            engine, base, snap, target, runtime, say, allow_unpinned
        )
    timings["dependencies"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    # A committed kernel has this package installed already (its kernel image's).
    code = "" if committed else package_digest()
    key = hashlib.sha256(json.dumps([engine.get_image(deps).id, code]).encode()).hexdigest()[:20]
    tag = f"nbcontainer/runtime:{key}"
    if not engine.has_image(tag):
        image_labels = {
            labels.ROLE: labels.ROLE_RUNTIME_IMAGE,
            labels.DEPS_KEY: key,
            labels.PYTHON: ".".join(map(str, target.version)),
            labels.OCI_BASE_NAME: base or snap.kernel.get("image", ""),
            labels.OCI_CREATED: labels.now_iso(),
            labels.OCI_SOURCE: labels.SOURCE_URL,
        }
        dockerfile = _RUNTIME_DOCKERFILE.format(
            deps=deps,
            venv=VENV,
            labels=dockerfile_labels(image_labels),
            runtime_copy="" if committed else f"COPY runtime {RUNTIME_DIR}\n",
        )
        trees = {} if committed else {"runtime/nbcontainer_kernel": _package_tree()}
        engine.build(build_context(dockerfile, trees), tag, on_line=say)
    timings["runtime_layer"] = time.perf_counter() - t1
    image = engine.get_image(tag)
    return RunImage(tag, image.id, snap.digest, deps, reused, timings, skipped)


# -------------------------------------------------------------- snapshot layer
def build_run_image(
    snap: Snapshot,
    *,
    base: str | None = None,
    tag: str | None = None,
    engine: Engine | None = None,
    on_line: Callable[[str], None] | None = None,
    allow_unpinned: bool = False,
) -> RunImage:
    """Build the image that runs `snap` (cell or notebook mode): its runtime image
    (:func:`build_runtime_image`, cached) with the snapshot as one more layer."""
    engine = engine or get_engine()
    say = on_line or (lambda _l: None)
    runtime = build_runtime_image(
        snap, base=base, engine=engine, on_line=say, allow_unpinned=allow_unpinned
    )
    t1 = time.perf_counter()
    image_labels = {
        labels.ROLE: labels.ROLE_RUN_IMAGE,
        labels.SNAPSHOT_DIGEST: snap.digest,
        labels.PYTHON: snap.python,
        labels.MODE: snap.mode,
        labels.SOURCE_NOTEBOOK: snap.notebook or "",
        labels.PARAMETERS: json.dumps(_shown_parameters(snap.parameters), default=str),
        labels.OCI_CREATED: labels.now_iso(),
        labels.OCI_TITLE: f"nbcontainer {snap.mode} run"
        + (f" of {Path(snap.notebook).name}" if snap.notebook else ""),
        labels.OCI_SOURCE: snap.notebook or labels.SOURCE_URL,
        labels.OCI_BASE_NAME: base or snap.kernel.get("image", ""),
    }
    dockerfile = _RUN_DOCKERFILE.format(
        runtime=runtime.tag, snapshot_dir=SNAPSHOT_DIR, labels=dockerfile_labels(image_labels)
    )
    if not (snap.directory / MANIFEST).exists():
        snap.write_manifest()
    tag = tag or f"nbcontainer/run:{snap.digest[:16]}"
    image, _ = engine.build(
        build_context(dockerfile, {"snapshot": snap.directory}), tag, on_line=say
    )
    timings = {**runtime.timings, "snapshot_layer": time.perf_counter() - t1}
    return RunImage(
        tag,
        image.id,
        snap.digest,
        runtime.deps_image,
        runtime.deps_reused,
        timings,
        runtime.skipped_requirements,
    )


def _shown_parameters(parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter defaults for the image's label, through the secret filter."""
    return [
        {**p, "default": "<not shown: looks like a secret>"}
        if is_secret(str(p.get("name", "")), str(p.get("default", "")))
        else p
        for p in parameters
    ]


def remove_run_image(tag: str, engine: Engine | None = None) -> None:
    """Remove a run image (its dependency layer stays cached)."""
    (engine or get_engine()).remove_image(tag, force=True)


def remove_run_images_of(rows: list[dict[str, Any]], engine: Engine | None = None) -> None:
    """Remove the run images that ledger rows name: the image each ran (a pushed
    ``repo@sha256:...`` included) and its local snapshot tag. Dependency layers stay."""
    engine = engine or get_engine()
    for row in rows:
        digest = row.get("snapshot_digest") or ""
        for ref in (row.get("image"), f"nbcontainer/run:{digest[:16]}" if digest else None):
            if ref:
                remove_run_image(ref, engine)

"""Kernel images: any base with Python 3, plus ipykernel and this package's runtime.

A kernel image is built in two stages so that nothing a build copies in stays
behind: the first stage installs the host-resolved wheels into a virtualenv
at /opt/nbcontainer/venv (with the base's own site-packages visible, so a
user's image keeps its packages), the second copies only that virtualenv onto
the base. The build is skipped when an image with the same inputs digest
already carries the tag.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docker.models.images import Image

from ..docker import labels
from ..docker.archives import build_context
from ..docker.engine import Engine
from ..runtime.contract import VENV
from ..runtime.errors import CommandNotFound, ImageNotUsable
from .wheels import PROBE_SNIPPET, TargetPython, build_self_wheel, pinned, resolve_wheels

__all__ = [
    "KernelImageFacts",
    "KernelImageResult",
    "build_kernel_image",
    "list_kernel_images",
    "inspect_kernel_image",
    "probe_python",
    "RUNTIME_REQUIREMENTS",
]

# What the in-container side needs: the kernel, the serializers of snapshots and results
# (DataFrames travel as Parquet), and docker-py, so that %%remote_run works from inside
# a containerized kernel.
RUNTIME_REQUIREMENTS = [
    "ipykernel",
    "cloudpickle",
    "pandas",
    "pyarrow",
    "docker",
    "platformdirs",
    "psutil",
    "ipywidgets",
]


@dataclass(frozen=True)
class KernelImageFacts:
    """What the provisioner needs to know about an image before running a kernel in it."""

    python: str
    ipykernel: str
    curve: bool


@dataclass(frozen=True)
class KernelImageResult:
    tag: str
    image_id: str
    built: bool  # False when an up-to-date image was already there
    target: TargetPython


def probe_python(engine: Engine, image: str, python: str = "python3") -> TargetPython:
    """Ask an image's interpreter for its version and platform."""
    probe_labels = labels.container_labels(labels.ROLE_PROBE)
    try:
        code, out = engine.run_probe(image, [python, "-c", PROBE_SNIPPET], probe_labels)
    except CommandNotFound as exc:
        raise ImageNotUsable(
            image,
            f"it has no `{python}` on its PATH",
            "Use a base image with Python 3 (e.g. python:3.11-slim).",
        ) from exc
    if code != 0:
        raise ImageNotUsable(
            image,
            f"`{python}` failed to start: {out.strip()[-300:]}",
            "Use a base image with a working Python 3.",
        )
    target = TargetPython.from_probe(out)
    if target.version[0] != 3 or target.version[1] < 8:
        raise ImageNotUsable(
            image, f"its Python is {target.minor}", "Kernel images need Python 3.8 or newer."
        )
    return target


_facts_cache: dict[str, KernelImageFacts] = {}

_KERNEL_PROBE = (
    "import json,sys,ipykernel,ipykernel.kernelapp as k;"
    "print(json.dumps({'python':'%d.%d.%d'%sys.version_info[:3],'ipykernel':ipykernel.__version__,"
    "'curve':hasattr(k.IPKernelApp,'curve_publickey')}))"
)


def inspect_kernel_image(engine: Engine, image: str, python: str = "python3") -> KernelImageFacts:
    """Facts about an image's kernel: from its labels when nbcontainer built it, else a probe.

    A probe runs once per image id and process. Raises ImageNotUsable when the
    image has no Python or no ipykernel.
    """
    img = engine.get_image(image)
    known = img.labels or {}
    if known.get(labels.ROLE) == labels.ROLE_KERNEL_IMAGE and labels.IPYKERNEL in known:
        return KernelImageFacts(
            known.get(labels.PYTHON, "?"),
            known[labels.IPYKERNEL],
            known.get(labels.CURVE) == "true",
        )
    if img.id in _facts_cache:
        return _facts_cache[img.id]
    hint = (
        f"Build a kernel image from it: `nbcontainer image build --base {image} "
        f"--tag {image.split(':')[0]}-kernel`."
    )
    try:
        code, out = engine.run_probe(
            image, [python, "-c", _KERNEL_PROBE], labels.container_labels(labels.ROLE_PROBE)
        )
    except CommandNotFound as exc:
        raise ImageNotUsable(image, f"it has no `{python}` on its PATH", hint) from exc
    if code != 0:
        reason = (
            "ipykernel is not installed in it"
            if "No module named" in out
            else f"its Python cannot import ipykernel: {out.strip()[-300:]}"
        )
        raise ImageNotUsable(image, reason, hint)
    data = json.loads(out.strip().splitlines()[-1])
    facts = KernelImageFacts(data["python"], data["ipykernel"], bool(data["curve"]))
    _facts_cache[img.id] = facts
    return facts


def _wheel_supports_curve(wheels: list[Path]) -> tuple[str, bool]:
    """(ipykernel version, whether its kernelapp reads CurveZMQ keys) from its wheel."""
    for w in wheels:
        if w.name.lower().startswith("ipykernel-"):
            with zipfile.ZipFile(w) as zf:
                src = zf.read("ipykernel/kernelapp.py").decode("utf-8", "replace")
            return w.name.split("-")[1], "curve_publickey" in src
    return "?", False


_DOCKERFILE = """\
# syntax: the classic builder's; made by nbcontainer image build
FROM {base} AS deps
LABEL {stage_label}=true
COPY wheels/deps /tmp/nbcontainer-wheels
RUN {python} -m venv --without-pip --system-site-packages {venv} \\
 && {venv}/bin/python /tmp/nbcontainer-wheels/{pip_wheel}/pip install \\
      --no-index --no-cache-dir -q --disable-pip-version-check \\
      --find-links /tmp/nbcontainer-wheels {requirements} \\
 && chmod -R a+rX /opt/nbcontainer

FROM {base}
# No chmod in this stage: it would copy the whole virtualenv into one more layer.
COPY --from=deps /opt/nbcontainer /opt/nbcontainer
COPY wheels/self /tmp/nbcontainer-self
RUN {venv}/bin/python -m pip install --no-index --no-deps --no-cache-dir \\
      --disable-pip-version-check /tmp/nbcontainer-self/*.whl \\
 && rm -rf /tmp/nbcontainer-self
ENV PATH={venv}/bin:$PATH PYTHONUNBUFFERED=1
LABEL {labels}
"""


def kernel_dockerfile(
    base_id: str, python: str, pip_wheel: str, requirements: list[str], image_labels: dict[str, str]
) -> str:
    """The kernel image's Dockerfile; what comes from the user is shell-quoted."""
    return _DOCKERFILE.format(
        base=base_id,
        python=shlex.quote(python),
        venv=VENV,
        stage_label=_STAGE,
        pip_wheel=shlex.quote(pip_wheel),
        requirements=" ".join(shlex.quote(r) for r in requirements),
        labels=dockerfile_labels(image_labels),
    )


def build_kernel_image(
    engine: Engine,
    base: str,
    tag: str,
    *,
    python: str = "python3",
    requirements: list[str] | None = None,
    force: bool = False,
    pull_policy: str = "missing",
    on_line: Callable[[str], None] | None = None,
) -> KernelImageResult:
    """Build a kernel image FROM `base`, tagged `tag`.

    Wheels for ipykernel, this package's runtime and `requirements` are
    resolved on the host for the base's Python and platform, then copied
    into the build context: the build itself needs no network.
    """
    say = on_line or (lambda _line: None)
    say(f"base image {base}")
    base_img = engine.ensure_image(base, pull_policy, say)
    target = probe_python(engine, base, python)
    say(f"base has {target.describe()}")
    reqs = pinned(RUNTIME_REQUIREMENTS + ["pip"]) + list(requirements or [])

    with tempfile.TemporaryDirectory(prefix="nbcontainer-build-") as tmp:
        ctx = Path(tmp)
        deps = resolve_wheels(reqs, target, ctx / "wheels" / "deps", say)
        self_wheel = build_self_wheel(ctx / "wheels" / "self")
        pip_wheel = next((w.name for w in deps if w.name.lower().startswith("pip-")), None)
        if pip_wheel is None:  # pragma: no cover - pip is always among the requirements
            raise ImageNotUsable(base, "no pip wheel could be resolved", "Check the package index.")
        ipykernel_version, curve = _wheel_supports_curve(deps)
        from .. import __version__

        image_labels = {
            labels.ROLE: labels.ROLE_KERNEL_IMAGE,
            labels.VERSION: __version__,
            labels.PYTHON: ".".join(map(str, target.version)),
            labels.IPYKERNEL: ipykernel_version,
            labels.CURVE: "true" if curve else "false",
            labels.BASE: base,
            labels.BASE_ID: base_img.id,
            labels.OCI_TITLE: f"nbcontainer kernel image ({tag})",
            labels.OCI_SOURCE: labels.SOURCE_URL,
            labels.OCI_VERSION: __version__,
            labels.OCI_BASE_NAME: base,
        }
        recipe = kernel_dockerfile(base_img.id, python, pip_wheel, reqs, image_labels)
        # The inputs digest: everything that decides the image's content, nothing
        # that changes with every build (the creation time).
        digest = hashlib.sha256()
        digest.update(recipe.encode())
        for w in sorted(deps) + [self_wheel]:
            digest.update(w.name.encode())
            digest.update(hashlib.sha256(w.read_bytes()).digest())
        inputs = digest.hexdigest()[:32]

        previous = engine.get_image(tag) if engine.has_image(tag) else None
        if not force and previous is not None:
            existing = previous
            if (existing.labels or {}).get(labels.INPUTS) == inputs:
                say(f"{tag} is up to date ({existing.short_id})")
                return KernelImageResult(tag, existing.id, False, target)

        # Last, so that only this cheap step misses Docker's cache on a rebuild.
        last = {labels.INPUTS: inputs, labels.OCI_CREATED: labels.now_iso()}
        dockerfile = recipe + f"LABEL {dockerfile_labels(last)}\n"
        image, log = engine.build(
            build_context(dockerfile, {"wheels": ctx / "wheels"}), tag, on_line=say
        )
        _remove_old_stages(engine, log)
    if previous is not None and previous.id != image.id:
        # The tag moved: drop the image it left behind unless something still uses it.
        engine.remove_unused_image(previous.id)
    return KernelImageResult(tag, image.id, True, target)


# Marks the first (install) stage of a kernel image build: Docker keeps it, untagged,
# as the cache of the next build; older ones are removed after each build.
_STAGE = labels.PREFIX + "kernel-build-stage"


def _remove_old_stages(engine: Engine, build_log: list[str]) -> None:
    used = {
        line.split("--->", 1)[1].strip() for line in build_log if line.strip().startswith("--->")
    }
    for image in engine.images({_STAGE: "true"}):
        if not image.tags and image.short_id.split(":")[-1][:12] not in used:
            engine.remove_unused_image(image.id)


def dockerfile_labels(image_labels: dict[str, str]) -> str:
    """The arguments of one LABEL instruction (one step, instead of one per label).

    Values are JSON strings with `$` escaped, so Docker substitutes nothing in them.
    """
    return " \\\n      ".join(f"{k}={_label_value(v)}" for k, v in sorted(image_labels.items()))


def _label_value(value: str) -> str:
    return json.dumps(value).replace("$", "\\$")


def list_kernel_images(engine: Engine) -> list[Image]:
    return engine.images({labels.ROLE: labels.ROLE_KERNEL_IMAGE})

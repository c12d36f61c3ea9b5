"""Install, list and remove kernelspecs that run kernels with DockerProvisioner.

A kernelspec is the template in ``kernelspecs/python/kernel.json`` with the
provisioner's options as ``metadata.kernel_provisioner.config``. Options are
validated here, so a bad value is refused at install rather than at the
first kernel start.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..docker.engine import Engine
from ..docker.options import validate_options
from ..runtime.errors import ImageNotFound, InvalidOption, KernelSpecError

__all__ = ["PROVISIONER_NAME", "InstalledSpec", "install", "list_specs", "remove", "render"]

PROVISIONER_NAME = "nbcontainer-docker"
_NAME = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


@dataclass(frozen=True)
class InstalledSpec:
    name: str
    display_name: str
    image: str
    resource_dir: str
    config: dict[str, Any]


def _template() -> dict[str, Any]:
    text = (
        resources.files("nbcontainer_kernel.kernel")
        .joinpath("kernelspecs/python/kernel.json")
        .read_text()
    )
    spec: dict[str, Any] = json.loads(text)
    return spec


def render(
    image: str,
    display_name: str | None = None,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    *,
    check_paths: bool = True,
) -> dict[str, Any]:
    """The kernel.json for a kernel in `image` with provisioner `options` (validated)."""
    config = validate_options({"image": image, **(options or {})}, check_paths=check_paths)
    spec = _template()
    spec["display_name"] = display_name or f"Python ({image})"
    spec["metadata"]["kernel_provisioner"]["config"] = config
    spec["env"] = dict(env or {})
    return spec


def install(
    image: str,
    name: str,
    display_name: str | None = None,
    *,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    user: bool = True,
    prefix: str | None = None,
    engine: Engine | None = None,
    check_image: bool = True,
) -> str:
    """Write a kernelspec; returns its directory.

    `options` are DockerProvisioner options (see ``nbcontainer kernelspec
    install --help``). With check_image, the image must exist on the engine
    (or be pullable), so a typo is caught now.
    """
    if not _NAME.match(name):
        raise InvalidOption(
            "name", name, "kernelspec names may hold only letters, digits, '.', '_' and '-'"
        )
    spec = render(image, display_name, options, env)
    if check_image:
        try:
            _check_image(image, spec["metadata"]["kernel_provisioner"]["config"], engine)
        except ImageNotFound as exc:
            raise ImageNotFound(
                image,
                "check the name, or pass --no-check-image for an image "
                "that a later pull will provide",
            ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(
            tmp, kernel_name=name, user=user, prefix=prefix
        )


def _check_image(image: str, config: dict[str, Any], engine: Engine | None) -> None:
    """The image is where the kernel will run, or (a remote host's) here, to be copied."""
    host = config.get("docker_host")
    if host:
        from ..docker.hosts import connection_for

        remote = connection_for(
            host, config.get("ssh_config"), config.get("docker_tls_dir"), config.get("ssh_host")
        )
        if remote.engine.has_image(image):
            return
    (engine or Engine.connect()).get_image(image)


def list_specs() -> list[InstalledSpec]:
    """Every installed kernelspec that uses this provisioner."""
    out = []
    ksm = KernelSpecManager()
    for name, entry in sorted(ksm.get_all_specs().items()):
        spec = entry.get("spec", {})
        prov = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
        if prov.get("provisioner_name") == PROVISIONER_NAME:
            config = prov.get("config") or {}
            out.append(
                InstalledSpec(
                    name,
                    spec.get("display_name", name),
                    config.get("image", "?"),
                    entry.get("resource_dir", ""),
                    config,
                )
            )
    return out


def remove(name: str) -> str:
    """Remove a kernelspec made by this package; refuses others."""
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel as exc:
        raise KernelSpecError(
            f"No kernelspec named {name!r}; `nbcontainer kernelspec list` shows them."
        ) from exc
    prov = (spec.metadata or {}).get("kernel_provisioner") or {}
    if prov.get("provisioner_name") != PROVISIONER_NAME:
        raise KernelSpecError(
            f"Kernelspec {name!r} does not use {PROVISIONER_NAME}; "
            "remove it with `jupyter kernelspec remove`."
        )
    return ksm.remove_kernel_spec(name)

"""Finding and removing containers whose owner is gone.

Every container nbcontainer makes carries its owner's identity in labels
(:mod:`nbcontainer_kernel.docker.labels`). When a Jupyter server is killed with
SIGKILL its kernels' containers keep running; the next provisioner start, or
`nbcontainer gc`, removes them. A server that re-attaches to a kernel
(`load_provisioner_info`) records itself as the container's adopter, so the
container is not swept while the adopter lives.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

from ..runtime.errors import EngineError
from . import labels
from .engine import Engine

__all__ = ["Orphan", "find_orphans", "sweep", "adopt", "release", "remove_made_by_kernel"]

log = logging.getLogger(__name__)


def _adoption_dir() -> Path:
    return Path(jupyter_runtime_dir()) / "nbcontainer" / "adopted"


def adopt(container_id: str) -> None:
    """Record this process as the owner of a container it did not create."""
    d = _adoption_dir()
    d.mkdir(parents=True, exist_ok=True)
    owner = labels.Owner.current()
    (d / f"{container_id}.json").write_text(json.dumps(owner.__dict__))


def release(container_id: str) -> None:
    (_adoption_dir() / f"{container_id}.json").unlink(missing_ok=True)


def _adopter(container_id: str) -> labels.Owner | None:
    try:
        data = json.loads((_adoption_dir() / f"{container_id}.json").read_text())
        return labels.Owner(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Orphan:
    container_id: str
    name: str
    role: str
    owner: str
    status: str


def _outlives_its_owner(c: Any) -> bool:
    """A --no-wait run goes on without its kernel; %remote_attach collects it."""
    return bool(c.labels.get(labels.DETACHED) == "true" and c.status == "running")


def remove_made_by_kernel(engine: Engine, container_id: str) -> int:
    """Remove what a containerized kernel's own process made (its warm runner pool, its
    runs), once the kernel's container is gone: a kernel killed rather than shut down has
    no exit to remove them itself. Called by the provisioner's cleanup."""
    removed = 0
    # Such a container names its owner by the kernel container's host name: its short id.
    for c in engine.containers({labels.OWNER_CONTAINER: container_id[:12]}):
        if not _outlives_its_owner(c):
            removed += engine.remove(c.id)
    return removed


def find_orphans(engine: Engine) -> list[Orphan]:
    """Containers made on this host whose owner (and adopter, if any) is gone."""
    orphans = []
    for c in engine.containers([labels.OWNER_PID]):
        if _outlives_its_owner(c):
            continue
        owner_container = c.labels.get(labels.OWNER_CONTAINER)
        if owner_container:
            if engine.inspect(owner_container) is not None:
                continue
        else:
            owner = labels.Owner.from_labels(c.labels)
            if owner is None or not owner.is_local() or owner.is_alive():
                continue
        adopter = _adopter(c.id)
        if adopter is not None and adopter.is_alive():
            continue
        who = (
            f"container {owner_container}"
            if owner_container
            else f"pid {c.labels.get(labels.OWNER_PID)} on {c.labels.get(labels.OWNER_HOST)}"
        )
        orphans.append(Orphan(c.id, c.name, c.labels.get(labels.ROLE, "?"), who, c.status))
    return orphans


def sweep(engine: Engine, dry_run: bool = False, images: bool = False) -> list[Orphan]:
    """Remove orphaned containers; returns what was (or, dry_run, would be) removed.

    images: also remove every run image (``%%remote_run`` keeps them for ``--rerun``)
    that no container uses, and all but the newest dependency images.
    """
    orphans = find_orphans(engine)
    for o in orphans:
        if not dry_run:
            engine.remove(o.container_id)
            release(o.container_id)
            log.info("removed orphaned %s container %s (%s)", o.role, o.name, o.owner)
    if not dry_run and images:
        remove_run_images(engine)
        remove_old_dependency_images(engine)
    if not dry_run:
        remove_commits_of_gone_containers(engine)
        remove_orphaned_volumes(engine)
    if not dry_run:
        # SageMaker local mode's shared network (sagemaker-local backend), once no job uses it.
        for network in engine.network_ids({labels.ROLE: "sagemaker-local-network"}):
            engine.remove_network_if_idle(network)
    # Adoption records of containers that no longer exist are litter too.
    if not dry_run and _adoption_dir().is_dir():
        for f in _adoption_dir().glob("*.json"):
            if engine.inspect(f.stem) is None:
                f.unlink(missing_ok=True)
    return orphans


def _drop(engine: Engine, image: Any) -> int:
    """Remove an image's tags (non-forced); an image a container or child image uses stays."""
    removed = 0
    for tag in image.tags or [image.id]:
        with contextlib.suppress(EngineError):  # still in use: it stays
            engine.remove_image(tag)
            removed += 1
    return removed


def remove_orphaned_volumes(engine: Engine) -> int:
    """Working-directory volumes of remote kernels whose server is gone (a volume in use
    by a container is kept: Docker refuses to remove it)."""
    removed = 0
    for volume in engine.volumes([labels.OWNER_PID]):
        owner = labels.Owner.from_labels(volume.get("Labels") or {})
        if owner is not None and owner.is_local() and not owner.is_alive():
            removed += engine.remove_volume(str(volume["Name"]))
    return removed


def remove_commits_of_gone_containers(engine: Engine, container_id: str | None = None) -> int:
    """Remove images committed from kernel containers that no longer exist (or from
    `container_id`); an image a run image still builds on goes with that run image."""
    selector = {labels.COMMITTED_FROM: container_id} if container_id else [labels.COMMITTED_FROM]
    return sum(
        _drop(engine, image)
        for image in engine.images(selector)
        if container_id is not None
        or engine.inspect(image.labels.get(labels.COMMITTED_FROM, "")) is None
    )


def remove_run_images(engine: Engine) -> int:
    """Remove run images that no container uses (a run image is cheap to make again)."""
    return sum(
        _drop(engine, image) for image in engine.images({labels.ROLE: labels.ROLE_RUN_IMAGE})
    )


def remove_old_dependency_images(engine: Engine, keep: int = 3) -> int:
    """Keep the `keep` newest runtime layers and dependency layers (one per lock); remove
    older unused ones (runtime layers first: each is a child of a dependency layer)."""
    removed = 0
    for role in (labels.ROLE_RUNTIME_IMAGE, labels.ROLE_DEPS_IMAGE):
        layers = [
            i
            for i in engine.images({labels.ROLE: role})
            if not (i.labels or {}).get(labels.COMMITTED_FROM)
        ]
        layers.sort(key=lambda i: i.attrs.get("Created", ""), reverse=True)
        removed += sum(_drop(engine, image) for image in layers[keep:])
    return removed

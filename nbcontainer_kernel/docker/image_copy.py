"""Copy an image from one engine to another, sending only the layers the other lacks.

For a remote host that cannot pull (no registry, or none it can reach). The source
engine's ``docker save`` archive is rewritten without the layers whose chain the target
already holds, and loaded there: Docker's loader looks a layer up by its chain before it
reads the layer's file, so a layer present on the target needs no bytes. What the target
holds is read from its images' ``RootFS.Layers`` (a chain is present when some image
there starts with the same layers).
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ..runtime.errors import EngineError, ImageNotFound
from .engine import Engine, translate_errors

__all__ = ["CopyReport", "copy_image", "shared_layers"]

Progress = Callable[[int, int], None]  # (bytes sent, bytes to send)


@dataclass(frozen=True)
class CopyReport:
    image: str
    layers: int  # the image's layers
    sent_layers: int  # those the target lacked
    sent_bytes: int  # bytes of those layers (uncompressed, as Docker keeps them)


def _diff_ids(info: dict[str, Any]) -> list[str]:
    return list((info.get("RootFS") or {}).get("Layers") or [])


def shared_layers(wanted: list[str], present: list[list[str]]) -> int:
    """How many of `wanted`'s first layers some image in `present` starts with too."""
    best = 0
    for layers in present:
        n = 0
        for a, b in zip(wanted, layers, strict=False):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best


def copy_image(
    source: Engine, target: Engine, ref: str, on_progress: Progress | None = None
) -> CopyReport:
    """Make `ref` present on `target` from `source`. Raises ImageNotFound when `source`
    lacks it too, EngineError when the target refuses the archive."""
    with translate_errors(f"inspect image {ref}", image=ref):
        info = source.api.inspect_image(ref)
    wanted = _diff_ids(info)
    with translate_errors("list the target's images"):
        present = [
            _diff_ids(target.api.inspect_image(i["Id"])) for i in target.api.images(all=False)
        ]
    have = shared_layers(wanted, present)
    with tempfile.TemporaryDirectory(prefix="nbc-image-copy-") as tmp:
        saved = os.path.join(tmp, "saved.tar")
        with open(saved, "wb") as out, translate_errors(f"save image {ref}", image=ref):
            for chunk in source.api.get_image(ref, chunk_size=1 << 20):
                out.write(chunk)
        with tarfile.open(saved) as tar:
            manifest = json.load(tar.extractfile("manifest.json") or _missing("manifest.json"))
            entry = next((m for m in manifest if ref in (m.get("RepoTags") or [])), manifest[0])
            skip = set(entry["Layers"][:have])
            members = [m for m in tar.getmembers() if m.name not in skip]
            total = sum(m.size for m in members if m.name.endswith("layer.tar"))
            sent = _load(target, tar, members, total, on_progress)
    with translate_errors(f"inspect image {ref} on the target", image=ref):
        loaded = target.api.inspect_image(ref)
    if _diff_ids(loaded) != wanted:
        raise EngineError(f"copy image {ref}", "the target's copy has other layers than the source")
    return CopyReport(ref, len(wanted), len(wanted) - have, sent)


def _missing(name: str) -> IO[bytes]:
    raise ImageNotFound(name, "the saved image has no manifest")


def _load(
    target: Engine,
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    total: int,
    on_progress: Progress | None,
) -> int:
    """Stream a new archive of `members` into the target's `docker load`."""
    read_fd, write_fd = os.pipe()
    sent = 0
    failure: list[BaseException] = []

    def write() -> None:
        nonlocal sent
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as out:
                for m in members:
                    data = tar.extractfile(m) if m.isfile() else None
                    out.addfile(m, data)
                    if m.name.endswith("layer.tar"):
                        sent += m.size
                        if on_progress:
                            on_progress(sent, total)
        except BaseException as exc:  # the reader's end closed (the load failed), and the like
            failure.append(exc)

    writer = threading.Thread(target=write, name="nbc-image-copy", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe, translate_errors("load the image on the target"):
        answer = target.api.load_image(pipe)
        for event in answer or []:
            if isinstance(event, dict) and event.get("error"):
                raise EngineError("load the image on the target", str(event["error"]))
    writer.join()
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise EngineError("copy the image", str(failure[0]))
    if on_progress and total == 0:
        on_progress(0, 0)
    return sent

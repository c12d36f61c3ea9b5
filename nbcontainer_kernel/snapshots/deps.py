"""The kernel's dependencies: a lock of installed distributions, and local installs.

Distributions from an index travel as `name==version` pins; editable and
local installs (whose source is on this machine only) travel as source
trees: their top-level import packages are copied into the snapshot.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.snapshot import python_version

__all__ = ["Dependencies", "capture_dependencies", "python_version"]

# Never pinned: the image provides them (pip in its venv, this package from its own wheel).
_PROVIDED = {"pip", "setuptools", "wheel", "nbcontainer-kernel", "distribute"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LocalPackage:
    name: str
    version: str
    source: str  # where it was found (the editable project, or a local file)
    packages: list[str]  # top-level import names copied


@dataclass
class Dependencies:
    python: str
    lock: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    local: list[LocalPackage] = field(default_factory=list)

    def lock_lines(self) -> list[str]:
        return [f"{n}=={v}" for n, v in sorted(self.lock.items())]


def _direct_url(dist: md.Distribution) -> dict[str, Any] | None:
    try:
        text = dist.read_text("direct_url.json")
    except Exception:
        return None
    return json.loads(text) if text else None


def _top_level(dist: md.Distribution) -> list[str]:
    names: set[str] = set()
    text = dist.read_text("top_level.txt")
    if text:
        names |= {ln.strip() for ln in text.splitlines() if ln.strip()}
    for f in dist.files or []:
        parts = f.parts
        if (
            len(parts) >= 2
            and parts[1] == "__init__.py"
            and not parts[0].endswith((".dist-info", ".data"))
        ):
            names.add(parts[0])
        elif len(parts) == 1 and f.suffix == ".py":
            names.add(f.stem)
    if not names:  # editable installs list only a .pth/finder: fall back to the dist's name
        names.add(_canon(dist.metadata["Name"]).replace("-", "_"))
    return sorted(n for n in names if not n.startswith("_") or n == "__editable__")


# Reading every distribution's metadata is most of a snapshot's time (0.1-0.3 s for a few
# hundred): kept per process until an import path directory changes (an install or an
# uninstall adds or removes a .dist-info directory there).
_captured: dict[Any, tuple[Dependencies, dict[str, Path]]] = {}


def _paths_state() -> tuple[tuple[str, int], ...]:
    """The modification times of the directories distributions are installed in."""
    state = []
    for entry in sys.path:
        if os.path.basename(entry) not in ("site-packages", "dist-packages"):
            continue
        try:
            state.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            continue
    return tuple(state)


def capture_dependencies(*, in_image: bool = False) -> tuple[Dependencies, dict[str, Path]]:
    """The lock and the local packages' import roots (import name -> its directory or file).

    in_image: the kernel runs in a container that will be committed, so what was
    installed from a local wheel is in the image already; only local source
    directories (editable installs, often on a mount a commit does not see) travel.
    """
    key = (in_image, _paths_state())
    if key not in _captured:
        _captured.clear()
        _captured[key] = _capture(in_image)
    return copy.deepcopy(_captured[key])


def _capture(in_image: bool) -> tuple[Dependencies, dict[str, Path]]:
    deps = Dependencies(python_version())
    roots: dict[str, Path] = {}
    seen: set[str] = set()
    for dist in md.distributions():
        meta = dist.metadata
        name = meta["Name"] if "Name" in meta else None  # noqa: SIM401 - a broken .dist-info has none; PackageMetadata has no get
        if not name:
            continue
        canon = _canon(name)
        if canon in seen or canon in _PROVIDED:
            continue
        seen.add(canon)
        direct = _direct_url(dist) or {}
        is_local = bool(direct) and (
            "dir_info" in direct
            or (str(direct.get("url", "")).startswith("file:") and not in_image)
        )
        if not is_local:
            deps.lock[canon] = dist.version
            continue
        copied = []
        for top in _top_level(dist):
            if top == "__editable__":
                continue
            spec = importlib.util.find_spec(top)
            if spec is None or spec.origin in (None, "built-in", "frozen"):
                continue
            origin = Path(spec.origin)
            roots[top] = origin.parent if origin.name == "__init__.py" else origin
            copied.append(top)
        deps.local.append(LocalPackage(name, dist.version, str(direct.get("url", "")), copied))
    return deps, roots

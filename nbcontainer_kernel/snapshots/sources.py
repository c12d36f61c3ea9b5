"""Local code: the working directory's modules and sys.path entries under it.

Only source travels (``*.py`` and the files beside it in packages), bounded
by a size cap, and filtered by ``.nbcontainerignore`` (glob patterns, one per
line, like a simple .gitignore) on top of a default ignore list.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import SourcesTooLarge

__all__ = ["SourceTree", "collect_sources", "DEFAULT_IGNORE", "SourcesTooLarge"]

DEFAULT_IGNORE = [
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    "*.pyc",
    "node_modules",
    ".ipynb_checkpoints",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    "build",
    "dist",
    "*.egg-info",
    ".DS_Store",
]
IGNORE_FILE = ".nbcontainerignore"
# What a source tree may hold besides Python: package data small enough to be code.
_CODE_SUFFIXES = {
    ".py",
    ".pyi",
    ".json",
    ".yaml",
    ".yml",
    ".toml",
    ".cfg",
    ".ini",
    ".txt",
    ".sql",
    ".pyx",
    ".pxd",
    ".so",
    ".pth",
}


@dataclass
class SourceTree:
    root: Path  # the working directory
    files: list[Path]  # relative to root
    size: int
    path_entries: list[str]  # sys.path entries (relative to root) to restore


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(part, pat) for part in parts for pat in patterns) or any(
        fnmatch.fnmatch(rel, pat) for pat in patterns
    )


def collect_sources(
    cwd: Path | None = None, *, max_bytes: int = 50 * 1024**2, path: list[str] | None = None
) -> SourceTree:
    """The code under cwd that the kernel can import: cwd's modules and packages, and
    every sys.path entry inside cwd (e.g. ``src/``)."""
    root = (cwd or Path.cwd()).resolve()
    collector = _Collector(root, _ignore_patterns(root))
    entries = _entries_inside(root, path if path is not None else sys.path)
    # Each entry holds importable modules (top-level *.py) and packages (dirs with __init__.py).
    for entry in sorted(entries):
        collector.add_entry(root / entry)
    sizes = collector.sizes
    files = [Path(p) for p in sorted(sizes)]
    total = sum(sizes.values())
    if total > max_bytes:
        raise SourcesTooLarge(total, max_bytes, sorted(sizes.items(), key=lambda kv: -kv[1]))
    return SourceTree(root, files, total, sorted(e for e in entries if e != "."))


def _ignore_patterns(root: Path) -> list[str]:
    patterns = list(DEFAULT_IGNORE)
    ignore_file = root / IGNORE_FILE
    if ignore_file.exists():
        patterns += [
            ln.strip().rstrip("/")
            for ln in ignore_file.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
        ]
    return patterns


def _entries_inside(root: Path, path: list[str]) -> set[str]:
    """ "." and each import path entry inside `root` (not a site-packages), relative to it."""
    entries = {"."}
    for p in path:
        resolved = Path(p or ".").resolve()
        inside = resolved == root or root in resolved.parents
        if inside and "site-packages" not in resolved.parts:
            entries.add(resolved.relative_to(root).as_posix())
    return entries


class _Collector:
    """The code files found so far (relative path -> size)."""

    def __init__(self, root: Path, patterns: list[str]) -> None:
        self.root, self.patterns = root, patterns
        self.sizes: dict[str, int] = {}
        self._visited: set[Path] = set()

    def _inside(self, path: Path) -> bool:
        # A symlink is followed only when it points inside the tree (never to ~/.aws).
        target = path.resolve()
        return target == self.root or self.root in target.parents

    def _ignored(self, path: Path) -> bool:
        return _ignored(path.relative_to(self.root).as_posix(), self.patterns)

    def add(self, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        if rel not in self.sizes and not self._ignored(path) and self._inside(path):
            self.sizes[rel] = path.stat().st_size

    def add_package(self, pkg: Path) -> None:
        real = pkg.resolve()
        if real in self._visited or not self._inside(pkg):  # a symlink loop, or a way out
            return
        self._visited.add(real)
        for child in sorted(pkg.iterdir()):
            if self._ignored(child):
                continue
            if child.is_dir() and (child / "__init__.py").exists():
                self.add_package(child)
            elif child.is_file() and child.suffix in _CODE_SUFFIXES:
                self.add(child)

    def add_entry(self, base: Path) -> None:
        if not base.is_dir():
            return
        for child in sorted(base.iterdir()):
            if self._ignored(child):
                continue
            if child.is_file() and child.suffix == ".py":
                self.add(child)
            elif child.is_dir() and (child / "__init__.py").exists():
                self.add_package(child)

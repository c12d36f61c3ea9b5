"""A snapshot as a run image reads it: the manifest format, and the digest that proves its
files are the ones the host captured.

Ships into run images (standard library only); taking a snapshot is the host's
(:mod:`nbcontainer_kernel.snapshots.capture`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .contract import SNAPSHOT_DIR

__all__ = [
    "Snapshot",
    "VariableRecord",
    "SNAPSHOT_DIR",
    "MANIFEST",
    "FORMAT",
    "now_iso",
    "python_version",
]


def python_version() -> str:
    """This interpreter's version, X.Y.Z (a snapshot's `python`)."""
    return ".".join(map(str, sys.version_info[:3]))


def now_iso() -> str:
    """Now, in UTC, as every timestamp this project writes (manifests, labels)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class VariableRecord:
    """One name of the namespace: how it travels, or why it does not."""

    name: str
    kind: str  # "value", "module" or "skipped"
    type: str
    size: int = 0
    serializer: str | None = None
    files: list[str] = field(default_factory=list)
    skipped: str | None = None
    module: str | None = None
    note: str | None = None


@dataclass
class Snapshot:
    """A kernel's state captured for a run: files under `directory`, described by its manifest."""

    directory: Path
    cell: str
    mode: str = "cell"
    variables: list[VariableRecord] = field(default_factory=list)
    env_names: list[str] = field(default_factory=list)
    env_secrets_dropped: list[str] = field(default_factory=list)
    python: str = field(default_factory=python_version)
    packages: dict[str, str] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)  # resolved with their dependencies
    local_packages: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    source_paths: list[str] = field(default_factory=list)
    notebook: str | None = None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    #: A pipeline's notebooks in order (their names; files pipeline/NN.ipynb), each run
    #: with the run's parameters; empty for one notebook (notebook.ipynb).
    pipeline: list[str] = field(default_factory=list)
    kernel: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    digest: str = ""
    _owned: bool = False
    # Files being hashed (path -> (size when queued, its chunks' digests to come)).
    _pending: dict[str, tuple[int, list[Future[bytes]]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # -------------------------------------------------------------- views
    def manifest(self) -> dict[str, Any]:
        pending, self._pending = self._pending, {}  # futures are not data (nor copyable)
        try:
            data = asdict(self)
        finally:
            self._pending = pending
        data.pop("directory")
        data.pop("_owned")
        data.pop("_pending")
        data["format"] = FORMAT
        return data

    def preview(self) -> Any:  # a pandas.DataFrame (pandas is the host's, not the image's)
        """The manifest's variables as a DataFrame: a dry run of what would travel."""
        import pandas as pd

        rows = [
            {
                "name": v.name,
                "kind": v.kind,
                "type": v.type,
                "size": v.size,
                "serializer": v.serializer,
                "skipped": v.skipped,
            }
            for v in self.variables
        ]
        rows += [
            {
                "name": n,
                "kind": "env",
                "type": "str",
                "size": None,
                "serializer": "env",
                "skipped": None,
            }
            for n in self.env_names
        ]
        rows += [
            {
                "name": n,
                "kind": "env",
                "type": "str",
                "size": None,
                "serializer": None,
                "skipped": "secret: never shipped",
            }
            for n in self.env_secrets_dropped
        ]
        return pd.DataFrame(rows, columns=["name", "kind", "type", "size", "serializer", "skipped"])

    @property
    def skipped(self) -> list[VariableRecord]:
        return [v for v in self.variables if v.kind == "skipped"]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    # ---------------------------------------------------------- lifecycle
    def write_manifest(self) -> None:
        self.digest = self._compute_digest()
        (self.directory / MANIFEST).write_text(json.dumps(self.manifest(), indent=1, default=str))

    def hash_later(self, path: Path) -> None:
        """Start hashing a file just written, on worker threads, while the snapshot goes on
        being written (its digest then costs little more than its writing)."""
        self._pending[str(path)] = (path.stat().st_size, chunk_futures(path))

    def _compute_digest(self) -> str:
        """SHA-256 over the manifest (less its date and digest) and, per file in path order,
        its path and its digest: the SHA-256 of its 32 MiB chunks' SHA-256s, computed on
        every core."""
        h = hashlib.sha256()
        body = self.manifest()
        for key in ("created", "digest"):
            body.pop(key, None)
        h.update(json.dumps(body, sort_keys=True, default=str).encode())
        files = [p for p in sorted(self.directory.rglob("*")) if p.is_file() and p.name != MANIFEST]
        pending, self._pending = self._pending, {}
        chunks = []
        for path in files:  # every file's chunks queued before any is waited for
            size, futures = pending.get(str(path), (-1, []))
            chunks.append(futures if size == path.stat().st_size else chunk_futures(path))
        for path, futures in zip(files, chunks, strict=True):
            h.update(path.relative_to(self.directory).as_posix().encode())
            h.update(hashlib.sha256(b"".join(f.result() for f in futures)).digest())
        return h.hexdigest()

    def verify(self, expected_digest: str) -> bool:
        """Whether the files are the ones the digest was made of (a kept snapshot is read
        back only when they are)."""
        return bool(expected_digest) and self._compute_digest() == expected_digest

    @classmethod
    def load(cls, directory: Path) -> Snapshot:
        data = json.loads((Path(directory) / MANIFEST).read_text())
        data.pop("format", None)
        data.pop("_pending", None)
        data["variables"] = [VariableRecord(**v) for v in data.get("variables", [])]
        return cls(directory=Path(directory), **data)

    @property
    def owned(self) -> bool:
        """Whether this Snapshot made its directory (else it read one back)."""
        return self._owned

    def cleanup(self) -> None:
        """Remove the snapshot's files (only when this Snapshot made its directory)."""
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


_CHUNK = 32 << 20
_digest_pool: ThreadPoolExecutor | None = None


def chunk_futures(path: Path) -> list[Future[bytes]]:
    """The SHA-256 of each 32 MiB chunk of a file, computed on a pool of one thread per
    core (hashlib lets go of the GIL), reading through a memory map (no copy)."""
    global _digest_pool
    if _digest_pool is None:
        _digest_pool = ThreadPoolExecutor(
            max(2, os.cpu_count() or 2), thread_name_prefix="nbcontainer-digest"
        )
    size = path.stat().st_size
    return [
        _digest_pool.submit(_chunk_digest, str(path), offset, min(_CHUNK, size - offset))
        for offset in range(0, size, _CHUNK)
    ] or [_digest_pool.submit(_chunk_digest, str(path), 0, 0)]


def _chunk_digest(path: str, offset: int, length: int) -> bytes:
    if length == 0:
        return hashlib.sha256(b"").digest()
    with (
        open(path, "rb") as fh,
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm,
        memoryview(mm) as view,
        view[offset : offset + length] as chunk,
    ):
        return hashlib.sha256(chunk).digest()

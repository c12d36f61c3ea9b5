"""Capture: a namespace and a cell become a Snapshot directory and its manifest.

Nothing here talks to Docker; building images from a snapshot happens in
:mod:`nbcontainer_kernel.kernel.images`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract import SNAPSHOT_DIR
from ..errors import SerializationError
from ..serialize import Serialized, serialize_value, type_name
from .names import is_ipython_name, names_read

if TYPE_CHECKING:
    from .deps import Dependencies

# A run's runner loads snapshots (Snapshot.load) on every start: what only taking one needs
# (distribution metadata, the secret filter, source trees) is imported when one is taken.


def _python_version() -> str:
    from .deps import python_version

    return python_version()


def _now() -> str:
    from ..labels import now_iso

    return now_iso()


__all__ = ["Snapshot", "VariableRecord", "snapshot", "SNAPSHOT_DIR", "MANIFEST"]

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
    python: str = field(default_factory=_python_version)
    packages: dict[str, str] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)  # resolved with their dependencies
    local_packages: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    source_paths: list[str] = field(default_factory=list)
    notebook: str | None = None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    kernel: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=_now)
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

    def preview(self):  # -> pandas.DataFrame
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
        self._pending[str(path)] = (path.stat().st_size, _chunk_futures(path))

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
            chunks.append(futures if size == path.stat().st_size else _chunk_futures(path))
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


def _select(
    namespace: Mapping[str, Any], cell: str, variables: Iterable[str] | None, all_vars: bool
) -> tuple[list[str], list[str]]:
    """(names to ship, names asked for that are not defined)."""
    if variables is not None:
        wanted = list(dict.fromkeys(variables))
        return [n for n in wanted if n in namespace], [n for n in wanted if n not in namespace]
    if all_vars:
        return [n for n in namespace if not is_ipython_name(n) and not n.startswith("_")], []
    read = names_read(cell)
    return [n for n in namespace if n in read and not is_ipython_name(n)], []


def _find_notebook(namespace: Mapping[str, Any], env: Mapping[str, str]) -> Path | None:
    for candidate in (namespace.get("__session__"), env.get("JPY_SESSION_NAME")):
        if isinstance(candidate, str) and candidate.endswith(".ipynb"):
            path = Path(candidate)
            if path.is_file():
                return path
    return None


def snapshot(
    namespace: Mapping[str, Any],
    cell: str,
    *,
    variables: Iterable[str] | None = None,
    all_vars: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    notebook: Path | str | None = None,
    include_sources: bool = True,
    include_dependencies: bool = True,
    max_source_bytes: int = 50 * 1024**2,
    dest: Path | str | None = None,
) -> Snapshot:
    """Capture what `cell` needs from `namespace` into a snapshot directory.

    By default the variables are the names the cell reads; pass `variables`
    for an explicit list or `all_vars=True` for the whole namespace. A value
    that cannot be serialized is skipped and reported in the manifest (and in
    ``Snapshot.preview()``), never silently. Environment variables pass the
    secret filter; dependencies are captured as a lock; local code under
    `cwd` and the notebook (when the kernel knows its path) travel as files.
    """
    from .deps import capture_dependencies
    from .env import filter_env, looks_like_secret
    from .sources import collect_sources

    env = dict(os.environ if env is None else env)
    cwd_path = Path(cwd or os.getcwd()).resolve()
    owned = dest is None
    directory = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="nbcontainer-snapshot-"))
    directory.mkdir(parents=True, exist_ok=True)
    snap = Snapshot(directory=directory, cell=cell, _owned=owned)
    try:
        (directory / "cell.py").write_text(cell)
        names, missing = _select(namespace, cell, variables, all_vars)
        for name in missing:
            snap.variables.append(
                VariableRecord(name, "skipped", "-", skipped="not defined in the namespace")
            )
        named = set(variables or ())
        for name in names:
            value = namespace[name]
            if isinstance(value, str) and name not in named and looks_like_secret(value):
                # Only shipped when asked for by name; the reason names it, never the value.
                snap.variables.append(
                    VariableRecord(
                        name,
                        "skipped",
                        "str",
                        skipped="its value looks like a secret (a token, a password "
                        "or a URL with credentials); name it in --vars to ship it",
                    )
                )
                continue
            record = _capture_one(name, value, directory / "vars")
            snap.variables.append(record)
            for f in record.files:
                snap.hash_later(directory / f)

        kept, secrets, _machine = filter_env(env)
        (directory / "env.json").write_text(json.dumps(kept))
        snap.env_names, snap.env_secrets_dropped = sorted(kept), secrets

        if include_dependencies:
            deps, roots = capture_dependencies(in_image=bool(env.get("NBCONTAINER_KERNEL_ID")))
            _copy_local_packages(deps, roots, directory / "src" / "site")
            snap.packages = deps.lock
            snap.local_packages = [asdict(p) for p in deps.local]
            (directory / "requirements.lock").write_text("\n".join(deps.lock_lines()) + "\n")
        if include_sources:
            tree = collect_sources(cwd_path, max_bytes=max_source_bytes)
            for rel in tree.files:
                target = directory / "src" / "code" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tree.root / rel, target)
            snap.sources = [p.as_posix() for p in tree.files]
            snap.source_paths = tree.path_entries

        nb = Path(notebook) if notebook else _find_notebook(namespace, env)
        if nb is not None:
            copy_notebook_without_outputs(nb, directory / "notebook.ipynb")
            snap.notebook = str(nb)
        if env.get("NBCONTAINER_KERNEL_ID"):
            snap.kernel = {
                "kernel_id": env["NBCONTAINER_KERNEL_ID"],
                "image": env.get("NBCONTAINER_IMAGE", ""),
            }
        snap.write_manifest()
        return snap
    except BaseException:
        snap.cleanup()
        raise


_CHUNK = 32 << 20
_digest_pool: ThreadPoolExecutor | None = None


def _chunk_futures(path: Path) -> list[Future[bytes]]:
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
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with memoryview(mm) as view, view[offset : offset + length] as chunk:
            return hashlib.sha256(chunk).digest()


def copy_notebook_without_outputs(src: Path, dest: Path) -> None:
    """The notebook's sources and metadata without outputs (which may hold secrets or data),
    execution counts or saved widget state; papermill needs none of them."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.pop("attachments", None)
    nb.get("metadata", {}).pop("widgets", None)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def _capture_one(name: str, value: Any, dest: Path) -> VariableRecord:
    try:
        s: Serialized = serialize_value(name, value, dest, prefix="")
    except SerializationError as exc:
        for f in dest.glob(f"{glob.escape(name)}.*"):
            f.unlink()
        return VariableRecord(name, "skipped", type_name(value), skipped=str(exc))
    kind = "module" if s.serializer == "import" else "value"
    return VariableRecord(
        name,
        kind,
        s.type,
        s.size,
        s.serializer,
        [f"vars/{f}" for f in s.files],
        module=s.module,
        note=s.note,
    )


def _copy_local_packages(deps: Dependencies, roots: dict[str, Path], dest: Path) -> None:
    for name, path in roots.items():
        dest.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(
                path,
                dest / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        else:
            shutil.copy2(path, dest / path.name)

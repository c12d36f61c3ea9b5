"""Capture: a namespace and a cell become a Snapshot directory and its manifest.

Nothing here talks to Docker; building images from a snapshot happens in
:mod:`nbcontainer_kernel.images`. The snapshot's format, which run images read, is
:mod:`nbcontainer_kernel.runtime.snapshot`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.contract import SNAPSHOT_DIR
from ..runtime.errors import SerializationError
from ..runtime.names import is_ipython_name, names_read
from ..runtime.serialize import Serialized, serialize_value, type_name
from ..runtime.snapshot import MANIFEST, Snapshot, VariableRecord

if TYPE_CHECKING:
    from .deps import Dependencies

__all__ = ["Snapshot", "VariableRecord", "snapshot", "SNAPSHOT_DIR", "MANIFEST"]


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
    from .env import filter_env

    env = dict(os.environ if env is None else env)
    owned = dest is None
    directory = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="nbcontainer-snapshot-"))
    directory.mkdir(parents=True, exist_ok=True)
    snap = Snapshot(directory=directory, cell=cell, _owned=owned)
    try:
        (directory / "cell.py").write_text(cell)
        _capture_variables(snap, namespace, cell, variables, all_vars)
        kept, secrets, _machine = filter_env(env)
        (directory / "env.json").write_text(json.dumps(kept))
        snap.env_names, snap.env_secrets_dropped = sorted(kept), secrets
        if include_dependencies:
            _capture_dependencies(snap, in_image=bool(env.get("NBCONTAINER_KERNEL_ID")))
        if include_sources:
            _capture_sources(snap, Path(cwd or os.getcwd()).resolve(), max_source_bytes)
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


def _capture_variables(
    snap: Snapshot,
    namespace: Mapping[str, Any],
    cell: str,
    variables: Iterable[str] | None,
    all_vars: bool,
) -> None:
    """Each selected name as files under vars/ (hashed while the rest is written), or a
    record of why it does not travel."""
    from .env import looks_like_secret

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
        record = _capture_one(name, value, snap.directory / "vars")
        snap.variables.append(record)
        for f in record.files:
            snap.hash_later(snap.directory / f)


def _capture_dependencies(snap: Snapshot, in_image: bool) -> None:
    """The lock of installed distributions, and local (editable) ones' code under src/site."""
    from .deps import capture_dependencies

    deps, roots = capture_dependencies(in_image=in_image)
    _copy_local_packages(deps, roots, snap.directory / "src" / "site")
    snap.packages = deps.lock
    snap.local_packages = [asdict(p) for p in deps.local]
    (snap.directory / "requirements.lock").write_text("\n".join(deps.lock_lines()) + "\n")


def _capture_sources(snap: Snapshot, cwd: Path, max_bytes: int) -> None:
    """The code under `cwd` the kernel can import, under src/code."""
    from .sources import collect_sources

    tree = collect_sources(cwd, max_bytes=max_bytes)
    for rel in tree.files:
        target = snap.directory / "src" / "code" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree.root / rel, target)
    snap.sources = [p.as_posix() for p in tree.files]
    snap.source_paths = tree.path_entries


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

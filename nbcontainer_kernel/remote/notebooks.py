"""Headless notebooks: a notebook becomes an image that runs it with parameters.

The image's runner executes the whole notebook (papermill style: the cell
tagged ``parameters`` holds the defaults, ``docker run IMAGE -p alpha 0.5``
overrides them) and writes the executed .ipynb and its .html to
/opt/ml/output/data. The parameters' names, types and defaults are in the
image's ``io.nbcontainer.parameters`` label.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import pyproject_table
from ..docker.engine import Engine, get_engine
from ..images.runs import RunImage, build_run_image
from ..runtime.errors import InvalidOption, NbcontainerError
from ..runtime.notebook import parameters_of
from ..snapshots.capture import Snapshot, copy_notebook_without_outputs
from ..snapshots.deps import capture_dependencies, python_version
from ..snapshots.sources import collect_sources

__all__ = [
    "containerize",
    "declared_parameters",
    "notebook_snapshot",
    "pipeline_notebooks",
]


def _requirements(path: Path) -> list[str]:
    return [
        ln.split("#", 1)[0].strip()
        for ln in path.read_text().splitlines()
        if ln.split("#", 1)[0].strip() and not ln.lstrip().startswith("-")
    ]


def pipeline_notebooks(start: Path | None = None) -> list[Path]:
    """The notebooks of ``[tool.nbcontainer.pipeline] notebooks = [...]`` in the nearest
    pyproject.toml (paths relative to it), or [] when there is no such table."""
    path, table = pyproject_table(start)
    pipeline = table.get("pipeline")
    if path is None or pipeline is None:
        return []
    names = pipeline.get("notebooks") if isinstance(pipeline, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidOption(
            "[tool.nbcontainer.pipeline] notebooks",
            names,
            f"in {path}: a list of notebook paths, in the order they run",
        )
    return [Path(path).parent / n for n in names]


def _read_notebooks(notebooks: Sequence[Path | str]) -> list[tuple[Path, Any]]:
    import nbformat

    read = []
    for notebook in notebooks:
        nb_path = Path(notebook).resolve()
        if not nb_path.is_file():
            raise NbcontainerError(f"No notebook at {nb_path}.")
        try:
            read.append((nb_path, nbformat.read(nb_path, as_version=4)))
        except Exception as exc:  # not JSON, not a notebook
            raise NbcontainerError(f"{nb_path} is not a notebook nbformat can read: {exc}") from exc
    stems = [p.stem for p, _ in read]
    if len(set(stems)) != len(stems):
        raise InvalidOption(
            "notebooks",
            stems,
            "a pipeline's notebooks need different names (each executed "
            "copy is kept under its name)",
        )
    return read


def declared_parameters(nbs: Sequence[Any]) -> list[dict[str, Any]]:
    """The parameters the notebooks' `parameters` cells declare (the first of a name wins)."""
    seen: dict[str, dict[str, Any]] = {}
    for nb in nbs:
        for p in parameters_of(nb):
            seen.setdefault(p["name"], p)
    return list(seen.values())


def notebook_snapshot(
    notebook: Path | str | Sequence[Path | str],
    requirements: Path | str | None = None,
    dest: Path | None = None,
) -> Snapshot:
    """A notebook-mode snapshot: the notebook (or a pipeline of them, in order), the first
    one's directory's code, and the dependencies (the requirements file when given, else
    this environment's lock)."""
    paths = [notebook] if isinstance(notebook, (str, Path)) else list(notebook)
    if not paths:
        raise InvalidOption("notebook", paths, "name at least one notebook")
    read = _read_notebooks(paths)
    nb_path = read[0][0]
    directory = dest or Path(tempfile.mkdtemp(prefix="nbcontainer-notebook-"))
    snap = Snapshot(
        directory=directory,
        cell="",
        mode="notebook",
        python=python_version(),
        notebook=str(nb_path),
        parameters=declared_parameters([nb for _, nb in read]),
        pipeline=[p.stem for p, _ in read] if len(read) > 1 else [],
        _owned=dest is None,
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if len(read) > 1:
            (directory / "pipeline").mkdir()
            for i, (path, _) in enumerate(read):
                copy_notebook_without_outputs(path, directory / "pipeline" / f"{i:02d}.ipynb")
        copy_notebook_without_outputs(nb_path, directory / "notebook.ipynb")
        (directory / "env.json").write_text("{}")
        if requirements:
            snap.requirements = _requirements(Path(requirements))
        else:
            deps, _roots = capture_dependencies()
            snap.packages = deps.lock
        tree = collect_sources(nb_path.parent)
        for rel in tree.files:
            target = directory / "src" / "code" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree.root / rel, target)
        (directory / "src" / "code").mkdir(parents=True, exist_ok=True)
        snap.sources = [p.as_posix() for p in tree.files]
        snap.source_paths = tree.path_entries
        snap.write_manifest()
        return snap
    except BaseException:
        snap.cleanup()
        raise


def containerize(
    notebook: Path | str | Sequence[Path | str],
    tag: str | None = None,
    *,
    base: str | None = None,
    requirements: Path | str | None = None,
    engine: Engine | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunImage:
    """Build an image that runs `notebook` (or a pipeline of notebooks) with parameters
    (see the module doc)."""
    with notebook_snapshot(notebook, requirements) as snap:
        return build_run_image(
            snap, base=base, tag=tag, engine=engine or get_engine(), on_line=on_line
        )

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
from collections.abc import Callable
from pathlib import Path

from ..docker.engine import Engine, get_engine
from ..images.runs import RunImage, build_run_image
from ..runtime.errors import NbcontainerError
from ..runtime.notebook import parameters_of
from ..snapshots.capture import Snapshot, copy_notebook_without_outputs
from ..snapshots.deps import capture_dependencies, python_version
from ..snapshots.sources import collect_sources

__all__ = ["notebook_snapshot", "containerize"]


def _requirements(path: Path) -> list[str]:
    return [
        ln.split("#", 1)[0].strip()
        for ln in path.read_text().splitlines()
        if ln.split("#", 1)[0].strip() and not ln.lstrip().startswith("-")
    ]


def notebook_snapshot(
    notebook: Path | str, requirements: Path | str | None = None, dest: Path | None = None
) -> Snapshot:
    """A notebook-mode snapshot: the notebook, its directory's code, and its dependencies
    (the requirements file when given, else this environment's lock)."""
    import nbformat

    nb_path = Path(notebook).resolve()
    if not nb_path.is_file():
        raise NbcontainerError(f"No notebook at {nb_path}.")
    nb = nbformat.read(nb_path, as_version=4)
    directory = dest or Path(tempfile.mkdtemp(prefix="nbcontainer-notebook-"))
    snap = Snapshot(
        directory=directory,
        cell="",
        mode="notebook",
        python=python_version(),
        notebook=str(nb_path),
        parameters=parameters_of(nb),
        _owned=dest is None,
    )
    try:
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
    notebook: Path | str,
    tag: str | None = None,
    *,
    base: str | None = None,
    requirements: Path | str | None = None,
    engine: Engine | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunImage:
    """Build an image that runs `notebook` with parameters (see the module doc)."""
    with notebook_snapshot(notebook, requirements) as snap:
        return build_run_image(
            snap, base=base, tag=tag, engine=engine or get_engine(), on_line=on_line
        )

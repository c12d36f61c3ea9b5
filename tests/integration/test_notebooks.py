"""nbclient and papermill run notebooks with a containerized kernelspec."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
from nbformat.v4 import new_code_cell, new_notebook

from nbcontainer_kernel.docker.engine import Engine
from tests.helpers import execute_notebook


def test_nbclient_executes_a_notebook_in_the_container(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-nbclient")
    nb = new_notebook(
        cells=[
            new_code_cell("import os\nprint(os.environ['NBCONTAINER_IMAGE'])"),
            new_code_cell("open('written-by-kernel.txt', 'w').write('hi')\nos.getcwd()"),
        ]
    )
    execute_notebook(nb, tmp_path, name, timeout=60)
    assert nb.cells[0].outputs[0]["text"].strip() == "nbcontainer/python:3.11"
    # The notebook's directory is mounted at the same path and is the kernel's cwd.
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == repr(str(tmp_path))
    written = tmp_path / "written-by-kernel.txt"
    assert written.read_text() == "hi"
    import os

    assert (written.stat().st_uid, written.stat().st_gid) == (os.getuid(), os.getgid())


def test_papermill_executes_with_parameters(
    engine: Engine, make_kernelspec, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-papermill")
    params = new_code_cell("alpha = 0.1\nlabel = 'default'")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("print(f'{label}: {alpha * 10:.1f}')")])
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(
        str(src),
        str(out),
        parameters={"alpha": 0.5, "label": "tuned"},
        kernel_name=name,
        language="python",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    result = nbformat.read(out, as_version=4)
    printed = [
        o["text"] for c in result.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
    ]
    assert printed == ["tuned: 5.0\n"]

"""The example notebooks a new user opens first, executed as a reader would run them:
through nbclient, in the containerized kernel. With NBCONTAINER_SAVE_EXECUTED=1 the
executed copies are written to examples/executed/ (what the README links to)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import execute_notebook
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def _outputs(cell: nbformat.NotebookNode, mime: str = "text/plain") -> str:
    return "".join(
        o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get(mime, "")
        for o in cell.get("outputs", [])
    )


def _save(nb: nbformat.NotebookNode, name: str) -> None:
    if os.environ.get("NBCONTAINER_SAVE_EXECUTED"):
        (ROOT / "examples" / "executed").mkdir(exist_ok=True)
        nbformat.write(nb, ROOT / "examples" / "executed" / name)


def test_sweep_and_compare_runs_in_the_containerized_kernel(
    examples_kernel_image: str, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-examples", image=examples_kernel_image, docker_socket=True)
    shutil.copy(ROOT / "examples" / "sweep_and_compare.ipynb", tmp_path)
    nb = nbformat.read(tmp_path / "sweep_and_compare.ipynb", as_version=4)
    execute_notebook(nb, tmp_path, name, timeout=900)
    _save(nb, "sweep_and_compare.ipynb")
    children = ledger.find(parent="train-1")
    assert len(children) == 4 and {c["status"] for c in children} == {"SUCCEEDED"}
    assert {(c["params"]["lr"], c["params"]["alpha"]) for c in children} == {
        (0.01, 0.0),
        (0.01, 1.0),
        (0.1, 0.0),
        (0.1, 1.0),
    }
    cells = nb.cells
    compare = next(c for c in cells if "%remote_compare" in c.source)
    assert _outputs(compare, "image/png"), "the plot is an image in the notebook"
    assert "metric.val_loss Δ" in _outputs(compare)
    best = min(children, key=lambda c: c["metrics"]["val_loss"])
    picked = next(c for c in cells if "best = runs.sort_values" in c.source)
    assert _outputs(picked).startswith(f"{best['id']} lr = {best['params']['lr']}")
    steps = next(c for c in cells if "metrics_frame" in c.source)
    assert "train-2" in _outputs(steps)

"""The example notebooks a new user opens first, executed as a reader would run them:
through nbclient, in the containerized kernel. With NBCONTAINER_SAVE_EXECUTED=1 the
executed copies are written to examples/executed/ (what the README links to)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbcontainer_kernel.remote.ledger import Ledger
from tests.helpers import execute_notebook, save_executed
from tests.integration.conftest import ROOT
from tests.lab import Lab

pytestmark = pytest.mark.integration


def _outputs(cell: nbformat.NotebookNode, mime: str = "text/plain") -> str:
    return "".join(
        o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get(mime, "")
        for o in cell.get("outputs", [])
    )


def test_sweep_and_compare_runs_in_the_containerized_kernel(
    examples_kernel_image: str, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-examples", image=examples_kernel_image)
    shutil.copy(ROOT / "examples" / "sweep_and_compare.ipynb", tmp_path)
    nb = nbformat.read(tmp_path / "sweep_and_compare.ipynb", as_version=4)
    execute_notebook(nb, tmp_path, name, timeout=900)
    save_executed(nb, "sweep_and_compare.ipynb")
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


def test_remote_backends_runs_one_cell_locally_on_batch_and_under_sagemaker_local_mode(
    sagemaker_kernel_image: str, testbed_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    # SageMaker's local mode (docker-compose: networks, binds of the run's directory) needs
    # the raw socket; the guard refuses it, saying so (tests/unit/test_sagemaker_parts.py).
    name = testbed_kernelspec("nbc-examples-aws", sagemaker_kernel_image, docker_access="raw")
    shutil.copy(ROOT / "examples" / "remote_backends.ipynb", tmp_path)
    nb = nbformat.read(tmp_path / "remote_backends.ipynb", as_version=4)
    execute_notebook(nb, tmp_path, name, timeout=900)
    save_executed(nb, "remote_backends.ipynb")
    rows = [ledger.get(f"same-{i}") for i in (1, 2, 3)]
    assert [r["backend"] for r in rows] == ["local", "batch", "sagemaker-local"]
    assert {r["status"] for r in rows} == {"SUCCEEDED"} and {r["verified"] for r in rows} == {
        "signed"
    }
    assert "@sha256:" in rows[1]["image"], "Batch ran the pushed image, by digest"
    compare = next(c for c in nb.cells if "%remote_compare" in c.source)
    assert "result.scaled" in _outputs(compare)
    from nbcontainer_kernel.remote.tables import compare_frame

    same = compare_frame(["same-1", "same-2", "same-3"], ledger).loc["result.scaled"]
    # The same values: the means differ from the first run's by nothing.
    assert (
        same.iloc[0] == "3 rows × 2 columns; n: mean 6, min 3, max 9; w: mean 4.5, min 1.5, max 7.5"
    )
    assert (
        same.iloc[1]
        == same.iloc[2]
        == (
            "3 rows × 2 columns; n: mean 6, min 3, max 9 (mean +0); "
            "w: mean 4.5, min 1.5, max 7.5 (mean +0)"
        )
    )
    hosts = compare_frame(["same-1", "same-2", "same-3"], ledger).loc["result.host"]
    assert len(set(hosts)) == 3, "each ran in its own container"


def test_headless_notebook_containerizes_and_runs_an_analysis_with_parameters(
    examples_kernel_image: str, make_kernelspec, new_images, tmp_path: Path
) -> None:
    # The kernel's pip trusts the CA its image holds (the proxy's, on this machine): how a
    # containerized kernel resolves wheels until it takes the host's package index settings.
    name = make_kernelspec(
        "nbc-examples-headless",
        image=examples_kernel_image,
        env={
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            "NBCONTAINER_BASE_IMAGE": os.environ.get(
                "NBCONTAINER_BASE_IMAGE", "nbcontainer/base:bookworm"
            ),
        },
    )
    for notebook in ("headless_notebook.ipynb", "analysis.ipynb"):
        shutil.copy(ROOT / "examples" / notebook, tmp_path)
    nb = nbformat.read(tmp_path / "headless_notebook.ipynb", as_version=4)
    try:
        execute_notebook(nb, tmp_path, name, timeout=900)
    except Exception:
        print("\n".join(_outputs(c) for c in nb.cells if c.cell_type == "code"))
        raise
    finally:
        from nbcontainer_kernel.docker.engine import Engine

        engine = Engine.connect()
        if engine.has_image("nbcontainer-example/analysis:1"):
            engine.remove_image("nbcontainer-example/analysis:1", force=True)
    save_executed(nb, "headless_notebook.ipynb")
    built, ran, swept, tabled = (
        _outputs(c) for c in nb.cells if c.source.startswith("!nbcontainer")
    )
    assert "built nbcontainer-example/analysis:1" in built, built
    assert re.search(r"alpha-\d+ +SUCCEEDED", ran), ran
    read = _outputs(nb.cells[4])
    assert read.startswith("total 12.0"), read
    assert "analysis.html" in read and "analysis.ipynb" in read
    # The sweep: six children, each with what it recorded (total = alpha * n(n-1)/2).
    assert swept.count("SUCCEEDED") >= 6, swept
    assert "wrote 6 rows to grid.csv" in tabled and tabled.count("SUCCEEDED") == 6, tabled
    assert "30.0" in tabled  # alpha 2, n 6


def test_runs_in_the_browser_submits_follows_and_reads_a_run_over_the_rest_api(
    ledger: Ledger, new_images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "NBCONTAINER_BASE_IMAGE",
        os.environ.get("NBCONTAINER_BASE_IMAGE", "nbcontainer/base:bookworm"),
    )
    for notebook in ("runs_in_the_browser.ipynb", "analysis.ipynb"):
        shutil.copy(ROOT / "examples" / notebook, tmp_path)
    lab = Lab(tmp_path)  # the server the notebook finds, with the ledger of this test
    try:
        nb = nbformat.read(tmp_path / "runs_in_the_browser.ipynb", as_version=4)
        execute_notebook(nb, tmp_path, "python3", timeout=600)
    finally:
        lab.stop()
    save_executed(nb, "runs_in_the_browser.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "/nbcontainer/runs" in _outputs(code[0])
    assert _outputs(code[1]).startswith("202 {'id': 'from-api-1'"), _outputs(code[1])
    assert "total 12.0" in _outputs(code[2])  # the log, followed: alpha 2, n 4
    assert _outputs(code[3]).startswith("SUCCEEDED {'alpha': 2.0, 'n': 4} {'total': 12.0"), (
        _outputs(code[3])
    )
    assert "from-api-1" in _outputs(code[4])
    assert _outputs(code[5]).startswith("422 {'error': 'InvalidOption'"), _outputs(code[5])
    assert ledger.get("from-api-1")["recorded"]["total"] == 12.0


def test_make_demo_runs_the_quickstart_and_says_where_it_ran(
    make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    """What `make demo` runs: examples/run_quickstart.py, as a user runs it."""
    name = make_kernelspec("nbc-examples-quickstart")
    executed = tmp_path / "quickstart.executed.ipynb"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_quickstart.py"), "--kernel", name,
         "--output", str(executed)],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "where the code ran:" in out.stdout and f"saved to {executed}" in out.stdout
    assert "%%remote_run (a run image made from the kernel's state):" in out.stdout
    nb = nbformat.read(executed, as_version=4)
    save_executed(nb, "quickstart.ipynb")
    assert ledger.get("quickstart-1")["status"] == "SUCCEEDED"
    back = next(c for c in nb.cells if c.source.startswith("print('back in the kernel:'"))
    assert _outputs(back).startswith("back in the kernel: [0, 3, 12, 27] from ")

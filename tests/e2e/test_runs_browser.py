"""Runs in the browser, in headless Chromium against a real JupyterLab: the Runs sidebar
lists a run a notebook cell made; "Containerize this notebook" (the notebook's toolbar)
builds an image; "Run this notebook on…" (the command palette) runs the notebook on
local Docker with a parameter changed; its executed notebook opens in a Lab tab; Cancel
in the sidebar stops a running run within 5 s; the runs page and a run's page show them
(screenshots for the README); and what runs wrote (a parameter, a failure, a log line,
a notebook's outputs) runs nothing in any of those pages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nbformat
import pytest
from playwright.sync_api import Dialog, Page, sync_playwright

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.e2e.test_lab_browser import ARGS, CHROMIUM
from tests.integration.conftest import BASE_IMAGE
from tests.integration.test_notebook_runs import write_notebook
from tests.lab import Lab

pytestmark = pytest.mark.e2e

XSS = "<img src=x onerror=alert(1)>"
#: A run id the ledger never makes (it cuts names to [A-Za-z0-9_.-]), as a ledger written by
#: something else may hold it: the pages take what they read as text all the same.
MARKUP_ID = "x<img src=x onerror=alert(3)>-1"
STUDY = (
    "import nbcontainer_kernel as nbk\n"
    "for i in range(4):\n"
    "    print('alpha is', alpha, 'step', i, flush=True)\n"
    "    nbk.log_metric('loss', alpha / (i + 1), step=i)\n"
    "nbk.record('mae', alpha * 2)"
)
HOSTILE = (
    "from IPython.display import HTML, Javascript, display\n"
    f"print({XSS!r})\n"
    "display(HTML(\"<script>window.parent.__xss = 'script'</script>"
    '<img src=x onerror=\\"window.parent.__xss = \'img\'\\">"))\n'
    "display(Javascript(\"window.parent.__xss = 'js'\"))"
)
SLOW = "import time\nfor i in range(120):\n    print('tick', i, flush=True)\n    time.sleep(1)"


def _wait(ledger: Ledger, run_id: str, status: set[str], timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = ledger.get(run_id)
        if row["status"] in status:
            return row
        time.sleep(0.2)
    raise AssertionError(f"{run_id} is {row.get('status')}, not {status}")


def _no_script_ran(page: Page, alerts: list[str]) -> None:
    assert page.evaluate("() => window.__xss === undefined"), page.evaluate("window.__xss")
    assert alerts == [], alerts


def test_runs_sidebar_commands_pages_and_hostile_run_output_in_chromium(
    engine: Engine, new_images: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed (scripts/setup.sh --browser installs it)")
    db = tmp_path / "ledger" / "runs.db"
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(db))
    monkeypatch.setenv("NBCONTAINER_BASE_IMAGE", BASE_IMAGE)
    shots = Path(os.environ.get("NBCONTAINER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "study.ipynb", "alpha = 0.1", STUDY)
    nb = nbformat.read(root / "study.ipynb", as_version=4)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, root / "study.ipynb")  # opens without asking for a kernel
    write_notebook(root / "hostile.ipynb", None, HOSTILE, "raise ValueError('<b>bold</b>')")
    write_notebook(root / "slow.ipynb", None, SLOW)
    ledger = Ledger(db)
    lab = Lab(root)
    image = "e2e-runs/study:1"
    try:
        # A run a notebook cell made (%%remote_run in the server's own Python kernel).
        kernel = lab.post("/api/kernels", {"name": "python3"}).json()
        lab.execute(kernel["id"], "%load_ext nbcontainer_kernel")
        out = lab.execute(kernel["id"], "%%remote_run --local --name fromcell\ny = 6 * 7", 300)
        assert ledger.get("fromcell-1")["status"] == "SUCCEEDED", out
        # A run whose every output is hostile, and a row whose failure text is markup.
        hostile = lab.post("/nbcontainer/api/runs", {"notebook": "hostile.ipynb", "params": {}})
        assert hostile.status_code == 202, hostile.text
        hostile_id = hostile.json()["id"]
        crafted = ledger.create("crafted", "local", params={"title": XSS}, kind="notebook")
        ledger.update(crafted, failure=f"{XSS}\n<script>alert(2)</script>", status="FAILED")
        named = ledger.create("named", "local", kind="notebook")
        ledger.update(named, id=MARKUP_ID, name=XSS, status="FAILED")
        _wait(ledger, hostile_id, {"FAILED"})
        sweep = ledger.create("swept", "local", params={"n": [1, 2]}, kind="notebook")
        kids = [ledger.create("swept", "local", params={"n": n}, parent=sweep) for n in (1, 2)]
        for kid, status in zip(kids, ("SUCCEEDED", "FAILED"), strict=True):
            ledger.update(kid, status=status)
        ledger.update(sweep, status="FAILED")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                alerts: list[str] = []

                def on_dialog(dialog: Dialog) -> None:  # an alert() a run's output got to call
                    alerts.append(dialog.message)
                    dialog.dismiss()

                page.on("dialog", on_dialog)
                page.goto(f"{lab.url}/lab/tree/study.ipynb?token={lab.token}")
                page.add_style_tag(content=".Toastify { display: none !important; }")
                page.locator(".jp-NotebookPanel:visible .jp-Cell").first.wait_for(timeout=90_000)

                # The sidebar lists the cell's run.
                page.locator(".jp-SideBar .lm-TabBar-tab[data-id='nbcontainer-runs']").click()
                sidebar = page.locator("#nbcontainer-runs")
                sidebar.locator(".nbc-Run[data-run='fromcell-1']").wait_for(timeout=30_000)
                assert sidebar.locator(
                    ".nbc-Run[data-run='fromcell-1'] .nbc-Status"
                ).inner_text() == ("SUCCEEDED")

                # Containerize this notebook, from the notebook's toolbar.
                page.locator(
                    ".jp-NotebookPanel:visible [title='Containerize this notebook']"
                ).click()
                page.locator("#nbc-field-tag").fill(image)
                page.locator(".jp-Dialog .jp-mod-accept").click()
                build = sidebar.locator(".nbc-Build[data-status='succeeded']")
                build.wait_for(timeout=600_000)
                assert image in build.inner_text()
                assert "parameters: alpha=0.1" in build.inner_text()  # the parameters cell's
                assert engine.has_image(image)

                # Run this notebook on… local, from the palette, with alpha changed.
                page.keyboard.press("Control+Shift+c")
                page.locator(".lm-CommandPalette-input").fill("Run this notebook on")
                page.keyboard.press("Enter")
                page.locator("#nbc-field-backend").select_option("local")
                alpha = page.locator("[id='nbc-field-param:alpha']")
                assert alpha.input_value() == "0.1"  # prefilled from the parameters cell
                alpha.fill("0.3")
                page.locator(".jp-Dialog .jp-mod-accept").click()
                row = sidebar.locator(".nbc-Run[data-run='study-1']")
                row.wait_for(timeout=60_000)
                done = _wait(ledger, "study-1", {"SUCCEEDED", "FAILED"})
                assert done["status"] == "SUCCEEDED" and done["params"] == {"alpha": 0.3}
                assert done["recorded"] == {"mae": 0.6}
                sidebar.locator(".nbc-Run[data-run='study-1'][data-status='SUCCEEDED']").wait_for(
                    timeout=10_000
                )
                sidebar.screenshot(path=str(shots / "sidebar.png"))

                # Its executed notebook, in a Lab tab, in a frame that may run nothing.
                row.locator(".nbc-OpenNotebook").click()
                frame = page.locator(".jp-MainAreaWidget:visible iframe").first
                frame.wait_for(timeout=30_000)
                assert frame.get_attribute("sandbox") == ""
                page.frame_locator(".jp-MainAreaWidget:visible iframe").locator(
                    "text=alpha is 0.3 step 3"
                ).first.wait_for(timeout=30_000)

                # Cancel from the sidebar: the run ends within 5 s, nothing left behind.
                slow = lab.post("/nbcontainer/api/runs", {"notebook": "slow.ipynb"}).json()["id"]
                _wait(ledger, slow, {"RUNNING"})
                cancel = sidebar.locator(f".nbc-Run[data-run='{slow}'] .nbc-Cancel")
                cancel.wait_for(timeout=10_000)
                clicked = time.monotonic()
                cancel.click()
                _wait(ledger, slow, {"CANCELLED"}, timeout=30)
                took = time.monotonic() - clicked
                assert took < 5, f"cancelled {took:.1f} s after the click"
                assert run_containers(engine, slow) == []
                sidebar.locator(f".nbc-Run[data-run='{slow}'][data-status='CANCELLED']").wait_for(
                    timeout=10_000
                )
                # A sweep's children open under it.
                parent_row = sidebar.locator(f".nbc-Run[data-run='{sweep}']")
                counts = parent_row.inner_text()
                assert "1 failed" in counts and "1 succeeded" in counts, counts
                parent_row.locator(".nbc-Toggle").click()
                for kid in kids:
                    sidebar.locator(f".nbc-Run.nbc-child[data-run='{kid}']").wait_for(
                        timeout=10_000
                    )
                # A click on a run opens its page in a Lab tab.
                row.locator(".nbc-name").click()
                page.frame_locator(".jp-MainAreaWidget:visible iframe").locator(
                    "#run-status.SUCCEEDED"
                ).wait_for(timeout=30_000)
                # The hostile run's row shows its parameter as text, and nothing ran.
                crafted_row = sidebar.locator(f".nbc-Run[data-run='{crafted}']")
                assert XSS in crafted_row.inner_text()
                assert (
                    MARKUP_ID in sidebar.locator(f".nbc-Run[data-run='{MARKUP_ID}']").inner_text()
                )
                _no_script_ran(page, alerts)

                # The runs page: the table, filters in the server, a sweep-free list.
                page.goto(f"{lab.url}/nbcontainer/runs")
                table = page.locator("#runs tbody")
                table.locator(f"tr[data-run='{slow}']").wait_for(timeout=30_000)
                ids = [r.get_attribute("data-run") for r in table.locator("tr").all()]
                assert ids[0] == slow and {crafted, "fromcell-1", "study-1", hostile_id} <= set(ids)
                assert XSS in table.locator(f"tr[data-run='{crafted}']").inner_text()
                link = table.locator(f"tr[data-run='{MARKUP_ID}'] a")
                assert link.inner_text() == MARKUP_ID  # the id as text, its link encoded
                assert (link.get_attribute("href") or "").endswith(
                    quote(MARKUP_ID, safe="()")
                )  # encodeURIComponent
                _no_script_ran(page, alerts)
                page.screenshot(path=str(shots / "runs_page.png"))
                sweep_row = table.locator(f"tr[data-run='{sweep}']")
                sweep_row.locator("button.toggle").click()
                for kid in kids:
                    table.locator(f"tr.child[data-run='{kid}']").wait_for(timeout=10_000)
                page.locator("#status").select_option("CANCELLED")
                table.locator("tr[data-run='study-1']").wait_for(state="detached", timeout=10_000)
                assert [r.get_attribute("data-run") for r in table.locator("tr").all()] == [slow]
                _no_script_ran(page, alerts)

                # A run's page: phases, the metric over steps, its log, its notebook.
                page.goto(f"{lab.url}/nbcontainer/runs/study-1")
                page.locator("#run-status.SUCCEEDED").wait_for(timeout=30_000)
                assert page.locator("#timeline span").count() >= 3
                page.locator("#charts svg polyline").wait_for(timeout=10_000)
                points = page.locator("#charts svg polyline").get_attribute("points") or ""
                assert len(points.split()) == 4  # a point per logged step
                page.locator("#log", has_text="alpha is 0.3 step 3").wait_for(timeout=10_000)
                page.frame_locator("#notebook").locator("text=alpha is 0.3 step 0").first.wait_for(
                    timeout=30_000
                )
                page.screenshot(path=str(shots / "run_page.png"), full_page=True)

                # A running run's page follows its log, and its Cancel stops it within 5 s.
                second = lab.post("/nbcontainer/api/runs", {"notebook": "slow.ipynb"}).json()["id"]
                _wait(ledger, second, {"RUNNING"})
                page.goto(f"{lab.url}/nbcontainer/runs/{second}")
                page.locator("#log", has_text="tick 2").wait_for(timeout=30_000)
                assert page.locator("#log-state").inner_text() == "following"
                clicked = time.monotonic()
                page.locator("#cancel").click()
                page.locator("#run-status.CANCELLED").wait_for(timeout=5_000)
                took = time.monotonic() - clicked
                assert took < 5 and ledger.get(second)["status"] == "CANCELLED", took
                assert run_containers(engine, second) == []

                # The hostile runs' pages, reached as a reader does (a click in the runs
                # table): their log line, failure and notebook are inert.
                for run_id in (crafted, hostile_id):
                    page.goto(f"{lab.url}/nbcontainer/runs")
                    page.locator("#runs a", has_text=run_id).first.click()
                    page.locator("#run-status.FAILED").wait_for(timeout=30_000)
                    assert page.locator("#run-title").inner_text() == run_id
                    time.sleep(1)  # the frame's outputs had their chance to run
                    _no_script_ran(page, alerts)
                    if run_id == crafted:
                        assert XSS in page.locator("#run-failure").inner_text()
                page.locator("#log", has_text=XSS).wait_for(timeout=10_000)
                page.frame_locator("#notebook").locator("text=<b>bold</b>").first.wait_for(
                    timeout=30_000
                )
                time.sleep(1)
                _no_script_ran(page, alerts)
            finally:
                browser.close()
    finally:
        lab.stop()
        if engine.has_image(image):
            engine.remove_image(image, force=True)

"""JupyterLab in headless Chromium: the kernelspec is in the launcher, a notebook's
code runs in the container, %%remote_run's progress panel renders and finishes, Cancel
stops a run and a sweep, a sweep's rows show each child's value and latest metric, and
%remote_compare --plot renders an image (screenshots of both for the README)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.lab import Lab

METRIC_SWEEP = (
    "--sweep rate=0.1,0.2,0.4 --max-parallel 3\n"
    "from nbcontainer_kernel import log_metric\n"
    "for step in range(3):\n    log_metric('loss', 1 - rate * step, step=step)\n"
    "best = rate"
)
SLOW = "import time\nfor i in range(60):\n    print('tick', i, flush=True)\n    time.sleep(1)"


def _wait_running(ledger: Ledger, run_ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {r["id"]: r["status"] for r in ledger.find()}
        if all(statuses.get(r) == "RUNNING" for r in run_ids):
            return
        time.sleep(0.2)
    raise AssertionError(f"not all running: {statuses}")


CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _run_cell(page, code: str, index: int) -> None:
    cell = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


def test_lab_launcher_notebook_and_remote_run_panel(
    engine: Engine,
    make_kernelspec,
    examples_kernel_image: str,
    new_images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed (scripts/setup.sh --browser installs it)")
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(tmp_path / "ledger" / "runs.db"))
    # NBCONTAINER_SCREENSHOTS=docs/images keeps the README's screenshots up to date.
    shots = Path(os.environ.get("NBCONTAINER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    name = make_kernelspec("nbc-e2e", image=examples_kernel_image)
    display = f"test {name}"
    lab = Lab(tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{lab.url}/lab?token={lab.token}")
                # JupyterLab's news toast would sit over the screenshots.
                page.add_style_tag(content=".Toastify { display: none !important; }")
                card = page.locator(".jp-LauncherCard", has_text=display).first
                card.wait_for(timeout=60_000)  # the kernelspec is in the launcher
                card.click()
                page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").first.wait_for(
                    timeout=60_000
                )
                # The kernel in the container has answered: the status bar says so.
                page.get_by_text(f"{display} | Idle").first.wait_for(timeout=90_000)

                _run_cell(
                    page,
                    "import os, socket\nprint('image', os.environ['NBCONTAINER_IMAGE'], "
                    "socket.gethostname())",
                    0,
                )
                out = page.locator(
                    ".jp-OutputArea-output", has_text="image nbcontainer/python:3.11"
                ).first
                out.wait_for(timeout=90_000)
                host = out.inner_text().split()[-1]
                [kernel_container] = [
                    c
                    for c in engine.containers({labels.ROLE: labels.ROLE_KERNEL})
                    if c.labels.get(labels.OWNER_PID) == str(lab.proc.pid)
                ]
                assert kernel_container.id.startswith(host), (
                    "the notebook's code runs in the kernel's container"
                )

                _run_cell(
                    page,
                    "%%remote_run --local --name e2e\nfrom nbcontainer_kernel import log_metric\n"
                    "y = 6 * 7\nlog_metric('answer', y, step=1)",
                    1,
                )
                page.locator(
                    ".jp-OutputArea-output .widget-html", has_text=re.compile("e2e-1.*SUCCEEDED")
                ).first.wait_for(timeout=180_000)
                panel = page.locator(".jp-OutputArea-output .widget-vbox").first
                bar = panel.locator(".widget-hprogress .progress-bar").first
                assert "progress-bar-success" in (bar.get_attribute("class") or "")
                # The latest value of each metric, in a small table under the bar.
                metric_row = panel.locator("tr", has_text="answer").first
                assert metric_row.inner_text().split() == ["answer", "42", "step", "1"]
                # Once the run ended, Cancel is disabled and says how it ended.
                ended = panel.locator("button", has_text="Succeeded").first
                assert ended.is_disabled()
                assert "running" in panel.locator(".widget-html").nth(1).inner_text()
                panel.locator(
                    ".jupyter-widget-Collapse-header", has_text="log"
                ).first.click()  # open the log
                log = panel.locator("textarea").first
                assert "[nbcontainer] succeeded" in log.input_value()

                _run_cell(page, "print('y is', y)", 2)
                page.locator(".jp-OutputArea-output", has_text="y is 42").first.wait_for(
                    timeout=60_000
                )

                # Cancel while the cell waits: a single run, then a 3-child sweep.
                ledger = Ledger(tmp_path / "ledger" / "runs.db")
                for index, flags, runs in (
                    (3, "--name slow", ["slow-1"]),
                    (4, "--name sw --sweep n=1,2,3 --max-parallel 3", ["sw-2", "sw-3", "sw-4"]),
                ):
                    _run_cell(page, f"%%remote_run --local {flags}\n{SLOW}", index)
                    _wait_running(ledger, runs)
                    time.sleep(5)
                    cell = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(
                        index
                    )
                    clicked = time.monotonic()
                    cell.locator("button", has_text="Cancel").first.click()
                    name = runs[0].rsplit("-", 1)[0]
                    cell.locator(
                        ".jp-OutputArea-output", has_text=f"cancelled: run {name}-1"
                    ).first.wait_for(timeout=30_000)
                    took = time.monotonic() - clicked
                    assert took < 5, f"the cell ended {took:.1f} s after the click"
                    cell.locator(
                        ".widget-html", has_text=re.compile(f"{name}-1.*CANCELLED")
                    ).first.wait_for(timeout=5_000)
                    if len(runs) > 1:  # a row per child, with its value, as a user reads it
                        for n in (1, 2, 3):
                            cell.locator(".widget-label", has_text=f"n={n}").first.wait_for(
                                timeout=5_000
                            )
                    rows = {r["id"]: r["status"] for r in ledger.find(name=name)}
                    assert set(rows.values()) == {"CANCELLED"} and len(rows) == len(runs) + (
                        1 if len(runs) > 1 else 0
                    ), rows
                    for run_id in runs:
                        assert run_containers(engine, run_id) == []

                # A sweep that logs a metric: each child's row shows its parameter value and
                # its latest metric; then %remote_compare --plot renders an image.
                _run_cell(page, f"%%remote_run --local --name cmp {METRIC_SWEEP}", 5)
                cell = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(5)
                cell.locator(
                    ".widget-html", has_text=re.compile("cmp-1.*SUCCEEDED")
                ).first.wait_for(timeout=300_000)
                rows = cell.locator(".widget-hbox").all_inner_texts()  # type: ignore[assignment]
                assert [r.split()[0] for r in rows if re.match(r"cmp-\d+\s", r)] == [
                    "cmp-2",
                    "cmp-3",
                    "cmp-4",
                ], "a small sweep's rows in the children's order"
                for value, latest in (("0.1", "0.8"), ("0.2", "0.6"), ("0.4", "0.2")):
                    row = cell.locator(".widget-hbox", has_text=f"rate={value}").first
                    row.locator(".widget-label", has_text=f"loss {latest} (step 2)").wait_for(
                        timeout=5_000
                    )
                cell.locator(".widget-vbox").first.screenshot(path=str(shots / "panel.png"))
                _run_cell(page, "%remote_compare --sweep cmp-1 --plot loss", 6)
                plot = (
                    page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
                    .nth(6)
                    .locator(".jp-OutputArea-output img")
                    .first
                )
                plot.wait_for(timeout=60_000)
                plot.screenshot(path=str(shots / "compare_plot.png"))

                # The run table, as a reader sees it: one row per child, typed columns, the
                # status coloured.
                _run_cell(page, "%remote_runs --sweep cmp-1", 7)
                table = (
                    page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
                    .nth(7)
                    .locator(".jp-OutputArea-output table")
                    .first
                )
                table.wait_for(timeout=60_000)
                header = table.locator("thead th").all_inner_texts()
                assert {"param.rate", "metric.loss", "time.running"} <= set(header), header
                body = [r.split("\t") for r in table.locator("tbody tr").all_inner_texts()]
                id_at, status_at = header.index("id"), header.index("status")
                assert [(r[id_at], r[status_at]) for r in body] == [
                    ("cmp-2", "SUCCEEDED"),
                    ("cmp-3", "SUCCEEDED"),
                    ("cmp-4", "SUCCEEDED"),
                ], body
                rate = header.index("param.rate")
                assert [r[rate] for r in body] == ["0.1", "0.2", "0.4"]
                status = table.locator("tbody span", has_text="SUCCEEDED").first
                assert "rgb(26, 127, 55)" in status.evaluate("e => getComputedStyle(e).color")
            finally:
                browser.close()
    finally:
        lab.stop()
    # The server's shutdown took its kernel's container with it.
    assert [
        c
        for c in engine.containers({labels.ROLE: labels.ROLE_KERNEL})
        if c.labels.get(labels.OWNER_PID) == str(lab.proc.pid)
    ] == []

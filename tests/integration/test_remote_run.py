"""%%remote_run through a real InteractiveShell and through real (containerized) kernels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from jupyter_client import KernelManager
from nbformat.v4 import new_code_cell, new_notebook

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker import labels, warm
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import RemoteExecutionError
from tests.helpers import execute_notebook, interrupt_and_reply, run, stdout_of


def _run_containers(engine: Engine, run_id: str) -> list:
    """The run's containers, once the removals this process queued are done (a warm run
    that succeeded is removed in the background)."""
    warm.reaper.drain()
    return run_containers(engine, run_id)


def test_results_come_back_into_the_namespace(engine: Engine, ip, ledger: Ledger, capsys) -> None:
    result = ip.run_cell(
        "%%remote_run --local --name lda -p topics=50\n"
        "scores = docs.assign(score=docs.w * topics)\nprint('trained with', topics)"
    )
    assert result.error_in_exec is None, result.error_in_exec
    out = capsys.readouterr().out
    assert "trained with 50" in out
    assert "[lda-1] SUCCEEDED" in out
    scores = ip.user_ns["scores"]
    expected = ip.user_ns["docs"].assign(score=ip.user_ns["docs"].w * 50)
    pd.testing.assert_frame_equal(scores, expected)
    assert scores.index.freqstr == "D" and str(scores["c"].dtype) == "category"
    assert ip.user_ns["topics"] == 2, "a parameter does not change the kernel's own variable"
    row = ledger.get("lda-1")
    assert (
        row["status"] == "SUCCEEDED" and row["params"] == {"topics": 50} and row["exit_code"] == 0
    )
    assert [p for p, _ in row["phases"]][:3] == ["SNAPSHOT", "BUILD", "SUBMITTED"]
    assert (Path(row["result_dir"]) / "model" / "scores.arrow").exists() and row[
        "verified"
    ] == "signed"
    assert _run_containers(engine, "lda-1") == []
    df = ip.run_line_magic("remote_runs", "--name lda")
    assert df.loc[0, "id"] == "lda-1" and df.loc[0, "status"] == "SUCCEEDED"

    # --rerun: the same image with another parameter, then compare the two runs
    ip.run_cell(
        "%%remote_run --local --rerun lda-1 -p topics=10\nscores = docs.assign(score=docs.w * "
        "topics)"
    )
    assert ledger.get("lda-2")["image"] == row["image"]
    assert ip.user_ns["scores"].score.tolist() == [5.0, 15.0, 25.0]
    cmp = ip.run_line_magic("remote_compare", "lda-1 lda-2")
    assert cmp.loc["param.topics"].tolist() == [50, 10]
    assert all(v.startswith("3 rows × 4 columns") for v in cmp.loc["result.scores"])
    assert "score: mean 75" in cmp.loc["result.scores", "lda-1"]
    assert "score: mean 15, min 5, max 25 (mean -60)" in cmp.loc["result.scores", "lda-2"]


def test_sweep_returns_one_dataframe_and_a_parent_with_children(
    engine: Engine, ip, ledger: Ledger
) -> None:
    result = ip.run_cell(
        "%%remote_run --local --name sw --sweep topics=1,2,3,4 --max-parallel 2\n"
        "scores = docs.assign(score=docs.w * topics)\nbest = float(scores.score.max())"
    )
    assert result.error_in_exec is None, result.error_in_exec
    scores = ip.user_ns["scores"]
    assert scores.groupby("topics").size().to_dict() == {1: 3, 2: 3, 3: 3, 4: 3}
    assert (scores.score == scores.w * scores.topics).all()
    assert ip.user_ns["best"].set_index("topics").best.to_dict() == {
        1: 2.5,
        2: 5.0,
        3: 7.5,
        4: 10.0,
    }
    parent = ledger.get("sw-1")
    children = ledger.find(parent="sw-1")
    assert parent["status"] == "SUCCEEDED" and len(children) == 4
    assert sorted(c["params"]["topics"] for c in children) == [1, 2, 3, 4]
    assert {c["status"] for c in children} == {"SUCCEEDED"}
    assert {c["image"] for c in children} == {parent["image"]}, "one build for the whole sweep"


def test_failing_cell_raises_the_remote_error_and_is_recorded(
    engine: Engine, ip, ledger: Ledger
) -> None:
    result = ip.run_cell("%%remote_run --local --name bad\npartial = 1\nvalue = docs['missing']")
    err = result.error_in_exec
    assert isinstance(err, RemoteExecutionError)
    assert "KeyError: 'missing'" in err.traceback
    assert isinstance(err.__cause__, KeyError)
    row = ledger.get("bad-1")
    assert row["status"] == "FAILED" and row["exit_code"] != 0 and "KeyError" in row["failure"]
    assert (Path(row["result_dir"]) / "model" / "partial.json").exists(), "partial outputs are kept"
    assert "partial" not in ip.user_ns


def test_no_wait_then_cancel_stops_the_container(engine: Engine, ip, ledger: Ledger) -> None:
    handle = ip.run_cell(
        "%%remote_run --local --no-wait --name bg\nimport time\ntime.sleep(120)"
    ).result
    assert handle.run_id == "bg-1"
    deadline = time.monotonic() + 60
    while not _run_containers(engine, "bg-1") and time.monotonic() < deadline:
        time.sleep(0.2)
    [container] = _run_containers(engine, "bg-1")
    assert container.labels[labels.DETACHED] == "true"
    ip.run_line_magic("remote_cancel", "bg-1")
    assert handle.wait(60) == "CANCELLED"
    assert _run_containers(engine, "bg-1") == []


def _kernel(make_kernelspec, tmp_path: Path) -> tuple[KernelManager, Any]:
    km = KernelManager(kernel_name=make_kernelspec("nbc-magics"))
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def test_kernel_interrupt_cancels_the_run(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    km, kc = _kernel(make_kernelspec, tmp_path)
    try:
        msg_id = kc.execute("%%remote_run --local --name intr\nimport time\ntime.sleep(120)")
        deadline = time.monotonic() + 120
        while not _run_containers(engine, "intr-1") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _run_containers(engine, "intr-1"), "the run should have started"
        reply = interrupt_and_reply(km, kc, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert _run_containers(engine, "intr-1") == []
        assert ledger.get("intr-1")["status"] == "CANCELLED"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_no_wait_restart_attach(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    km, kc = _kernel(make_kernelspec, tmp_path)
    try:
        content, outputs = run(kc, "answer = 0\n", timeout=30)
        content, outputs = run(
            kc,
            "%%remote_run --local --no-wait --name later\nimport time\ntime.sleep(3)\nanswer = 42",
            timeout=300,
        )
        assert content["status"] == "ok", [o["content"] for o in outputs]
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        content, outputs = run(kc, "%remote_attach later-1", timeout=300)
        assert content["status"] == "ok", [o["content"] for o in outputs]
        assert stdout_of(run(kc, "print(answer)")[1]) == "42\n"
        assert ledger.get("later-1")["status"] == "SUCCEEDED"
        assert _run_containers(engine, "later-1") == []
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_nbclient_notebook_uses_the_magics_in_a_containerized_kernel(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    name = make_kernelspec("nbc-nb-magics")
    nb = new_notebook(
        cells=[
            new_code_cell(
                "import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]}, index=pd.Index(['x', "
                "'y'], name='k'))"
            ),
            new_code_cell(
                "%%remote_run --local --name nb\ndoubled = frame * 2\nprint('remote hello')\n"
                "from IPython.display import HTML, display\ndisplay(HTML('<b>remote "
                "html</b>'))\nlen(doubled)"
            ),
            new_code_cell("print(doubled.a.tolist(), doubled.index.name, str(doubled.a.dtype))"),
            new_code_cell("runs = %remote_runs\nprint(runs.id.tolist(), runs.status.tolist())"),
        ]
    )
    execute_notebook(nb, tmp_path, name, timeout=300)
    text = [
        "".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream")
        for c in nb.cells
    ]
    assert "remote hello" in text[1] and "[nb-1] SUCCEEDED" in text[1]
    # display() output and the last expression's value come back as the cell's own outputs
    rich = [o for o in nb.cells[1].outputs if o.get("output_type") == "display_data"]
    assert rich and rich[0]["data"]["text/html"] == "<b>remote html</b>"
    [result] = [o for o in nb.cells[1].outputs if o.get("output_type") == "execute_result"]
    assert result["data"]["text/plain"] == "2"
    assert text[2] == "[2, 4] k int64\n"
    assert text[3] == "['nb-1'] ['SUCCEEDED']\n"


def test_a_run_that_cannot_start_is_recorded_with_its_reason(
    engine: Engine, ip, ledger: Ledger
) -> None:
    from nbcontainer_kernel.runtime.errors import ImageNotFound

    result = ip.run_cell(
        "%%remote_run --local --name nobase --base nbcontainer/does-not-exist:1\ny = 1"
    )
    assert isinstance(result.error_in_exec, ImageNotFound)
    assert "could not be pulled" in str(result.error_in_exec)
    row = ledger.get("nobase-1")
    assert row["status"] == "FAILED" and "ImageNotFound" in row["failure"]
    assert "y" not in ip.user_ns


def test_timeout_stops_the_run_and_records_it(engine: Engine, ip, ledger: Ledger) -> None:
    result = ip.run_cell(
        "%%remote_run --local --name slow --timeout 3\nimport time\ntime.sleep(120)\ndone = True"
    )
    err = result.error_in_exec
    assert isinstance(err, RemoteExecutionError) and "timed out after 3 s" in str(err)
    row = ledger.get("slow-1")
    assert row["status"] == "FAILED" and "timed out" in row["failure"]
    assert Ledger.timings(row)["running"] < 60, "stopped at its timeout, not at the cell's end"
    assert _run_containers(engine, "slow-1") == []
    assert "done" not in ip.user_ns

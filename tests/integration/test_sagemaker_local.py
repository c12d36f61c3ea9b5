"""--backend sagemaker-local: the SageMaker request, run by SageMaker's own local mode
(sagemaker-core's LocalSagemakerClient and Debian's docker-compose) on the real engine.

This is where a run image is proven to be a SageMaker training image on every CI run:
SageMaker's code starts it with `train`, writes hyperparameters.json and packs
/opt/ml/model into model.tar.gz; the host takes only what real SageMaker returns
(model.tar.gz, and output.tar.gz's data/).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import sagemaker.core.local.local_session  # noqa: F401 (a missing extra fails, never skips)

from nbcontainer_kernel.docker import labels
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.runtime.errors import RemoteExecutionError, RunTimeout
from tests.helpers import execute_notebook, result_contents, save_executed

pytestmark = pytest.mark.integration


def test_a_cell_runs_under_local_mode_with_the_same_results_as_local(
    engine: Engine, ip, ledger: Ledger, capsys
) -> None:
    cell = (
        "from nbcontainer_kernel import log_metric\n"
        "scores = docs.assign(score=docs.w * topics)\n"
        "log_metric('loss', 0.25, step=1)\nlog_metric('loss', 0.125, step=2)\n"
        "print('trained with', topics)"
    )
    result = ip.run_cell(f"%%remote_run --backend sagemaker-local --name sml -p topics=7\n{cell}")
    assert result.error_in_exec is None, result.error_in_exec
    out = capsys.readouterr().out
    assert "trained with 7" in out
    assert "\x1b[" not in out and "\r" not in out, "compose's TTY output is cleaned"
    expected = ip.user_ns["docs"].assign(score=ip.user_ns["docs"].w * 7)
    pd.testing.assert_frame_equal(ip.user_ns["scores"], expected)
    row = ledger.get("sml-1")
    assert row["status"] == "SUCCEEDED" and row["backend"] == "sagemaker-local"
    assert row["params"] == {"topics": 7} and row["metrics"] == {"loss": 0.125}
    assert row["verified"] == "signed"
    assert row["platform"]["instance_type"] == "local"
    assert row["platform"]["job_name"].startswith("nbc-sml-1-")
    logs = (Path(row["result_dir"]) / "logs.txt").read_text()
    # SageMaker's code wrote the parameters the runner read: hyperparameters.json.
    assert "parameters from /opt/ml/input/config/hyperparameters.json: {'topics': 7}" in logs
    assert not (Path(row["result_dir"]) / "sagemaker-local").exists(), "its staging is removed"
    assert engine.containers({labels.RUN_ID: "sml-1"}) == []

    # The same image with --local: the same result files (Arrow ones compressed here, since
    # SageMaker's go over a network; their tables are the same).
    ip.run_cell(f"%%remote_run --local --rerun sml-1 -p topics=7\n{cell}")
    local_row = ledger.get("sml-2")
    assert local_row["status"] == "SUCCEEDED" and local_row["image"] == row["image"]
    assert result_contents(Path(row["result_dir"]) / "model") == result_contents(
        Path(local_row["result_dir"]) / "model"
    )
    assert "scores.arrow" in result_contents(Path(row["result_dir"]) / "model")
    assert local_row["metrics"] == row["metrics"]
    df = ip.run_line_magic("remote_runs", "--name sml")
    assert df.set_index("id").loc["sml-1", "instance_type"] == "local"


def test_a_failing_cell_reports_the_remote_traceback(ip, ledger: Ledger) -> None:
    result = ip.run_cell(
        "%%remote_run --backend sagemaker-local --name smfail\n"
        "def train(rate):\n    return 1 / rate\n\nmodel = train(0)"
    )
    err = result.error_in_exec
    assert isinstance(err, RemoteExecutionError)
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert "return 1 / rate" in err.remote_traceback
    row = ledger.get("smfail-1")
    assert row["status"] == "FAILED" and row["exit_code"] == 1
    assert row["failure"].startswith("the cell raised: ZeroDivisionError")
    assert row["verified"] == "signed"


def test_a_sweep_of_three_runs_as_three_training_jobs(ip, ledger: Ledger) -> None:
    result = ip.run_cell(
        "%%remote_run --backend sagemaker-local --name smsweep --sweep rate=0.1,0.2,0.4 "
        "--max-parallel 3\nloss = 1 - rate"
    )
    assert result.error_in_exec is None, result.error_in_exec
    loss = ip.user_ns["loss"]
    assert sorted(zip(loss["rate"], loss["loss"], strict=True)) == [
        (0.1, 0.9),
        (0.2, 0.8),
        (0.4, 0.6),
    ]
    children = ledger.find(parent="smsweep-1")
    assert len(children) == 3 and {c["status"] for c in children} == {"SUCCEEDED"}
    assert len({c["platform"]["job_name"] for c in children}) == 3


def test_timeout_stops_the_training_container(engine: Engine, ip, ledger: Ledger) -> None:
    t0 = time.monotonic()
    result = ip.run_cell(
        "%%remote_run --backend sagemaker-local --name smslow --timeout 3\n"
        "import time\ntime.sleep(120)\ndone = True"
    )
    assert isinstance(result.error_in_exec, RunTimeout)
    assert time.monotonic() - t0 < 60
    row = ledger.get("smslow-1")
    assert row["status"] == "FAILED" and "timed out after 3 s" in row["failure"]
    assert engine.containers({labels.RUN_ID: "smslow-1"}) == []
    assert "done" not in ip.user_ns


def test_a_containerized_kernel_runs_a_cell_under_local_mode(
    engine: Engine,
    sagemaker_kernel_image: str,
    make_kernelspec,
    ledger: Ledger,
    new_images,
    tmp_path,
) -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    # Compose makes networks and binds the guard refuses: this kernel gets the raw socket.
    name = make_kernelspec("nbc-sm-local", image=sagemaker_kernel_image, docker_access="raw")
    nb = new_notebook(
        cells=[
            new_code_cell("import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})"),
            new_code_cell(
                "%%remote_run --backend sagemaker-local --name ksm -p factor=3\n"
                "from nbcontainer_kernel import log_metric\n"
                "scaled = frame * factor\nlog_metric('total', float(scaled.a.sum()))"
            ),
            new_code_cell("print(type(scaled).__name__, scaled.a.tolist())"),
        ]
    )
    execute_notebook(nb, tmp_path, name, timeout=600)
    out = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert out.strip() == "DataFrame [3, 6]"
    row = ledger.get("ksm-1")
    assert row["status"] == "SUCCEEDED" and row["backend"] == "sagemaker-local"
    assert row["metrics"] == {"total": 9.0} and row["verified"] == "signed"
    # Local mode's staging lived under the ledger's directory, at the same path on the host.
    assert not (Path(row["result_dir"]) / "sagemaker-local").exists()
    assert engine.containers({labels.RUN_ID: "ksm-1"}) == []


def test_the_example_notebook_runs_and_both_runs_agree(
    engine: Engine, ledger: Ledger, new_images, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """examples/sagemaker_local.ipynb, executed as a reader would run it (nbclient)."""
    import nbformat

    from tests.integration.conftest import BASE_IMAGE, ROOT

    monkeypatch.setenv("NBCONTAINER_BASE_IMAGE", BASE_IMAGE)
    nb = nbformat.read(ROOT / "examples" / "sagemaker_local.ipynb", as_version=4)
    execute_notebook(nb, tmp_path)
    save_executed(nb, "sagemaker_local.ipynb")
    local, sm = ledger.get("fit-1"), ledger.get("fit-2")
    assert (local["backend"], sm["backend"]) == ("local", "sagemaker-local")
    assert local["status"] == sm["status"] == "SUCCEEDED"
    # The same snapshot: --local ran it without an image, the rerun made its run image.
    assert local["snapshot_digest"] == sm["snapshot_digest"] and not local["image"] and sm["image"]
    assert local["metrics"] == sm["metrics"] and set(local["metrics"]) == {"rmse"}
    compare = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[-1].outputs)
    assert "result.residuals" in compare and "200 rows × 4 columns" in compare


def test_cancel_stops_a_running_training_container(engine: Engine, ip, ledger: Ledger) -> None:
    import threading

    from nbcontainer_kernel.backends.base import Hooks
    from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner
    from nbcontainer_kernel.runtime.errors import RunCancelled

    runner = RemoteRunner(ledger)
    req = RemoteRequest("import time\ntime.sleep(120)\ndone = True", name="smcancel")
    req.backend = "sagemaker-local"
    lines: list[str] = []
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(req, {}, Hooks(on_log=[lambda _rid, line: lines.append(line)]))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not any(line.startswith("[nbcontainer] cell run") for line in lines):
        assert time.monotonic() < deadline and thread.is_alive(), lines
        time.sleep(0.1)
    t0 = time.monotonic()
    runner.cancel("smcancel-1")
    thread.join(60)
    assert time.monotonic() - t0 < 15
    assert len(outcome) == 1 and isinstance(outcome[0], RunCancelled)
    row = ledger.get("smcancel-1")
    assert row["status"] == "CANCELLED" and row["failure"] == "cancelled"
    assert engine.containers({labels.RUN_ID: "smcancel-1"}) == []


def test_one_network_of_local_modes_name_is_left_after_a_race(engine: Engine) -> None:
    """Two compose runs that start at once each make `sagemaker-local`; Docker keeps both,
    and every later `docker-compose up` fails on the ambiguous name. ensure_network (called
    before each job) leaves one."""
    from nbcontainer_kernel.backends.sagemaker_local import NETWORK, NETWORK_LABELS

    engine.api.create_network(NETWORK, driver="bridge", labels=NETWORK_LABELS)
    engine.api.create_network(NETWORK, driver="bridge", labels=NETWORK_LABELS)
    kept = engine.ensure_network(NETWORK, NETWORK_LABELS)
    named = [n["Id"] for n in engine.api.networks(names=[NETWORK]) if n["Name"] == NETWORK]
    assert named == [kept]
    assert engine.ensure_network(NETWORK, NETWORK_LABELS) == kept

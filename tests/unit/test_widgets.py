"""The progress panel's widget states and its text twin's lines."""

from __future__ import annotations

import io

from nbcontainer_kernel.backends.base import Phase
from nbcontainer_kernel.widgets import RunPanel, TextProgress
from nbcontainer_kernel.widgets.panel import MAX_CHILD_ROWS


def test_panel_follows_phases_logs_and_wires_cancel() -> None:
    cancelled = []
    panel = RunPanel("lda-3", on_cancel=lambda: cancelled.append(True))
    assert panel.bar.value == 0 and not panel.cancel.disabled
    panel.on_phase("lda-3", Phase.SNAPSHOT, {})
    assert panel.phase.value == "<b>lda-3</b>: SNAPSHOT" and panel.bar.value == 1
    panel.on_phase("lda-3", Phase.BUILD, {"snapshot": 0.12})
    panel.on_phase("lda-3", Phase.RUNNING, {"snapshot": 0.12, "build": 1.5})
    assert panel.phase.value.endswith("RUNNING") and panel.bar.value == 7
    assert "snapshot 0.12s" in panel.timings.value and "build 1.50s" in panel.timings.value
    panel.on_log("lda-3", "epoch 1")
    panel.on_log("lda-3", "epoch 2")
    assert panel.log.value == "epoch 1\nepoch 2"
    assert panel.logs.selected_index is None, "the log area starts collapsed"
    panel.cancel.click()
    assert (
        cancelled == [True] and panel.cancel.disabled and panel.cancel.description == "Cancelling"
    )
    panel.on_phase("lda-3", Phase.CANCELLED, {})
    assert panel.bar.value == panel.bar.max and panel.bar.bar_style == "warning"


def test_panel_has_a_row_per_sweep_child() -> None:
    panel = RunPanel("sweep-1", describe=lambda child: f"lr={int(child[-1]) / 10}")
    panel.on_phase("sweep-1", Phase.RUNNING, {})
    for child in ("sweep-2", "sweep-3"):
        panel.on_phase(child, Phase.SUBMITTED, {})
    panel.on_phase("sweep-2", Phase.SUCCEEDED, {"submitted": 0.5, "running": 2.0})
    assert panel.rows["sweep-2"].detail.value == "lr=0.2"
    assert panel.rows["sweep-2"].phase.value == "SUCCEEDED 2.5 s"
    panel.on_phase("sweep-3", Phase.FAILED, {})
    assert list(panel.rows) == ["sweep-2", "sweep-3"]
    assert len(panel.children.children) == 2
    assert (
        panel.rows["sweep-2"].phase.value.startswith("SUCCEEDED")
        and panel.rows["sweep-2"].bar.bar_style == "success"
    )
    assert panel.rows["sweep-3"].bar.bar_style == "danger"
    panel.on_log("sweep-3", "boom")
    assert panel.log.value == "[sweep-3] boom"


def test_a_large_sweep_shows_a_summary_and_its_failing_children_first() -> None:
    panel = RunPanel("big-1")
    children = [f"big-{i}" for i in range(2, 10_002)]
    for child in children:
        panel.on_phase(child, Phase.SUBMITTED, {})
    for child in children[:50]:
        panel.on_phase(child, Phase.RUNNING, {})
    for child in children[100:9_000]:
        panel.on_phase(child, Phase.SUCCEEDED, {})
    for child in ("big-5000", "big-9999"):
        panel.on_phase(child, Phase.FAILED, {})
    assert panel.summary.value == (
        "10000 children: 2 failed, 1049 submitted, 50 running, 8899 succeeded"
    )
    shown = [box.children[0].value for box in panel.children.children]
    assert len(shown) == MAX_CHILD_ROWS
    assert shown[:2] == ["big-5000", "big-9999"] and shown[2:] == children[: MAX_CHILD_ROWS - 2]
    assert len(panel.rows) < 100, "rows are made only for the children shown"


def test_text_twin_prints_a_line_per_phase_then_logs() -> None:
    out = io.StringIO()
    text = TextProgress(out)
    text.on_phase("lda-3", Phase.SNAPSHOT, {})
    text.on_phase("lda-3", Phase.BUILD, {"snapshot": 0.25})
    text.on_log("lda-3", "hello from the container")
    text.on_phase("lda-3", Phase.SUCCEEDED, {"snapshot": 0.25, "build": 1.0})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[lda-3] SNAPSHOT (")
    assert lines[1].startswith("[lda-3] BUILD (") and lines[1].endswith("; snapshot 0.2s)")
    assert lines[2] == "hello from the container"
    assert lines[3].startswith("[lda-3] SUCCEEDED") and "build 1.0s" in lines[3]
    assert text.lines == lines


def test_the_panel_shows_the_latest_metrics_and_cancel_looks_disabled_once_ended() -> None:
    panel = RunPanel("fit-1")
    panel.on_phase("fit-1", Phase.RUNNING, {})
    assert panel.cancel.button_style == "warning" and not panel.cancel.disabled
    panel.on_log("fit-1", "[nbcontainer-metric] loss=0.5 step=1")
    panel.on_log("fit-1", "[nbcontainer-metric] acc=0.75")
    panel.on_log("fit-1", "[nbcontainer-metric] loss=0.25 step=2")
    assert "<td>loss</td>" not in panel.metrics.value  # cells are styled
    assert ">loss<" in panel.metrics.value and ">0.25<" in panel.metrics.value
    assert "step 2" in panel.metrics.value and ">0.5<" not in panel.metrics.value
    assert panel.latest["fit-1"] == {"loss": (0.25, 2), "acc": (0.75, None)}
    panel.on_phase("fit-1", Phase.SUCCEEDED, {"running": 1.0})
    assert panel.cancel.disabled and panel.cancel.button_style == ""
    assert panel.cancel.description == "Succeeded" and panel.cancel.icon == "check"


def test_sweep_rows_show_parameters_latest_metric_and_failed_children_first() -> None:
    panel = RunPanel("sw-1", describe=lambda child: {"sw-2": "lr=0.1", "sw-3": "lr=0.2"}[child])
    for child in ("sw-2", "sw-3"):
        panel.on_phase(child, Phase.RUNNING, {})
    panel.on_log("sw-2", "[nbcontainer-metric] loss=0.125 step=4")
    panel.on_phase("sw-3", Phase.FAILED, {"running": 2.0})
    shown = [box.children[0].value for box in panel.children.children]
    assert shown == ["sw-3", "sw-2"], "the failed child first"
    row = panel.rows["sw-2"]
    assert (row.detail.value, row.phase.value, row.metric.value) == (
        "lr=0.1",
        "RUNNING",
        "loss 0.125 (step 4)",
    )
    assert panel.rows["sw-3"].phase.value == "FAILED 2.0 s"


def test_a_large_sweep_lists_only_its_failed_and_running_children() -> None:
    panel = RunPanel("big-1")
    children = [f"big-{i}" for i in range(2, 302)]
    for child in children:
        panel.on_phase(child, Phase.QUEUED, {})
    for child in children[:3]:
        panel.on_phase(child, Phase.RUNNING, {})
    panel.on_phase("big-200", Phase.FAILED, {})
    shown = [box.children[0].value for box in panel.children.children]
    assert shown == ["big-200", "big-2", "big-3", "big-4"]
    assert panel.summary.value == "300 children: 1 failed, 296 queued, 3 running"


def test_the_text_twin_ends_a_child_with_its_parameters_duration_and_metrics() -> None:
    out = io.StringIO()
    text = TextProgress(out, prefix_logs=True, describe=lambda child: "lr=0.1")
    text.on_phase("sw-2", Phase.RUNNING, {"submitted": 0.5})
    text.on_log("sw-2", "[nbcontainer-metric] loss=0.125 step=4")
    text.on_phase("sw-2", Phase.SUCCEEDED, {"submitted": 0.5, "running": 2.0})
    lines = out.getvalue().splitlines()
    assert lines[1] == "[sw-2] [nbcontainer-metric] loss=0.125 step=4"
    assert lines[-1] == "[sw-2] lr=0.1; 2.5 s; loss 0.125 (step 4)"
    single = TextProgress(io.StringIO())
    single.on_log("fit-1", "[nbcontainer-metric] rmse=0.3")
    single.on_phase("fit-1", Phase.SUCCEEDED, {})
    assert single.lines[-1] == "[fit-1] rmse 0.3"

"""Run tables for comparing runs in cells: flat rows with typed parameters, every metric
step kept, runs side by side with differences, plots; over runs made by the real
RemoteRunner on a scripted backend (no daemon)."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from nbcontainer_kernel.backends.base import Hooks, RunSpec
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner
from nbcontainer_kernel.remote.tables import (
    RunsTable,
    compare_frame,
    metrics_frame,
    plot_metric,
    runs_frame,
    summarise,
)
from nbcontainer_kernel.runtime import metrics
from tests.fakes import Script, ScriptedBackend, fake_image_builder, sealed_outputs
from tests.helpers import examples, ipython_shell

_METRICS = threading.Lock()  # log_metric keeps one list per process; children run in threads


def _outputs(values: dict[str, Any], logged: list[tuple[str, float, int | None]]):
    """A run's outputs: `values` as results, and metrics logged as the cell would."""
    write = sealed_outputs(values)

    def outputs(spec: RunSpec, dest: Path) -> None:
        with _METRICS:
            _write(spec, dest)

    def _write(spec: RunSpec, dest: Path) -> None:
        metrics.reset()
        for name, value, step in logged:
            metrics.log_metric(name, value, step=step)
        try:
            write(spec, dest)
        finally:
            metrics.reset()

    return outputs


def _train(spec: RunSpec) -> Script:
    """A 'training' whose loss falls with the rate; its frame gains a column at high rates."""
    rate = spec.params.get("rate", 0.1)
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [rate, 2 * rate, 3 * rate]})
    if rate > 0.3:
        frame = frame.assign(extra=1)
    steps: list[tuple[str, float, int | None]] = [("loss", 1.0 - rate * s, s) for s in range(3)]
    steps.append(("acc", 0.5 + rate, None))
    return Script(outputs=_outputs({"frame": frame, "best": rate * 10}, steps))


@pytest.fixture
def runs(ledger: Ledger, backend: ScriptedBackend) -> list[str]:
    """Two single runs and a sweep of three, through the real RemoteRunner."""
    backend.scripts = _train
    runner = RemoteRunner(ledger, image_builder=fake_image_builder)
    ns: dict[str, Any] = {}
    for rate in (0.1, 0.2):
        req = RemoteRequest(
            cell="frame = ...", backend="scripted", name="fit", params={"rate": rate}
        )
        runner.run(req, ns, Hooks())
    sweep = [{"rate": r, "tag": t} for r, t in ((0.1, "a"), (0.2, "b"), (0.4, "c"))]
    runner.run(
        RemoteRequest(cell="frame = ...", backend="scripted", name="sw", sweep=sweep), ns, Hooks()
    )
    return ["fit-1", "fit-2"]


def test_runs_are_flat_rows_with_typed_params_rounded_times_and_last_metrics(
    ledger: Ledger, runs: list[str]
) -> None:
    frame = runs_frame(ledger, name="fit")
    assert isinstance(frame, RunsTable) and list(frame.id) == ["fit-1", "fit-2"]
    assert list(frame.columns[:7]) == [
        "id",
        "name",
        "kind",
        "backend",
        "status",
        "created",
        "duration",
    ]
    assert frame["param.rate"].tolist() == [0.1, 0.2] and frame["param.rate"].dtype == float
    assert frame["metric.loss"].tolist() == [0.8, 0.6]  # the last step's value
    assert frame["metric.acc"].tolist() == [0.6, 0.7]
    times = [c for c in frame.columns if c.startswith("time.")]
    assert "time.running" in times
    for col in times + ["duration"]:
        assert all(v == round(v, 2) for v in frame[col].dropna())
    assert frame["created"].dt.tz is not None  # local time, with its zone
    assert frame["exit_code"].tolist() == [0, 0] and str(frame["exit_code"].dtype) == "Int64"
    assert frame["image"].tolist()[0].startswith("run:")
    assert not any(c.startswith("instance") for c in frame.columns)  # no platform billed
    # A slice is a plain DataFrame; the table itself is shown with the status coloured.
    assert type(frame[["id"]]) is pd.DataFrame
    assert "color: #1a7f37; font-weight: bold'>SUCCEEDED<" in frame._repr_html_()


def test_the_table_escapes_what_runs_recorded(ledger: Ledger) -> None:
    ledger.create("x", "scripted", params={"note": "<img src=x onerror=alert(1)>"})
    shown = runs_frame(ledger)._repr_html_()
    assert "<img" not in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown


def test_filters_select_runs(ledger: Ledger, runs: list[str]) -> None:
    assert runs_frame(ledger, last=2).id.tolist() == ["sw-3", "sw-4"]
    assert runs_frame(ledger, last=0).empty
    assert runs_frame(ledger, sweep="sw-1").id.tolist() == ["sw-2", "sw-3", "sw-4"]
    assert runs_frame(ledger, backend="local").empty
    assert len(runs_frame(ledger, backend="scripted")) == 6
    assert runs_frame(ledger, status="failed").empty
    assert list(runs_frame(ledger, name="nothing").columns) == [
        "id",
        "name",
        "kind",
        "backend",
        "status",
        "created",
        "duration",
    ]


def test_a_sweep_parent_says_what_was_swept_and_leaves_its_children_the_values(
    ledger: Ledger, runs: list[str]
) -> None:
    parent = runs_frame(ledger, name="sw").set_index("id").loc["sw-1"]
    assert parent["sweep"] == "rate=0.1,0.2,0.4 tag=a,b,c" and parent["children"] == 3
    assert pd.isna(parent["param.rate"]) and pd.isna(parent["param.tag"])
    children = runs_frame(ledger, sweep="sw-1")
    assert children["param.rate"].tolist() == [0.1, 0.2, 0.4]
    assert children["param.tag"].tolist() == ["a", "b", "c"]
    assert children["sweep"].isna().all() if "sweep" in children else True


def test_the_table_filters_sorts_and_groups_as_a_user_would(
    ledger: Ledger, runs: list[str]
) -> None:
    """Every param.* and metric.* column holds one kind of value (a sweep's parent row
    included), so comparisons, sorting and grouping work on the whole table."""
    table = runs_frame(ledger)
    for column in [c for c in table.columns if c.startswith(("param.", "metric."))]:
        kinds = {type(v) for v in table[column].dropna()}
        assert len(kinds) <= 1, (column, kinds)
    assert table["param.rate"].dtype == float and table["metric.loss"].dtype == float
    fast = table[table["param.rate"] > 0.15]
    assert sorted(fast.id) == ["fit-2", "sw-3", "sw-4"]
    assert table.sort_values("param.rate", na_position="last").id.tolist()[-1] == "sw-1"
    by_rate = table.groupby("param.rate")["metric.acc"].mean()
    assert by_rate.loc[0.1] == pytest.approx(0.6) and len(by_rate) == 3
    assert table[table["param.tag"] == "b"].id.tolist() == ["sw-3"]
    sweeps = table[table["sweep"].notna()]
    assert sweeps.id.tolist() == ["sw-1"] and sweeps["children"].tolist() == [3]


def test_a_parameter_whose_value_is_a_list_stays_a_parameter(ledger: Ledger) -> None:
    """Not every list is a sweep: a run given layers=[64, 32] keeps it as its value, and
    so does a sweep parent whose children all have that same list."""
    single = ledger.create("net", "scripted", params={"layers": [64, 32]})
    parent = ledger.create("net", "scripted", params={"layers": [64, 32], "lr": [0.1, 0.2]})
    for lr in (0.1, 0.2):
        ledger.create("net", "scripted", params={"layers": [64, 32], "lr": lr}, parent=parent)
    table = runs_frame(ledger, name="net").set_index("id")
    assert table.loc[single, "param.layers"] == [64, 32]
    assert table.loc[parent, "param.layers"] == [64, 32]
    assert table.loc[parent, "sweep"] == "lr=0.1,0.2" and pd.isna(table.loc[parent, "param.lr"])


_values = st.one_of(
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.booleans(),
)


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    params=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), _values, max_size=5
    )
)
def test_every_parameter_keeps_its_type_in_the_table(
    params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    ledger = Ledger(tmp_path_factory.mktemp("l") / "runs.db")
    ledger.create("p", "scripted", params=params)
    frame = runs_frame(ledger)
    kinds = {
        bool: pd.api.types.is_bool_dtype,
        int: pd.api.types.is_integer_dtype,
        float: pd.api.types.is_float_dtype,
        str: lambda d: pd.api.types.is_string_dtype(d) or pd.api.types.is_object_dtype(d),
    }
    for name, value in params.items():
        column = frame[f"param.{name}"]
        assert column.iloc[0] == value and kinds[type(value)](column.dtype), (name, column.dtype)


def test_every_metric_step_is_kept_long_form(ledger: Ledger, runs: list[str]) -> None:
    points = metrics_frame(["fit-2", "fit-1"], ledger)
    assert list(points.columns) == ["run", "name", "step", "value", "time"]
    assert points.run.tolist()[:4] == ["fit-2"] * 4, "in the order the runs were asked for"
    loss = points[(points.run == "fit-1") & (points.name == "loss")]
    assert loss.step.tolist() == [0, 1, 2] and loss.value.round(6).tolist() == [1.0, 0.9, 0.8]
    acc = points[(points.run == "fit-1") & (points.name == "acc")]
    assert acc.step.isna().all() and acc.value.tolist() == [0.6]
    assert points.time.dt.tz is not None and points.time.notna().all()
    assert metrics_frame("fit-1", ledger).run.unique().tolist() == ["fit-1"]


def test_compare_puts_differing_params_first_and_metrics_with_their_difference(
    ledger: Ledger, runs: list[str]
) -> None:
    ledger.update("fit-2", params={"rate": 0.2, "epochs": 1})
    ledger.update("fit-1", params={"rate": 0.1, "epochs": 1})
    frame = compare_frame(["fit-1", "fit-2"], ledger)
    rows = list(frame.index)
    assert rows[:2] == ["param.rate", "param.epochs"]  # differing first
    assert frame.loc["metric.loss"].tolist() == [0.8, 0.6]
    assert frame.loc["metric.loss Δ"].tolist() == [0.0, -0.2]
    assert frame.loc["result.best"].tolist() == [1.0, 2.0]
    assert frame.loc["result.frame", "fit-1"].startswith("3 rows × 2 columns")
    assert "y: mean 0.4" in frame.loc["result.frame", "fit-2"]
    assert "(mean +0.2)" in frame.loc["result.frame", "fit-2"]


def test_compare_of_a_sweep_names_added_columns_and_missing_metrics(
    ledger: Ledger, runs: list[str]
) -> None:
    ledger.update("sw-3", metrics={"loss": 0.6})  # acc never logged by this one
    frame = compare_frame(["sw-2", "sw-3", "sw-4"], ledger)
    assert frame.loc["metric.acc"].tolist()[1] is None
    assert frame.loc["metric.acc Δ"].tolist()[1] is None
    assert "added: extra" in frame.loc["result.frame", "sw-4"]
    assert frame.loc["param.tag"].tolist() == ["a", "b", "c"]


def test_compare_says_why_a_run_s_results_are_refused(ledger: Ledger, runs: list[str]) -> None:
    metrics_json = Path(ledger.get("fit-2")["result_dir"]) / "model" / "metrics.json"
    metrics_json.write_text(metrics_json.read_text() + " ")
    frame = compare_frame(["fit-1", "fit-2"], ledger)
    assert frame.loc["result", "fit-2"].startswith("refused: model/metrics.json")
    assert frame.loc["result.best", "fit-1"] == 1.0


@pytest.mark.parametrize(
    ("value", "first", "expected"),
    [
        (3, None, 3),
        (0.1234567891, None, 0.123457),
        ("text", None, "text"),
        (None, None, None),
        ([1, 2, 3], None, "list of 3"),
        ({"a": 1}, None, "dict of 1"),
        (object(), None, "object"),
        (3 + 4j, None, "complex"),
        (pd.Series([1.0, 3.0], name="s"), None, "2 rows × 1 columns; s: mean 2, min 1, max 3"),
        (
            pd.DataFrame({"a": [1, 2], "c": ["x", "y"]}),
            pd.DataFrame({"a": [0, 0], "b": [1, 1]}),
            "2 rows × 2 columns; added: c; removed: b; a: mean 1.5, min 1, max 2 (mean +1.5)",
        ),
    ],
)
def test_results_are_summarised_by_kind(value: Any, first: Any, expected: Any) -> None:
    assert summarise(value, first) == expected


def test_other_objects_show_their_type_and_stored_size() -> None:
    class Model:
        """A result with neither shape nor length."""

    assert summarise(Model(), stored=12_345) == "Model, 12.3 kB stored"
    assert summarise(Model(), stored=999) == "Model, 999 B stored"
    from matplotlib.figure import Figure

    assert summarise(Figure(figsize=(6, 3.5))) == "Figure 6×3.5 in"


def test_array_like_results_show_their_shape() -> None:
    import numpy as np

    assert summarise(np.zeros((2, 3))) == "ndarray of shape (2, 3)"


def test_plots_lines_over_steps_points_over_a_swept_parameter_or_bars(
    ledger: Ledger, runs: list[str]
) -> None:
    fig = plot_metric(["fit-1", "fit-2"], "loss", ledger)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["fit-1", "fit-2"]
    assert list(lines[1].get_ydata().round(6)) == [1.0, 0.8, 0.6]
    fig = plot_metric(["sw-2", "sw-3", "sw-4"], "acc", ledger, swept="rate")
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.1, 0.2, 0.4] and fig.axes[0].get_xlabel() == "rate"
    fig = plot_metric(["fit-1", "fit-2"], "acc", ledger)
    assert [p.get_height() for p in fig.axes[0].patches] == [0.6, 0.7]


# -------------------------------------------------------------------- the magics
@pytest.fixture
def ip(ledger: Ledger, runs: list[str]):
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "nbcontainer_kernel")
    shell.run_line_magic("config", f"RemoteRun.ledger_path = {str(ledger.path)!r}")
    return shell


def test_the_magics_give_the_same_frames(ip, ledger: Ledger) -> None:
    pd.testing.assert_frame_equal(
        pd.DataFrame(ip.run_line_magic("remote_runs", "--sweep sw-1 --last 2")),
        pd.DataFrame(runs_frame(ledger, sweep="sw-1", last=2)),
    )
    frame = ip.run_line_magic("remote_compare", "--sweep sw-1")
    assert list(frame.columns) == ["sw-2", "sw-3", "sw-4"]
    frame = ip.run_line_magic("remote_compare", "fit-1 fit-2")
    assert list(frame.columns) == ["fit-1", "fit-2"]


@pytest.mark.parametrize(
    ("magic", "line", "says"),
    [
        ("remote_runs", "--last -1", "--last must be 0 or more"),
        ("remote_runs", "--sweep nope-1", "nope-1"),
        ("remote_compare", "", "usage: %remote_compare"),
        ("remote_compare", "fit-1 --sweep sw-1", "usage: %remote_compare"),
        ("remote_compare", "--sweep fit-1", "fit-1 is not a sweep"),
        ("remote_compare", "fit-1 nope-9", "nope-9"),
    ],
)
def test_bad_arguments_to_the_table_magics_are_usage_errors(
    ip, magic: str, line: str, says: str
) -> None:
    with pytest.raises(UsageError, match=says):
        ip.run_line_magic(magic, line)


def test_created_is_local_time(ledger: Ledger, runs: list[str]) -> None:
    created = runs_frame(ledger).created.iloc[0]
    assert created.tzinfo is not None
    assert created.utcoffset() == datetime.datetime.now().astimezone().utcoffset()
    assert abs(created.timestamp() - datetime.datetime.now().timestamp()) < 600

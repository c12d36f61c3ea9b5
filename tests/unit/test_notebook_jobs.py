"""Notebook runs without a daemon: recorded values, parameter and sweep checks, schedule
expressions, the ledger's notebook rows, the terminal progress and the CLI's usage errors."""

from __future__ import annotations

import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.backends.base import Phase
from nbcontainer_kernel.backends.schedules import check_expression, trigger_submit
from nbcontainer_kernel.cli import main
from nbcontainer_kernel.cli.progress import TerminalProgress
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.notebook_runs import (
    MAX_ARRAY,
    NotebookJob,
    parse_value,
    read_sweep_file,
    recorded_frame,
    sweep_axis,
)
from nbcontainer_kernel.runtime.errors import InvalidOption, LedgerError
from nbcontainer_kernel.runtime.recorded import (
    RECORD_MIME,
    RECORD_PREFIX,
    SCRAP_MIME,
    check_name,
    record,
    recorded_in,
)
from tests.helpers import examples, new_code_cell, new_notebook

# ---------------------------------------------------------------- recorded values
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,20}", fullmatch=True)


@settings(max_examples=examples(100), deadline=None)
@given(name=names, value=json_values)
def test_a_value_recorded_outside_ipython_comes_back_exactly(name: str, value: Any) -> None:
    import contextlib
    from unittest import mock

    out = io.StringIO()
    # Outside IPython (another test of this worker may have started a shell).
    with contextlib.redirect_stdout(out), mock.patch("IPython.get_ipython", lambda: None):
        record(name, value)
    printed = out.getvalue()
    assert printed.startswith(RECORD_PREFIX)
    cells = [{"outputs": [{"output_type": "stream", "name": "stdout", "text": printed}]}]
    assert recorded_in(cells) == {name: value}


def test_every_way_a_notebook_records_is_read_and_the_last_value_of_a_name_wins() -> None:
    cells: list[dict[str, Any]] = [
        {"outputs": [{"output_type": "display_data", "data": {RECORD_MIME: {"mae": 0.5}}}]},
        {"outputs": [{"output_type": "stream", "text": f'{RECORD_PREFIX}{{"mae": 0.25}}\n'}]},
        {
            "outputs": [
                {
                    "output_type": "display_data",
                    "data": {SCRAP_MIME: {"name": "rows", "data": 12, "encoder": "json"}},
                },
                # scrapbook's pandas and display scraps are not table values: left out
                {
                    "output_type": "display_data",
                    "data": {SCRAP_MIME: {"name": "df", "data": "...", "encoder": "pandas"}},
                },
            ]
        },
        {"outputs": [{"output_type": "display_data", "data": {RECORD_MIME: {"bad name": 1}}}]},
        {"outputs": [{"output_type": "stream", "text": f"{RECORD_PREFIX}not json\n"}]},
        {"cell_type": "markdown"},
    ]
    assert recorded_in(cells) == {"mae": 0.25, "rows": 12}


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("mae", True),
        ("_x", True),
        ("a.b:c-d", True),
        ("1x", False),
        ("", False),
        ("a b", False),
        ("x" * 129, False),
        ("é", False),
        (3, False),
    ],
)
def test_a_recorded_name_must_be_a_column_name(name: Any, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(ValueError, match="recorded value's name"):
            check_name(name)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", {"k": object()}])
def test_a_value_json_cannot_hold_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(TypeError, match=r"record\('x', \.\.\.\) takes JSON values"):
        record("x", value)


def test_numpy_scalars_are_recorded_as_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    np = pytest.importorskip("numpy")
    assert record("n", np.float32(0.5)) == 0.5 and record("i", np.int64(3)) == 3
    assert "0.5" in capsys.readouterr().out


# ------------------------------------------------------------- parameter checks
def _notebook(tmp_path: Path, params: str | None, name: str = "study") -> str:
    cells = [new_code_cell("print(1)")]
    if params is not None:
        cell = new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        cells.insert(0, cell)
    path = tmp_path / f"{name}.ipynb"
    import nbformat

    nbformat.write(new_notebook(cells=cells), path)
    return str(path)


def test_an_unknown_parameter_is_refused_naming_it_and_the_declared_ones(tmp_path: Path) -> None:
    nb = _notebook(tmp_path, "alpha = 0.1\nlabel = 'x'")
    with pytest.raises(InvalidOption, match=r"-p.*'beta'.*alpha, label"):
        NotebookJob(notebooks=[nb], params={"beta": 1}).request()
    with pytest.raises(InvalidOption, match=r"--sweep.*'gamma'"):
        NotebookJob(notebooks=[nb], sweep_axes=[("gamma", [1, 2])]).request()
    req = NotebookJob(notebooks=[nb], params={"alpha": 2}, sweep_axes=[("label", ["a"])]).request()
    assert req.kind == "notebook" and req.params == {"alpha": 2}
    assert req.sweep == [{"label": "a"}] and req.name == "study" and req.out == []


def test_a_notebook_without_a_parameters_cell_takes_any_name(tmp_path: Path) -> None:
    nb = _notebook(tmp_path, None)
    assert NotebookJob(notebooks=[nb], params={"anything": 1}).request().params == {"anything": 1}


def test_a_sweep_file_column_the_notebook_does_not_declare_is_named(tmp_path: Path) -> None:
    nb = _notebook(tmp_path, "alpha = 0.1")
    rows = tmp_path / "rows.csv"
    rows.write_text("alpha,beta\n0.1,1\n0.2,2\n")
    with pytest.raises(InvalidOption, match=r"--sweep-file .*rows.csv column.*'beta'"):
        NotebookJob(notebooks=[nb], sweep_file=str(rows)).request()


@pytest.mark.parametrize("content", ["", "alpha\n"])
def test_an_empty_sweep_file_is_one_line_naming_the_file(tmp_path: Path, content: str) -> None:
    rows = tmp_path / "empty.csv"
    rows.write_text(content)
    with pytest.raises(InvalidOption, match=r"empty.csv.*no rows") as caught:
        read_sweep_file(rows)
    assert "\n" not in str(caught.value)


def test_sweep_files_keep_their_types_and_cross_the_grid(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"alpha": [0.1, 0.2], "n": [1, 2], "label": ["a", "b"]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.csv", "rows.parquet"):
        rows = read_sweep_file(tmp_path / name)
        assert rows == [{"alpha": 0.1, "n": 1, "label": "a"}, {"alpha": 0.2, "n": 2, "label": "b"}]
        assert isinstance(rows[0]["n"], int)
    job = NotebookJob(sweep_file=str(tmp_path / "rows.csv"), sweep_axes=[("seed", [1, 2, 3])])
    assert len(job.rows()) == 6 and job.rows()[1] == {"alpha": 0.1, "n": 1, "label": "a", "seed": 2}


def test_a_sweep_larger_than_an_array_job_is_refused_before_anything_is_built(
    tmp_path: Path,
) -> None:
    nb = _notebook(tmp_path, "i = 0")
    big = NotebookJob(notebooks=[nb], sweep_axes=[("i", list(range(MAX_ARRAY + 1)))])
    with pytest.raises(InvalidOption, match="at most 10,000 children"):
        big.request()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.5", 0.5),
        ("3", 3),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ('"3"', "3"),
        ("abc", "abc"),
        ("", ""),
        ("null", None),
    ],
)
def test_command_line_values_are_json_where_they_parse(text: str, value: Any) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize("spec", ["alpha", "=1,2", "alpha=", "alpha= "])
def test_a_sweep_axis_needs_a_name_and_values(spec: str) -> None:
    with pytest.raises(InvalidOption, match="NAME=V1,V2"):
        sweep_axis(spec)


def test_a_pipeline_needs_notebooks_of_different_names(tmp_path: Path) -> None:
    from nbcontainer_kernel.remote.notebooks import notebook_snapshot

    (tmp_path / "b").mkdir()
    one = _notebook(tmp_path, "a = 1")
    two = _notebook(tmp_path / "b", "a = 2")
    with pytest.raises(InvalidOption, match="different names"):
        notebook_snapshot([one, two], requirements=None, dest=tmp_path / "snap")


# ---------------------------------------------------------- schedule expressions
ACCEPTED = [
    ("cron(0 6 * * ? *)", None, "cron(0 6 * * ? *)"),
    ("0 6 * * ? *", None, "cron(0 6 * * ? *)"),
    ("cron(15 10 ? * MON-FRI *)", None, "cron(15 10 ? * MON-FRI *)"),
    ("cron(0/15 * * * ? *)", None, "cron(0/15 * * * ? *)"),
    ("cron(0 18 L * ? *)", None, "cron(0 18 L * ? *)"),
    (None, "1 day", "rate(1 day)"),
    (None, "rate(5 minutes)", "rate(5 minutes)"),
    (None, "12 hours", "rate(12 hours)"),
]
REFUSED = [
    ("0 6 * * * *", None, "one of day-of-month and day-of-week"),
    ("0 6 ? * ? *", None, "one of day-of-month and day-of-week"),
    ("0 6 * *", None, "6 fields"),
    ("61 6 * * ? *", None, "minutes field is 0-59"),
    ("0 24 * * ? *", None, "hours field is 0-23"),
    ("0 6 * FOO ? *", None, "month field"),
    (None, "1 days", "'1 day'"),
    (None, "5 minute", "'5 minutes'"),
    (None, "0 hours", "positive"),
    (None, "1 week", "N minutes|hours|days"),
    (None, None, "one of --cron or --rate"),
    ("0 6 * * ? *", "1 day", "one of --cron or --rate"),
]


@pytest.mark.parametrize(("cron", "rate", "want"), ACCEPTED)
def test_expressions_eventbridge_takes_are_taken(
    cron: str | None, rate: str | None, want: str
) -> None:
    assert check_expression(cron, rate) == want


@pytest.mark.parametrize(("cron", "rate", "why"), REFUSED)
def test_expressions_eventbridge_refuses_are_refused_with_the_reason(
    cron: str | None, rate: str | None, why: str
) -> None:
    with pytest.raises(InvalidOption, match=why.replace("(", r"\(").replace("|", r"\|")):
        check_expression(cron, rate)


@settings(max_examples=examples(200), deadline=None)
@given(
    n=st.integers(-5, 10_000), unit=st.sampled_from(["minute", "hour", "day"]), plural=st.booleans()
)
def test_a_rate_is_taken_exactly_when_its_unit_agrees_with_its_number(
    n: int, unit: str, plural: bool
) -> None:
    text = f"{n} {unit}{'s' if plural else ''}"
    if n >= 1 and plural == (n != 1):
        assert check_expression(None, text) == f"rate({text})"
    else:
        with pytest.raises(InvalidOption):
            check_expression(None, text)


def test_a_triggers_transformed_input_becomes_the_submit_request_eventbridge_makes() -> None:
    target = {
        "Arn": "arn:aws:batch:us-east-1:1:job-queue/q",
        "BatchParameters": {"JobDefinition": "jd:1", "JobName": "nbc-sched-x"},
    }
    got = trigger_submit(
        target,
        {
            "Parameters": {"input_bucket": "b", "input_key": "k/1"},
            "ContainerOverrides": {"Environment": [{"Name": "A", "Value": "1"}]},
        },
    )
    assert got == {
        "jobName": "nbc-sched-x",
        "jobQueue": "arn:aws:batch:us-east-1:1:job-queue/q",
        "jobDefinition": "jd:1",
        "parameters": {"input_bucket": "b", "input_key": "k/1"},
        "containerOverrides": {"environment": [{"Name": "A", "Value": "1"}]},
    }


# ------------------------------------------------------------------- the ledger
def test_notebook_runs_sit_beside_cell_runs_and_filter_by_kind_schedule_and_last(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "runs.db")
    cell = ledger.create("fit", "local")
    nb = ledger.create("study", "batch", kind="notebook", notebook="/x/study.ipynb")
    sched = ledger.create("daily", "batch", kind="notebook", schedule="daily")
    assert ledger.get(cell)["kind"] == "cell" and ledger.get(cell)["recorded"] == {}
    assert [r["id"] for r in ledger.find(kind="notebook")] == [nb, sched]
    assert [r["id"] for r in ledger.find(schedule="daily")] == [sched]
    assert [r["id"] for r in ledger.find(last=2)] == [nb, sched]
    assert ledger.find(last=0) == []
    ledger.update(nb, recorded={"mae": 0.5, "tags": ["a"]})
    assert ledger.get(nb)["recorded"] == {"mae": 0.5, "tags": ["a"]}
    with pytest.raises(LedgerError, match="run kind 'job'"):
        ledger.create("x", "local", kind="job")


def test_a_ledger_of_the_previous_schema_gets_the_new_columns_and_keeps_its_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    Ledger(path).create("fit", "local")
    db = sqlite3.connect(path)
    for column in ("kind", "recorded", "schedule"):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    ledger = Ledger(path)
    row = ledger.get("fit-1")
    assert row["kind"] == "cell" and row["recorded"] == {} and row["schedule"] is None
    assert ledger.create("study", "local", kind="notebook") == "study-1"


def test_a_sweeps_recorded_values_are_one_row_per_child_failed_ones_kept(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs.db")
    parent = ledger.create("study", "local", kind="notebook", params={"alpha": [0.1, 5]})
    for alpha, status, got in ((0.1, "SUCCEEDED", {"mae": 0.2}), (5, "FAILED", {"mae": 10})):
        child = ledger.create(
            "study", "local", kind="notebook", parent=parent, params={"alpha": alpha, "l": [1]}
        )
        ledger.update(child, status=status, recorded=got)
    frame = recorded_frame(ledger, parent)
    assert list(frame.index) == ["study-2", "study-3"]
    assert frame["status"].tolist() == ["SUCCEEDED", "FAILED"]
    assert frame["alpha"].tolist() == [0.1, 5] and frame["mae"].tolist() == [0.2, 10]
    assert frame["l"].tolist() == ["[1]", "[1]"]  # lists as their JSON text


# ------------------------------------------------------------------ progress
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_a_sweeps_progress_counts_children_and_names_each_failed_one(tty: bool) -> None:
    out = _Tty() if tty else io.StringIO()
    progress = TerminalProgress(out, describe=lambda child: f'{{"alpha": {child[-1]}}}')
    hooks = progress.hooks
    hooks.phase("s-1", Phase.SNAPSHOT, {})
    for child in ("s-2", "s-3", "s-4"):
        hooks.phase(child, Phase.SUBMITTED, {})
    hooks.phase("s-2", Phase.SUCCEEDED, {})
    hooks.phase("s-3", Phase.FAILED, {})
    hooks.phase("s-4", Phase.SUCCEEDED, {})
    hooks.phase("s-1", Phase.FAILED, {"snapshot": 0.1})
    text = out.getvalue()
    assert 'failed: s-3 {"alpha": 3}' in text
    assert "3/3 1 failed · 2 succeeded" in text.replace("\r\x1b[K", "\n")
    assert text.rstrip().splitlines()[-1].endswith("(snapshot 0.1 s)")
    assert ("\x1b[K" in text) == tty  # redrawn in place only on a terminal


def test_a_single_runs_log_lines_go_to_the_log_stream_and_childrens_do_not() -> None:
    err, log = io.StringIO(), io.StringIO()
    progress = TerminalProgress(err, logs=log)
    progress.hooks.phase("r-1", Phase.SNAPSHOT, {})
    progress.hooks.log("r-1", "hello")
    progress.hooks.log("r-2", "a child's line")
    assert log.getvalue() == "hello\n" and "hello" not in err.getvalue()


# ---------------------------------------------------------------- the CLI
def test_run_usage_errors_are_one_line_before_anything_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(tmp_path / "runs.db"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # nothing may reach Docker
    nb = _notebook(tmp_path, "alpha = 0.1")
    for argv, said in (
        (["run", nb, "-p", "beta", "1"], "declares no parameter 'beta'"),
        (["run", nb, "--sweep", "alpha"], "expected NAME=V1,V2"),
        (["run", nb, "--sweep-file", str(tmp_path / "none.csv")], "no such file"),
        (["run", nb, "img:1"], "notebooks or one image"),
        (["run", nb, "--set", "queue"], "SETTING=VALUE"),
        (["run", nb, "--sweep", "alpha=1,2", "--no-wait"], "a sweep is waited on"),
        (["schedule", "create", "x", nb, "--cron", "0 6 * * * *"], "day-of-week"),
        (["schedule", "create", "bad name", nb, "--rate", "1 day"], "schedule name"),
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "runs.db").exists() or Ledger(tmp_path / "runs.db").find() == []


def test_runs_result_and_logs_read_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(tmp_path / "runs.db"))
    ledger = Ledger(tmp_path / "runs.db")
    parent = ledger.create("study", "local", kind="notebook", params={"alpha": [1, 2]})
    for alpha in (1, 2):
        child = ledger.create(
            "study", "local", kind="notebook", parent=parent, params={"alpha": alpha}
        )
        ledger.update(child, status="SUCCEEDED", recorded={"mae": alpha / 10})
    ledger.create("fit", "local")
    run_dir = ledger.run_dir(parent)
    run_dir.mkdir(parents=True)
    (run_dir / "logs.txt").write_text("one\ntwo\n")

    assert main(["runs", "--kind", "notebook"]) == 0
    table = capsys.readouterr().out
    assert "study-1" in table and "fit-1" not in table and "study-2" not in table
    assert main(["runs", "--json", "--children", "--last", "2"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["study-3", "fit-1"]
    assert main(["result", parent, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["alpha"], r["mae"]) for r in rows] == [
        ("study-2", 1, 0.1),
        ("study-3", 2, 0.2),
    ]
    for name in ("r.csv", "r.parquet"):
        assert main(["result", parent, "-w", str(tmp_path / name)]) == 0
    import pandas as pd

    assert pd.read_parquet(tmp_path / "r.parquet")["mae"].tolist() == [0.1, 0.2]
    assert math.isclose(pd.read_csv(tmp_path / "r.csv")["mae"].sum(), 0.3)
    assert main(["logs", parent]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    # A name stands for its newest run (not a sweep's child).
    assert main(["logs", "study"]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    newer = ledger.create("study", "local", kind="notebook")
    ledger.update(newer, recorded={"mae": 9})
    assert main(["result", "study", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"run": newer, "status": "SNAPSHOT", "mae": 9}]
    assert main(["result", "nope-1"]) == 1
    assert "nope-1" in capsys.readouterr().err


def test_compare_shows_what_notebook_runs_recorded_with_differences(tmp_path: Path) -> None:
    from nbcontainer_kernel.remote.tables import compare_frame

    ledger = Ledger(tmp_path / "runs.db")
    a = ledger.create("study", "local", kind="notebook", params={"alpha": 1})
    b = ledger.create("study", "local", kind="notebook", params={"alpha": 2})
    ledger.update(a, recorded={"mae": 0.5, "label": "x"})
    ledger.update(b, recorded={"mae": 0.25, "label": "y", "extra": [1]})
    frame = compare_frame([a, b], ledger)
    assert frame.loc["recorded.mae", b] == 0.25 and frame.loc["recorded.mae Δ", b] == -0.25
    assert frame.loc["recorded.label", b] == "y" and "recorded.label Δ" not in frame.index
    assert frame.loc["recorded.extra", b] == "[1]" and frame.loc["recorded.extra", a] is None
    assert frame.loc["kind", a] == "notebook"

"""Bad arguments to the magics are UsageErrors, caught before anything runs."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from nbcontainer_kernel.magics.remote_run import parse_value
from tests.helpers import ipython_shell


@pytest.fixture(scope="module")
def ip(tmp_path_factory: pytest.TempPathFactory):
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "nbcontainer_kernel")
    shell.run_line_magic(
        "config", f"RemoteRun.ledger_path = {str(tmp_path_factory.mktemp('ledger') / 'runs.db')!r}"
    )
    return shell


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("--backend nowhere", "unknown backend 'nowhere'"),
        ("--local --backend batch", "exclusive"),
        ("-p topics", "NAME=VALUE"),
        ("-p 1x=2", "NAME=VALUE"),
        ("--sweep topics", "--sweep expects"),
        ("--vars a --all-vars", "exclusive"),
        ("--out 'not a name'", "not a variable name"),
        ("--max-parallel 0", "at least 1"),
        ("--rerun nope-7", "No run 'nope-7'"),
        ("--bogus-flag", "unrecognized arguments"),
        ("--cpus many", "invalid float value"),
    ],
)
def test_bad_arguments_are_usage_errors(ip, line: str, fragment: str) -> None:
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("remote_run", line, "x = 1")
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "magic, line",
    [
        ("remote_result", "nope-1"),
        ("remote_logs", "nope-1"),
        ("remote_attach", "nope-1"),
        ("remote_cancel", "nope-1"),
        ("remote_compare", "nope-1 nope-2"),
    ],
)
def test_unknown_run_ids_are_usage_errors(ip, magic: str, line: str) -> None:
    with pytest.raises(UsageError, match="No run 'nope-1'"):
        ip.run_line_magic(magic, line)


def test_help_documents_every_flag(ip) -> None:
    doc = ip.find_cell_magic("remote_run").__doc__
    for flag in (
        "--local",
        "--backend",
        "--param",
        "--sweep",
        "--max-parallel",
        "--vars",
        "--all-vars",
        "--out",
        "--name",
        "--image",
        "--cpus",
        "--memory",
        "--gpus",
        "--timeout",
        "--no-wait",
        "--rerun",
    ):
        assert flag in doc, flag


def test_parameter_values_are_literals_or_strings() -> None:
    assert parse_value("50") == 50 and parse_value("0.5") == 0.5 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("adam") == "adam"


def test_remote_runs_is_a_dataframe_even_when_empty(ip) -> None:
    df = ip.run_line_magic("remote_runs", "")
    assert df.empty
    assert list(df.columns) == ["id", "name", "kind", "backend", "status", "created", "duration"]


@pytest.mark.parametrize(
    ("section", "flags"),
    [
        (
            "Backend: where it runs",
            ["--local", "--backend", "--rerun", "--instance-type", "--spot"],
        ),
        ("Parameters and sweeps", ["--param", "--sweep", "--sweep-file", "--max-parallel"]),
        ("Variables: what travels", ["--vars", "--all-vars", "--out"]),
        ("Resources", ["--cpus", "--memory", "--gpus", "--timeout"]),
        ("Waiting", ["--no-wait"]),
    ],
)
def test_the_help_of_remote_run_reads_in_sections(section: str, flags: list[str]) -> None:
    from nbcontainer_kernel.magics.remote_run import RemoteRun

    parser = RemoteRun.remote_run.parser
    (group,) = [g for g in parser._action_groups if g.title == section]
    in_group = {opt for action in group._group_actions for opt in action.option_strings}
    assert set(flags) <= in_group
    assert f"\n{section}:\n" in parser.format_help()

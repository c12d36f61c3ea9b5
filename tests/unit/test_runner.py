"""The in-container runner, exercised on the host (its paths moved by env vars)."""

from __future__ import annotations

import json
import keyword
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.images.runs import _check_python
from nbcontainer_kernel.images.wheels import TargetPython
from nbcontainer_kernel.remote.results import RunResult
from nbcontainer_kernel.runtime.errors import ImageNotUsable
from nbcontainer_kernel.runtime.notebook import inject_parameters, parameters_of
from nbcontainer_kernel.runtime.params import resolve_params
from nbcontainer_kernel.snapshots import snapshot
from tests.helpers import examples, new_code_cell, new_notebook, run_runner


def _run(
    tmp_path: Path,
    ns: dict,
    cell: str,
    args: tuple[str, ...] = (),
    env: dict | None = None,
    hyper: dict | None = None,
) -> tuple[subprocess.CompletedProcess, RunResult]:
    return run_runner(tmp_path, ns, cell, args, env, hyper)


def test_parameters_first_found_wins_and_arguments_override_by_name(tmp_path: Path) -> None:
    hyper = tmp_path / "h.json"
    hyper.write_text(json.dumps({"alpha": "0.25", "name": "from-hyper", "flags": "[1, 2]"}))
    env = {"NBCONTAINER_PARAMS": '{"alpha": 0.7, "beta": 1}'}
    assert resolve_params([("alpha", "0.5")], env, hyper) == (
        {"alpha": 0.5, "beta": 1},
        "NBCONTAINER_PARAMS and arguments",
    )
    assert resolve_params([("alpha", "0.5")], {}, tmp_path / "none.json") == (
        {"alpha": 0.5},
        "arguments",
    )
    # -P keeps text as text (a trigger's S3 key that looks like a number or JSON).
    got, _ = resolve_params([], {}, tmp_path / "none.json", [("input_key", "42"), ("k", "[1]")])
    assert got == {"input_key": "42", "k": "[1]"}
    assert resolve_params([], {"NBCONTAINER_PARAMS": '{"alpha": 0.7}'}, hyper) == (
        {"alpha": 0.7},
        "NBCONTAINER_PARAMS",
    )
    assert resolve_params([], {}, hyper) == (
        {"alpha": 0.25, "name": "from-hyper", "flags": [1, 2]},
        str(hyper),
    )


def test_cell_results_metrics_and_parameter_override(tmp_path: Path) -> None:
    proc, res = _run(
        tmp_path,
        {"alpha": 0.1, "base": 10},
        "from nbcontainer_kernel import log_metric\nscaled = base * alpha\n"
        "log_metric('scaled', scaled, step=1)\nprint('scaled', scaled)\nscaled + 1",
        hyper={"alpha": "0.5"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "[nbcontainer-metric] scaled=5.0 step=1" in proc.stdout
    assert res.results == {"scaled": 5.0}
    assert res.metrics == {"scaled": 5.0}
    assert res.last_value == 6.0
    assert res.index["parameters"] == {"alpha": 0.5}


def test_failing_cell_leaves_failure_exception_and_partial_results(tmp_path: Path) -> None:
    proc, res = _run(tmp_path, {}, "partial = 41\nraise KeyError('no such column')")
    assert proc.returncode != 0
    assert res.failure.startswith("the cell raised: KeyError: 'no such column'")
    assert "Traceback" in res.failure
    assert res.results == {"partial": 41}
    exc = res.exception()
    assert isinstance(exc, KeyError) and "no such column" in exc.__cause__.text
    with pytest.raises(Exception) as err:
        res.raise_for_status()
    assert type(err.value).__name__ == "RemoteExecutionError"
    assert isinstance(err.value.__cause__, KeyError)


def test_bad_parameters_still_leave_a_failure(tmp_path: Path) -> None:
    proc, res = _run(tmp_path, {}, "1", env={"NBCONTAINER_PARAMS": "[not json"})
    assert proc.returncode == 2
    assert res.failure.startswith("the run could not start")


def test_parameters_cell_and_injection() -> None:
    params = new_code_cell("alpha = 0.5\nname: str = 'x'\nsteps = 10 * 2")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_code_cell("import os"), params, new_code_cell("print(alpha)")])
    assert parameters_of(nb) == [
        {"name": "alpha", "type": "float", "default": 0.5},
        {"name": "name", "type": "str", "default": "x"},
        {"name": "steps", "type": "expression", "default": "10 * 2"},
    ]
    inject_parameters(nb, {"alpha": 0.9})
    assert nb.cells[2].source == "# Parameters\nalpha = 0.9\n"
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]


def test_a_base_with_another_python_minor_is_refused(tmp_path: Path) -> None:
    with snapshot(
        {}, "", dest=tmp_path / "s", include_dependencies=False, include_sources=False
    ) as snap:
        other = TargetPython((3, 9, 18), "x86_64", "glibc", "2.36")
        with pytest.raises(ImageNotUsable, match="Pickles do not cross Python versions"):
            _check_python("python:3.9-slim", other, snap)
        same = TargetPython(
            tuple(int(x) for x in snap.python.split("."))[:3],  # type: ignore[arg-type]
            "x86_64",
            "glibc",
            "2.36",
        )
        _check_python("ok", same, snap)


def test_ipython_semantics_magics_shell_and_display(tmp_path: Path) -> None:
    cell = (
        "%time squares = [i * i for i in range(4)]\n"
        "!echo from-the-shell\n"
        "from IPython.display import display, HTML\n"
        "display(HTML('<i>shown</i>'))\n"
        "len(squares)"
    )
    proc, res = _run(tmp_path, {}, cell)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from-the-shell" in proc.stdout
    assert res.results == {"squares": [0, 1, 4, 9]}
    assert res.last_value == 4
    assert res.displays[0]["data"]["text/html"] == "<i>shown</i>"


def test_an_array_child_runs_its_row_of_the_sweep(tmp_path: Path) -> None:
    table = json.dumps([{"lr": 0.1, "k": 1}, {"lr": 0.01, "k": 2}])
    env = {
        "NBCONTAINER_PARAMS": json.dumps({"epochs": 3}),
        "NBCONTAINER_SWEEP": table,
        "AWS_BATCH_JOB_ID": "0b1c-77:1",  # how Batch (and moto) name array children
    }
    proc, result = run_runner(tmp_path, {"lr": 1.0}, "out = (lr, k, epochs)", env=env)
    assert proc.returncode == 0, proc.stderr
    assert result.results == {"out": (0.01, 2, 3)}
    assert "row 1 of the sweep" in proc.stdout


def test_outputs_that_cannot_be_uploaded_fail_the_run_and_stay_sealed_here(
    tmp_path: Path,
) -> None:
    env = {
        "NBCONTAINER_OUTPUT_URI": "s3://bucket/runs/r-1/",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: S3 unreachable
        "AWS_ACCESS_KEY_ID": "",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
    }
    proc, result = run_runner(tmp_path, {"x": 2}, "y = x * 2", env=env)
    assert proc.returncode == 3
    assert "[nbcontainer] outputs not uploaded: S3 could not be reached" in proc.stderr
    assert result.results == {"y": 4}, "the outputs are sealed before the upload is tried"
    failed, result = run_runner(tmp_path / "f", {"x": 2}, "raise ValueError('x')", env=env)
    assert failed.returncode == 1, "the cell's own failure is what the exit code says"


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n)
)


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(_NAMES, _JSON_VALUES, min_size=1, max_size=6))
def test_parameters_come_back_exactly_through_every_way_they_travel(
    params: dict[str, Any],
) -> None:
    """One encoding per transport (params.py), each decoded by the runner to the same
    values and types: the environment (local, Batch), SageMaker's hyperparameters, a
    Batch sweep's table."""
    import tempfile

    from nbcontainer_kernel.runtime.params import hyperparameters_for, params_env, sweep_table
    from nbcontainer_kernel.runtime.sweep import array_index, sweep_row

    nowhere = Path("/nonexistent/hyperparameters.json")
    assert resolve_params([], params_env(params), nowhere)[0] == params
    hyper, document = hyperparameters_for(params)
    assert document is None  # a few small values fit SageMaker's limits
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "hyperparameters.json"
        file.write_text(json.dumps(hyper))
        assert resolve_params([], {}, file)[0] == params
    env = {"NBCONTAINER_SWEEP": sweep_table([{"x": 0}, params]), "AWS_BATCH_JOB_ARRAY_INDEX": "1"}
    assert array_index(env) == 1
    assert sweep_row(env, lambda _uri: b"") == (1, params)

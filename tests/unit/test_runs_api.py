"""The runs API's model, without a server: pages of runs cut and filtered in SQL (walked
by cursor, against the same filters applied in Python), the query and body checks (tables
of what a client may send), paths kept under the server's root, the document against
the handlers, and submissions over the scripted backend."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.runs import RemoteRunner
from nbcontainer_kernel.runtime.errors import InvalidOption, UnknownRun
from nbcontainer_kernel.server import handlers as server_handlers
from nbcontainer_kernel.server import model
from nbcontainer_kernel.server.jobs import (
    OutsideRoot,
    Submissions,
    check_tag,
    job_from_body,
    under_root,
)
from tests import openapi
from tests.fakes import Script, ScriptedBackend, fake_image_builder, sealed_outputs
from tests.helpers import examples

STATUSES = ["SUCCEEDED", "FAILED", "RUNNING", "CANCELLED"]


# ------------------------------------------------------------ pages in SQL
run_rows = st.lists(
    st.tuples(
        st.sampled_from(["fit", "grid", "a_b", "x%y"]),
        st.sampled_from(STATUSES),
        st.sampled_from(["local", "batch"]),
        st.sampled_from(["cell", "notebook"]),
        st.booleans(),  # a child of the first run
        st.integers(0, 5),  # created, in coarse steps: many ties
    ),
    max_size=40,
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["fit", "grid", "x%y"]),
        "status": st.sampled_from(STATUSES + ["succeeded"]),
        "backend": st.sampled_from(["local", "batch"]),
        "kind": st.sampled_from(["cell", "notebook"]),
    },
)


def _fill(ledger: Ledger, rows: list[tuple[Any, ...]]) -> list[str]:
    ids: list[str] = []
    for name, status, backend, kind, child, created in rows:
        parent = ids[0] if child and ids else None
        run_id = ledger.create(
            name, backend, params={"tag": f"t{created}_%"}, parent=parent, kind=kind
        )
        ledger.update(run_id, status=status, created=1_000.0 + created)
        ids.append(run_id)
    return ids


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=run_rows,
    chosen=filters,
    top_only=st.booleans(),
    since=st.none() | st.integers(0, 5),
    search=st.sampled_from([None, "fit", "%", "_", "t3_", "x%"]),
    limit=st.integers(1, 7),
)
def test_walking_pages_by_cursor_gives_the_filtered_runs_newest_first_each_once(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[Any, ...]],
    chosen: dict[str, str],
    top_only: bool,
    since: int | None,
    search: str | None,
    limit: int,
) -> None:
    ledger = Ledger(tmp_path_factory.mktemp("pages") / "runs.db")
    _fill(ledger, rows)

    def wanted(r: dict[str, Any]) -> bool:
        text = r["id"] + json.dumps(r["params"])
        return (
            all(str(r[k]) == (v.upper() if k == "status" else v) for k, v in chosen.items())
            and not (top_only and r["parent"])
            and (since is None or r["created"] >= 1_000.0 + since)
            and (search is None or search in text or search in r["id"])
        )

    expected = sorted(
        (r for r in ledger.find() if wanted(r)), key=lambda r: (r["created"], r["id"]), reverse=True
    )
    got: list[str] = []
    args: dict[str, list[str]] = {k: [v] for k, v in chosen.items()}
    args["limit"] = [str(limit)]
    if top_only:
        args["parent"] = ["none"]
    if since is not None:
        args["since"] = [str(1_000.0 + since)]
    if search is not None:
        args["q"] = [search]
    for _ in range(len(rows) + 2):  # a cursor that does not move on ends the walk
        page = model.list_runs(ledger, model.RunQuery.parse(args))
        openapi.check("/runs", "get", 200, page)
        assert len(page["runs"]) <= limit
        got += [r["id"] for r in page["runs"]]
        if page["next"] is None:
            break
        args["cursor"] = [page["next"]]
    else:
        raise AssertionError(f"the pages did not end: {got}")
    assert got == [r["id"] for r in expected]
    ledger.close()


def test_a_page_reads_its_rows_not_the_ledger(ledger: Ledger) -> None:
    for i in range(300):
        ledger.create("many", "local", params={"i": i})
    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    page = model.list_runs(ledger, model.RunQuery.parse({"limit": ["20"]}))
    ledger._db.set_trace_callback(None)
    assert [r["id"] for r in page["runs"]] == [f"many-{i}" for i in range(300, 280, -1)]
    [select] = [s for s in seen if s.startswith("SELECT * FROM runs")]
    assert select.endswith("ORDER BY created DESC, id DESC LIMIT 21")  # the page and one more
    plan = ledger._db.execute("EXPLAIN QUERY PLAN " + select)
    assert any("runs_newest" in str(row) for row in plan), "paged through the index"


def test_a_sweep_shows_its_children_counted_by_status_and_they_page_under_it(
    ledger: Ledger,
) -> None:
    parent = ledger.create("sw", "local")
    for status in ("SUCCEEDED", "FAILED", "SUCCEEDED"):
        child = ledger.create("sw", "local", parent=parent)
        ledger.update(child, status=status)
    top = model.list_runs(ledger, model.RunQuery.parse({"parent": ["none"]}))
    assert [r["id"] for r in top["runs"]] == [parent]
    assert top["runs"][0]["children"] == {"SUCCEEDED": 2, "FAILED": 1}
    kids = model.list_runs(ledger, model.RunQuery.parse({"parent": [parent]}))
    assert [r["id"] for r in kids["runs"]] == ["sw-4", "sw-3", "sw-2"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"limit": ["0"]}, "limit"),
        ({"limit": ["501"]}, "limit"),
        ({"limit": ["ten"]}, "limit"),
        ({"limit": ["5", "6"]}, "limit"),
        ({"status": ["DONE"]}, "status"),
        ({"kind": ["script"]}, "kind"),
        ({"since": ["yesterday"]}, "since"),
        ({"since": ["nan"]}, "since"),
        ({"cursor": ["not-a-cursor"]}, "cursor"),
        ({"cursor": ["WyJhIiwgMV0"]}, "cursor"),  # ["a", 1]: the right shape, wrong types
        ({"db": ["/home/other/runs.db"]}, "db"),  # no argument picks another ledger
        ({"order": ["created"]}, "order"),
        ({"17964": ["1"]}, "17964"),  # a number with a value is no cache buster
    ],
)
def test_a_query_that_does_not_fit_names_its_argument(
    args: dict[str, list[str]], named: str
) -> None:
    with pytest.raises(InvalidOption) as err:
        model.RunQuery.parse(args)
    assert err.value.option == named


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1796400000", 1796400000.0),
        ("1796400000.5", 1796400000.5),
        ("2026-12-01", 1796083200.0),
        ("2026-12-01T09:00:00", 1796115600.0),
        ("2026-12-01T09:00:00+01:00", 1796112000.0),
    ],
)
def test_since_takes_epoch_seconds_and_iso_times_utc_unless_they_say(
    text: str, seconds: float
) -> None:
    assert model.parse_since(text) == seconds


def test_the_servers_token_and_xsrf_and_labs_cache_buster_are_not_filters() -> None:
    query = model.RunQuery.parse(
        {"token": ["abc"], "_xsrf": ["x"], "status": ["failed"], "1796447949787": [""]}
    )
    assert dict(query.filters) == {"status": "failed"}


# ---------------------------------------------------------------- a run's record
def test_a_runs_record_never_carries_its_signing_key(ledger: Ledger) -> None:
    run_id = ledger.create("secretive", "local", params={"a": 1})
    ledger.add_phase(run_id, "RUNNING", at=10.0)
    ledger.add_phase(run_id, "SUCCEEDED", at=12.5)
    ledger.set_metric_points(run_id, [{"name": "loss", "value": 0.5, "step": 1, "timestamp": 11}])
    key = ledger.get(run_id)["run_key"]
    assert key
    doc = model.run_detail(ledger, run_id)
    openapi.check("/runs/{run_id}", "get", 200, doc)
    text = json.dumps(doc)
    assert key not in text and "run_key" not in text
    assert doc["timings"]["running"] == pytest.approx(2.5)
    assert doc["metric_history"] == {"loss": [{"step": 1, "value": 0.5, "time": 11.0}]}
    with pytest.raises(UnknownRun):
        model.run_detail(ledger, "secretive-9")


def test_a_runs_result_has_its_values_data_as_table_records_and_pickles_only_named(
    ledger: Ledger, backend: ScriptedBackend
) -> None:
    import pandas as pd

    frame = pd.DataFrame({"x": [1, 2], "when": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    backend.scripts = {
        "*": Script(outputs=sealed_outputs({"table": frame, "n": 3, "obj": object.__new__(Box)}))
    }
    runner = RemoteRunner(ledger, image_builder=fake_image_builder)
    from nbcontainer_kernel.backends.base import Hooks
    from nbcontainer_kernel.remote.runs import RemoteRequest

    result = runner.run(
        RemoteRequest(cell="table = 1", backend="scripted", name="vals", out=["table", "n"]),
        {},
        Hooks(),
    )
    doc = model.run_result(ledger, str(result.run_id))
    openapi.check("/runs/{run_id}/result", "get", 200, doc)
    table = doc["values"]["table"]
    assert [f["name"] for f in table["schema"]["fields"]] == ["index", "x", "when"]
    assert [r["x"] for r in table["data"]] == [1, 2] and table["rows"] == 2
    assert doc["values"]["n"]["value"] == 3
    assert doc["values"]["obj"]["loaded"] is False  # a pickle: never loaded in the server


class Box:
    """A value only a pickle can carry."""


# ------------------------------------------------------------------ bodies and paths
@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("alpha = 1\nname = 'x'")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(alpha)")]
    nbformat.write(nb, base / "sub" / "nb.ipynb")
    (tmp_path / "outside.ipynb").write_text("{}")
    os.symlink(tmp_path / "outside.ipynb", base / "link.ipynb")
    (base / "reqs.txt").write_text("pandas\n")
    return base


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../outside.ipynb", OutsideRoot),
        ("sub/../../outside.ipynb", OutsideRoot),
        ("/etc/passwd", InvalidOption),  # read as under the root: no such file there
        ("link.ipynb", OutsideRoot),  # a symlink out of the root
        ("sub", InvalidOption),  # a folder
        ("missing.ipynb", InvalidOption),
        ("sub/nb.ipynb\x00.txt", InvalidOption),
        ("", InvalidOption),
        (7, InvalidOption),
    ],
)
def test_paths_outside_the_root_or_not_files_are_refused(
    root: Path, path: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        under_root(root, path)


def test_a_path_under_the_root_is_the_file_there(root: Path) -> None:
    assert under_root(root, "sub/nb.ipynb") == (root / "sub" / "nb.ipynb").resolve()
    assert under_root(root, "/sub/nb.ipynb") == (root / "sub" / "nb.ipynb").resolve()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ([], "body"),
        ({"notebook": "sub/nb.ipynb", "paramz": {}}, "paramz"),
        ({"notebook": "sub/nb.ipynb", "params": [1]}, "params"),
        ({"notebook": "sub/nb.ipynb", "max_parallel": True}, "max_parallel"),
        ({"notebook": "sub/nb.ipynb", "max_parallel": "4"}, "max_parallel"),
        ({"notebook": "sub/nb.ipynb", "sweep": {"alpha": []}}, "sweep.alpha"),
        ({"notebook": "sub/nb.ipynb", "sweep": {"alpha": 3}}, "sweep.alpha"),
        ({"notebook": "sub/nb.ipynb", "timeout": "soon"}, "timeout"),
        ({"notebook": 3}, "notebook"),
    ],
)
def test_a_run_body_that_does_not_fit_names_its_field(root: Path, body: Any, named: str) -> None:
    with pytest.raises(InvalidOption) as err:
        job_from_body(body, root)
    assert err.value.option == named


def test_a_run_body_becomes_the_job_the_command_line_would_make(root: Path) -> None:
    job = job_from_body(
        {
            "notebook": "sub/nb.ipynb",
            "params": {"alpha": 2},
            "sweep": {"name": ["a", "b"]},
            "backend": "batch",
            "settings": {"queue": "gpu"},
            "requirements": "reqs.txt",
        },
        root,
    )
    assert job.notebooks == [str((root / "sub" / "nb.ipynb").resolve())]
    assert job.sweep_axes == [("name", ["a", "b"])] and job.params == {"alpha": 2}
    assert job.overrides == {"queue": "gpu"} and job.backend == "batch"
    assert job.requirements == str((root / "reqs.txt").resolve())
    with pytest.raises(InvalidOption, match="beta"):  # the parameters cell is checked
        job_from_body({"notebook": "sub/nb.ipynb", "params": {"beta": 1}}, root).request()


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("team/forecast:1", True),
        ("forecast", True),
        ("127.0.0.1:5000/team/forecast:v2.1", True),
        ("nbcontainer/base:bookworm", False),  # the project's own images are not replaced
        ("nbcontainer/deps:abc", False),
        ("Team/Forecast", False),
        ("forecast:", False),
        ("forecast:-x", False),
        ("a b", False),
        ("forecast@sha256:abc", False),
        ("", False),
        (None, False),
        ("x" * 300, False),
    ],
)
def test_a_build_tag_is_dockers_grammar_and_not_the_projects_own(tag: Any, ok: bool) -> None:
    if ok:
        assert check_tag(tag) == tag
    else:
        with pytest.raises(InvalidOption):
            check_tag(tag)


# ------------------------------------------------------------- the document
def test_the_openapi_document_names_every_route_and_method_the_handlers_serve() -> None:
    served = set()
    for route in server_handlers.handlers("/"):
        pattern, cls = route[0], route[1]
        if not pattern.startswith("/nbcontainer/api/"):
            continue  # the pages and their static files
        for method in openapi.METHODS:
            if method in vars(cls):
                served.add((openapi.route_of(pattern), method))
    assert served == openapi.documented_routes()


def test_the_openapi_document_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    validate(openapi.spec())


# ---------------------------------------------------------------- submissions
def test_a_submission_answers_with_its_run_id_once_recorded_and_cancel_stops_it(
    ledger: Ledger, backend: ScriptedBackend, root: Path
) -> None:
    backend.scripts = {"*": Script(wait_for_cancel=True)}
    subs = Submissions(ledger, RemoteRunner(ledger, image_builder=fake_image_builder))
    job = job_from_body({"notebook": "sub/nb.ipynb", "backend": "scripted"}, root)
    run_id = subs.submit(job)
    assert ledger.get(run_id)["kind"] == "notebook"
    deadline = time.monotonic() + 10
    while ledger.get(run_id)["status"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert subs.cancel(run_id) is True
    while ledger.get(run_id)["status"] != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.get(run_id)["status"] == "CANCELLED"
    assert subs.cancel(run_id) is False  # ended: the API answers 409


def test_a_submission_that_fails_its_checks_is_recorded_nowhere(
    ledger: Ledger, backend: ScriptedBackend, root: Path
) -> None:
    subs = Submissions(ledger, RemoteRunner(ledger, image_builder=fake_image_builder))
    job = job_from_body(
        {"notebook": "sub/nb.ipynb", "backend": "scripted", "params": {"nope": 1}}, root
    )
    with pytest.raises(InvalidOption, match="nope"):
        subs.submit(job)
    assert ledger.find() == []


def test_errors_map_to_their_http_status() -> None:
    from nbcontainer_kernel.runtime.errors import (
        AccessRefused,
        DaemonNotAvailable,
        NbcontainerError,
    )

    cases = [
        (UnknownRun("x-1"), 404),
        (model.NoOutput("none yet"), 404),
        (OutsideRoot("out"), 403),
        (AccessRefused("create", "refused by nbcontainer's Docker guard"), 403),
        (InvalidOption("limit", 0, "bad"), 422),
        (DaemonNotAvailable("unix:///nope", "no daemon"), 503),
        (NbcontainerError("other"), 500),
    ]
    for exc, status in cases:
        answer = server_handlers.api_error(exc)
        assert (answer.status_code, answer.error) == (status, type(exc).__name__)
        assert answer.reason_text == str(exc)


def test_a_runs_log_is_read_on_from_a_line_and_says_when_no_line_will_follow(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.cli import main
    from nbcontainer_kernel.remote.run_logs import RunLog

    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(ledger.path))
    building = ledger.create("logs", "local", status="BUILD")
    assert RunLog(ledger, building).read() == ([], False)  # nothing submitted yet
    assert main(["logs", building]) == 0
    assert "has no log yet (BUILD)" in capsys.readouterr().err

    ended = ledger.create("logs", "local")
    ledger.run_dir(ended).mkdir()
    (ledger.run_dir(ended) / "logs.txt").write_text("one\ntwo\nthree\n")
    ledger.update(ended, status="SUCCEEDED")
    assert RunLog(ledger, ended).read(1) == (["two", "three"], True)
    assert main(["logs", ended, "-f"]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\n"

    silent = ledger.create("logs", "local", status="FAILED")
    assert main(["logs", silent]) == 0
    assert "left no log" in capsys.readouterr().err


class _EndedJob(ScriptedBackend):
    """A job whose platform says it ended, with three log lines."""

    def status(self, job: Any) -> Any:
        from nbcontainer_kernel.backends.base import Phase

        return Phase.SUCCEEDED, 0

    def logs(self, job: Any, since: int = 0) -> list[str]:
        return ["a", "b", "c"][since:]


def test_a_followed_log_ends_with_its_job_and_its_end_waits_for_the_runs_collection(
    ledger: Ledger,
) -> None:
    from nbcontainer_kernel.backends import registry
    from nbcontainer_kernel.remote import run_logs

    registry.register("ended", _EndedJob())
    try:
        run_id = ledger.create("collecting", "ended", status="COLLECTING")
        ledger.update(run_id, job={"id": "j-1"})
        log = run_logs.RunLog(ledger, run_id)
        assert log.read() == (["a", "b", "c"], True)  # the job ended: no line follows
        assert log.ended_as() == "COLLECTING"  # not collected (yet): said as it is
        threading.Timer(0.3, lambda: ledger.update(run_id, status="SUCCEEDED")).start()
        assert log.ended_as(wait=10) == "SUCCEEDED"  # collected meanwhile: its final status
        assert run_logs.RunLog(ledger, run_id).read(3) == ([], True)
    finally:
        registry.unregister("ended")

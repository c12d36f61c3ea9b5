"""The runs API on a real Jupyter server (pytest-jupyter's fixtures, the extension
enabled as an install enables it), with real runs in the ledger: notebooks submitted over
the API and run on local Docker, a cell run of %%remote_run, a sweep, a build. Every
handler, filters and paging, a followed log, cancel, submit, the errors, and the
server's authentication and authorisation refusing what they refuse. Each answer is
checked against the schema docs/openapi.yaml documents for it.

The server runs on pytest-jupyter's event loop: each request is run to its end on that
loop (`Api`), so the tests are plain functions, as the runs they wait on are threads.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from jupyter_server.auth import Authorizer

from nbcontainer_kernel.backends.local import run_containers
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.server.handlers import handlers
from tests import openapi
from tests.integration.conftest import BASE_IMAGE
from tests.integration.test_notebook_runs import write_notebook

# pytest-jupyter's import sets the whole process's open-file limit to 4,096 (its
# jupyter_core module): the limit the other tests run with is put back at once (the guard's
# tests hold thousands of connections).
_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
from pytest_jupyter.jupyter_server import *  # noqa: E402, F403 - the server fixtures, this module's

resource.setrlimit(resource.RLIMIT_NOFILE, _NOFILE)

pytestmark = pytest.mark.integration

STUDY = (
    "import nbcontainer_kernel as nbk\n"
    "for i in range(3):\n    print('alpha is', alpha, 'line', i, flush=True)\n"
    "nbk.record('mae', alpha * 2)\n"
    "nbk.record('label', label)"
)
SLOW = "import time\nfor i in range(120):\n    print('tick', i, flush=True)\n    time.sleep(1)"
API = "/nbcontainer/api"


@pytest.fixture  # type: ignore[no-redef]  # replaces pytest-jupyter's
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"nbcontainer_kernel": True}}}


class Api:
    """Requests to the test server, each run to its end on the server's loop; answers
    are (status, JSON body or text, headers)."""

    def __init__(self, fetch: Callable[..., Any], loop: Any) -> None:
        self.fetch, self.loop = fetch, loop

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **kw: Any
    ) -> tuple[int, Any, Any]:
        if method == "POST" and raw is None:
            raw = json.dumps(body if body is not None else {}).encode()

        async def fetch() -> Any:
            # Made inside the server's loop: a future made outside belongs to whichever loop
            # an earlier test of the session left current.
            return await self.fetch(
                *path.strip("/").split("/"),
                method=method,
                body=raw,
                raise_error=False,
                follow_redirects=False,
                **kw,
            )

        r = self.loop.run_until_complete(fetch())
        text = r.body.decode() if r.body else ""
        is_json = (r.headers.get("Content-Type") or "").startswith("application/json")
        return r.code, json.loads(text) if is_json and text else text, r.headers

    def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return self.call("POST", path, body, **kw)

    def ok(self, method: str, template: str, status: int = 200, **kw: Any) -> Any:
        """A documented answer: the status expected, the body its schema's."""
        path = "/".join(
            str(kw.pop(part[1:-1])) if part.startswith("{") else part
            for part in template.split("/")
        )
        code, doc, _ = self.call(
            method.upper(), "nbcontainer/api" + path, kw.pop("body", None), **kw
        )
        assert code == status, (code, doc)
        openapi.check(template, method, status, doc)
        return doc

    def wait(
        self, run_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 300
    ) -> Any:
        deadline = time.monotonic() + timeout
        doc: Any = None
        while time.monotonic() < deadline:
            doc = self.ok("get", "/runs/{run_id}", run_id=run_id)
            if until(doc):
                return doc
            time.sleep(0.3)
        raise AssertionError(f"{run_id} never got there: {doc}")


@pytest.fixture
def api(
    jp_fetch: Any,
    jp_asyncio_loop: Any,
    ledger: Ledger,
    new_images: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Api:
    monkeypatch.setenv("NBCONTAINER_BASE_IMAGE", BASE_IMAGE)
    return Api(jp_fetch, jp_asyncio_loop)


@pytest.fixture
def study(jp_root_dir: Path) -> str:
    write_notebook(
        jp_root_dir / "study.ipynb",
        "alpha = 0.1\nlabel = 'x'",
        STUDY,
        "assert alpha < 1, 'alpha too large'",
    )
    return "study.ipynb"


def _ended(doc: dict[str, Any]) -> bool:
    return doc["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def _events(chunks: list[bytes]) -> list[dict[str, str]]:
    """Server-sent events as a browser's EventSource reads them."""
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            out.append(fields)
    return out


# ------------------------------------------------------------ a notebook run
def test_a_notebook_submitted_over_the_api_runs_and_every_handler_shows_it(
    api: Api, study: str, engine: Engine
) -> None:
    code, doc, headers = api.post(
        "nbcontainer/api/runs", {"notebook": study, "name": "api", "params": {"alpha": 0.3}}
    )
    assert code == 202, doc
    openapi.check("/runs", "post", 202, doc)
    run_id = doc["id"]
    assert headers["Location"].endswith(f"/nbcontainer/api/runs/{run_id}")

    chunks: list[bytes] = []  # followed from the start: every line once, then the end
    code, _, headers = api.get(
        f"nbcontainer/api/runs/{run_id}/logs",
        params={"follow": "1"},
        streaming_callback=chunks.append,
        request_timeout=600,
    )
    assert code == 200 and headers["Content-Type"] == "text/event-stream"
    events = _events(chunks)
    lines = [json.loads(e["data"]) for e in events if "event" not in e]
    assert [int(e["id"]) for e in events if "event" not in e] == list(range(len(lines)))
    assert [e for e in events if e.get("event") == "end"] == [
        {"event": "end", "data": json.dumps({"status": "SUCCEEDED"})}
    ]
    assert any("alpha is 0.3 line 2" in line for line in lines), lines

    run = api.ok("get", "/runs/{run_id}", run_id=run_id)
    assert run["status"] == "SUCCEEDED" and run["kind"] == "notebook"
    assert run["params"] == {"alpha": 0.3} and run["recorded"] == {"mae": 0.6, "label": "x"}
    assert run["verdict"] == "signed" and run["notebooks"] == ["study.ipynb"]
    assert "output/data/study.ipynb" in run["outputs"] and run["timings"]["running"] > 0

    code, page, headers = api.get(f"nbcontainer/api/runs/{run_id}/notebook")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;") and "allow-scripts" not in policy
    assert "alpha is 0.3 line 2" in page

    result = api.ok("get", "/runs/{run_id}/result", run_id=run_id)
    assert result["recorded"] == {"mae": 0.6, "label": "x"}

    whole = api.ok("get", "/runs/{run_id}/logs", run_id=run_id)
    assert whole["ended"] and whole["lines"][: len(lines)] == lines
    later = api.ok("get", "/runs/{run_id}/logs", run_id=run_id, params={"since": "2"})
    assert later["lines"] == whole["lines"][2:] and later["next"] == whole["next"]

    found = api.ok("get", "/runs", params={"kind": "notebook", "status": "succeeded"})
    assert [r["id"] for r in found["runs"]] == [run_id]
    assert api.ok("get", "/runs", params={"status": "failed"})["runs"] == []

    ended = api.ok("post", "/runs/{run_id}/cancel", 409, run_id=run_id)
    assert ended["error"] == "RunEnded"
    assert run_containers(engine, run_id) == []


def test_a_sweep_submitted_over_the_api_pages_its_children_under_it(api: Api, study: str) -> None:
    doc = api.ok(
        "post", "/runs", 202, body={"notebook": study, "name": "grid", "sweep": {"alpha": [0.2, 5]}}
    )
    parent = api.wait(doc["id"], lambda d: _ended(d) and sum((d["children"] or {}).values()) == 2)
    assert parent["status"] == "FAILED" and parent["children"] == {"SUCCEEDED": 1, "FAILED": 1}

    top = api.ok("get", "/runs", params={"parent": "none"})
    assert [r["id"] for r in top["runs"]] == [doc["id"]]
    kids = api.ok("get", "/runs", params={"parent": doc["id"]})["runs"]
    by_alpha = {k["params"]["alpha"]: k for k in kids}
    assert by_alpha[0.2]["status"] == "SUCCEEDED" and by_alpha[5]["status"] == "FAILED"

    result = api.ok("get", "/runs/{run_id}/result", run_id=doc["id"])
    assert {c["params"]["alpha"]: c["recorded"]["mae"] for c in result["children"]} == {
        0.2: 0.4,
        5: 10,
    }  # the failed child's values are kept
    none = api.ok("get", "/runs/{run_id}/notebook", 404, run_id=doc["id"])
    assert "each of its children has one" in none["reason"]
    failed = by_alpha[5]["id"]
    code, page, _ = api.get(f"nbcontainer/api/runs/{failed}/notebook")
    assert code == 200 and "alpha too large" in page  # the failed child's executed copy


def test_cancel_over_the_api_stops_a_running_notebook_within_five_seconds(
    api: Api, jp_root_dir: Path, engine: Engine
) -> None:
    write_notebook(jp_root_dir / "slow.ipynb", None, SLOW)
    doc = api.ok("post", "/runs", 202, body={"notebook": "slow.ipynb"})
    api.wait(doc["id"], lambda d: d["status"] == "RUNNING")
    asked = time.monotonic()
    cancelled = api.ok("post", "/runs/{run_id}/cancel", 202, run_id=doc["id"])
    assert cancelled["id"] == doc["id"]
    api.wait(doc["id"], lambda d: d["status"] == "CANCELLED", timeout=30)
    took = time.monotonic() - asked
    assert took < 5, f"cancelled {took:.1f} s after the request"
    assert run_containers(engine, doc["id"]) == []
    assert api.ok("post", "/runs/{run_id}/cancel", 409, run_id=doc["id"])["error"] == "RunEnded"


# ----------------------------------------------------------- a cell run, a build
def test_a_cell_runs_dataframe_comes_back_as_records_with_its_schema(api: Api, ip: Any) -> None:
    ip.run_cell_magic(
        "remote_run",
        "--local --name cellrun",
        "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']})",
    )
    [run] = api.ok("get", "/runs", params={"name": "cellrun"})["runs"]
    assert run["kind"] == "cell" and run["status"] == "SUCCEEDED"
    value = api.ok("get", "/runs/{run_id}/result", run_id=run["id"])["values"]["df"]
    assert value["type"] == "pandas.DataFrame" and value["loaded"] and value["rows"] == 3
    assert [f["name"] for f in value["schema"]["fields"]] == ["index", "x", "y"]
    frame = pd.DataFrame(value["data"]).set_index("index")
    assert frame.to_dict("list") == {"x": [1, 2, 3], "y": ["a", "b", "c"]}


def test_a_notebook_containerized_over_the_api_runs_as_an_image_with_a_parameter(
    api: Api, study: str, engine: Engine
) -> None:
    params = api.ok("get", "/parameters", params={"path": study})["parameters"]
    assert [(p["name"], p["default"]) for p in params] == [("alpha", 0.1), ("label", "x")]
    assert "local" in api.ok("get", "/backends")["backends"]

    build = api.ok("post", "/images", 202, body={"notebook": study, "tag": "api-test/study:1"})
    deadline = time.monotonic() + 600
    while build["status"] == "building" and time.monotonic() < deadline:
        time.sleep(0.5)
        build = api.ok("get", "/images/{build_id}", build_id=build["id"])
    assert build["status"] == "succeeded", build
    assert [p["name"] for p in build["parameters"]] == ["alpha", "label"] and build["lines"]
    try:
        doc = api.ok(
            "post", "/runs", 202, body={"image": "api-test/study:1", "params": {"alpha": 0.4}}
        )
        run = api.wait(doc["id"], _ended)
        assert run["status"] == "SUCCEEDED" and run["recorded"]["mae"] == 0.8
        assert run["image"].startswith("api-test/study:1")
    finally:
        engine.remove_image("api-test/study:1", force=True)
    missing = api.ok("get", "/images/{build_id}", 404, build_id="build-999")
    assert missing["error"] == "UnknownBuild"


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"notebook": "study.ipynb", "params": {"beta": 1}}, 422, "InvalidOption"),
        ({"notebook": "../study.ipynb"}, 403, "OutsideRoot"),
        ({"notebook": "nope.ipynb"}, 422, "InvalidOption"),
        ({"notebook": "study.ipynb", "backend": "mainframe"}, 422, "UnknownBackend"),
        ({"notebook": "study.ipynb", "colour": "red"}, 422, "InvalidOption"),
        ({"image": "nbc-no/such-image:1"}, 422, "InvalidRun"),
        ({}, 422, "InvalidOption"),
    ],
)
def test_a_submission_that_cannot_run_is_refused_with_its_status_and_records_nothing(
    api: Api, study: str, ledger: Ledger, body: dict[str, Any], status: int, error: str
) -> None:
    doc = api.ok("post", "/runs", status, body=body)
    assert doc["error"] == error and doc["reason"]
    assert ledger.find() == []


def test_unknown_runs_bad_queries_and_bad_bodies_get_their_status(api: Api) -> None:
    for template in (
        "/runs/{run_id}",
        "/runs/{run_id}/logs",
        "/runs/{run_id}/notebook",
        "/runs/{run_id}/result",
    ):
        assert api.ok("get", template, 404, run_id="nope-1")["error"] == "UnknownRun"
    assert api.ok("post", "/runs/{run_id}/cancel", 404, run_id="nope-1")["error"] == "UnknownRun"
    assert api.ok("get", "/runs", 422, params={"limit": "0"})["error"] == "InvalidOption"
    code, doc, _ = api.post("nbcontainer/api/runs", raw=b"{not json")
    assert code == 400 and doc["error"] == "BadRequest"
    openapi.check("/runs", "post", 400, doc)
    code, doc, _ = api.post("nbcontainer/api/images", {"notebook": "../x.ipynb", "tag": "a/b:1"})
    assert code == 403 and doc["error"] == "OutsideRoot"


def test_a_ledger_that_cannot_be_opened_is_a_503_saying_which(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NBCONTAINER_RUNS_DB", str(blocked / "runs.db"))
    for doc in (
        api.ok("get", "/runs", 503),
        api.ok("post", "/runs/{run_id}/cancel", 503, run_id="x-1"),
    ):
        assert doc["error"] == "LedgerError" and str(blocked) in doc["reason"], doc


def test_pages_of_many_runs_are_cut_in_the_server_and_walk_by_cursor(
    api: Api, ledger: Ledger
) -> None:
    for i in range(120):
        run_id = ledger.create("bulk" if i % 3 else "other", "local", params={"i": i})
        ledger.update(run_id, created=1_000_000.0 + i)
    seen: list[str] = []
    params = {"limit": "50"}
    while True:
        page = api.ok("get", "/runs", params=params)
        assert len(page["runs"]) <= 50
        seen += [r["id"] for r in page["runs"]]
        if not page["next"]:
            break
        params["cursor"] = page["next"]
    assert len(seen) == len(set(seen)) == 120
    created = [ledger.get(r)["created"] for r in seen]
    assert created == sorted(created, reverse=True)
    since = api.ok("get", "/runs", params={"since": "1000110", "name": "bulk"})["runs"]
    assert [r["params"]["i"] for r in since] == [119, 118, 116, 115, 113, 112, 110]
    assert [r["id"] for r in api.ok("get", "/runs", params={"q": '"i": 7}'})["runs"]] == ["bulk-5"]


# ------------------------------------------------------- who may ask
def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route, with a made-up run and build id."""
    out = []
    for route in handlers("/"):
        pattern, cls = route[0], route[1]
        if "static" in pattern:
            continue
        path = openapi.route_of(pattern, prefix="").replace("{run_id}", "x-1")
        path = path.replace("{build_id}", "build-1")
        out += [(m.upper(), path) for m in openapi.METHODS if m in vars(cls)]
    return out


@pytest.mark.parametrize("authorization", ["", "token wrong-token", "Bearer nothing"])
def test_every_route_refuses_a_request_without_the_servers_token(
    api: Api, authorization: str, ledger: Ledger, study: str
) -> None:
    for method, path in _routes():
        code, doc, headers = api.call(
            method,
            path,
            {"notebook": study} if method == "POST" else None,
            headers={"Authorization": authorization},
        )
        if path.startswith("/nbcontainer/runs"):  # a page: to the login page and back
            assert code == 302 and "/login?next=" in headers["Location"], (path, code)
        else:
            assert code == 403, (method, path, code, doc)
    assert ledger.find() == []  # nothing was submitted


def test_a_browsers_post_needs_the_xsrf_token_its_cookie_carries(
    api: Api, jp_serverapp: Any, ledger: Ledger, study: str
) -> None:
    token = jp_serverapp.identity_provider.token
    code, _, headers = api.get("lab", params={"token": token}, headers={"Authorization": ""})
    jar = SimpleCookie()
    for value in headers.get_list("Set-Cookie"):
        jar.load(value)
    assert "_xsrf" in jar, "the login set a session cookie and an XSRF cookie"
    cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items())
    browser = {"Authorization": "", "Cookie": cookie}
    code, page, _ = api.get("nbcontainer/runs", headers=browser)
    assert code == 200 and "runs.js" in page  # the cookie logs in
    code, doc, _ = api.post("nbcontainer/api/runs/x-1/cancel", headers=browser)
    assert code == 403, doc  # without the header: refused before the handler
    with_xsrf = {**browser, "X-XSRFToken": jar["_xsrf"].value}
    code, doc, _ = api.post("nbcontainer/api/runs/x-1/cancel", headers=with_xsrf)
    assert (code, doc["error"]) == (404, "UnknownRun")  # with it: through to the handler


def test_the_token_in_a_query_never_reaches_the_servers_log(
    api: Api, jp_serverapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = jp_serverapp.identity_provider.token
    caplog.set_level("DEBUG")
    for path in ("nbcontainer/api/runs/nope-1", "nbcontainer/api/runs"):
        api.get(path, params={"token": token, "limit": "0"}, headers={"Authorization": ""})
    assert "nope-1" in caplog.text, "the refusals were logged"
    assert token not in caplog.text


class ReadOnly(Authorizer):
    """An Authorizer that lets a user read and nothing more."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return action == "read"


class TestAnAuthorizerDecides:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {
            "ServerApp": {
                "jpserver_extensions": {"nbcontainer_kernel": True},
                "authorizer_class": ReadOnly,
            }
        }

    def test_a_read_only_user_reads_runs_and_submits_or_cancels_nothing(
        self, api: Api, ledger: Ledger, study: str
    ) -> None:
        run_id = ledger.create("mine", "local")
        assert api.ok("get", "/runs/{run_id}", run_id=run_id)["id"] == run_id
        assert api.ok("post", "/runs", 403, body={"notebook": study})
        assert api.ok("post", "/runs/{run_id}/cancel", 403, run_id=run_id)
        assert api.ok("post", "/images", 403, body={"notebook": study, "tag": "a/b:1"})
        assert [r["id"] for r in ledger.find()] == [run_id]
        assert ledger.get(run_id)["status"] == "SNAPSHOT"

"""The runs API and pages, as Jupyter server handlers under ``/nbcontainer/``.

Authentication and authorisation are the Jupyter server's own (its token or login
cookie, XSRF for a browser's POST; ``@authorized`` on the resource ``nbcontainer``,
which an Authorizer may refuse). Each handler parses its request, calls the model
(server.model) or the jobs (server.jobs) off the event loop, and answers JSON; the
project's errors become ``{"error": ..., "reason": ...}`` with their status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web
from tornado.iostream import StreamClosedError

from ..remote.ledger import Ledger
from ..remote.notebook_runs import declared_of
from ..runtime.errors import (
    AccessRefused,
    DaemonNotAvailable,
    InvalidOption,
    LedgerError,
    MissingSetting,
    NbcontainerError,
    UnknownBackend,
    UnknownRun,
)
from . import model
from .jobs import Builds, OutsideRoot, Submissions, job_from_body, under_root

__all__ = ["handlers", "ServerState"]

T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
AUTH_RESOURCE = "nbcontainer"

#: What each of the project's errors is, as an HTTP status (the first that matches).
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownRun, 404),
    (model.NoOutput, 404),
    (OutsideRoot, 403),
    (AccessRefused, 403),
    (InvalidOption, 422),
    (UnknownBackend, 422),
    (MissingSetting, 422),
    (DaemonNotAvailable, 503),
    (LedgerError, 503),
)
#: Seconds between reads of a followed log, and between keep-alive comments.
FOLLOW_EVERY = 1.0
KEEPALIVE = 15.0
#: Seconds a followed log's end waits for its run to be collected (its final status).
COLLECT_WAIT = 30.0


class ApiError(web.HTTPError):
    """An answer of the API's own: ``{"error": error, "reason": reason}``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(status, reason)
        self.error, self.reason_text = error, reason


def api_error(exc: BaseException) -> ApiError:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return ApiError(status, type(exc).__name__, str(exc))
    return ApiError(500, type(exc).__name__, str(exc))


class ServerState:
    """What the handlers share: the ledger of the user the server runs as (its path is
    the server's: NBCONTAINER_RUNS_DB or the user's data directory, never a request's),
    the runs submitted here, the builds started here, and rendered notebooks."""

    def __init__(self, root_dir: str) -> None:
        self.root = Path(root_dir).expanduser()
        self._ledger: Ledger | None = None
        self._submissions: Submissions | None = None
        self.builds = Builds()
        self.rendered: OrderedDict[str, str] = OrderedDict()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:  # opened on first use: a server starts without one
            self._ledger = Ledger()
        return self._ledger

    @property
    def submissions(self) -> Submissions:
        if self._submissions is None:
            self._submissions = Submissions(self.ledger)
        return self._submissions


class _Api(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def state(self) -> ServerState:
        return self.settings["nbcontainer"]  # type: ignore[no-any-return]

    @property
    def ledger(self) -> Ledger:
        """The server's ledger (opened on first use: one that cannot be is a 503)."""
        return self._opened(lambda: self.state.ledger)

    @property
    def submissions(self) -> Submissions:
        return self._opened(lambda: self.state.submissions)  # opens the ledger too

    @staticmethod
    def _opened(get: Callable[[], T]) -> T:
        try:
            return get()
        except LedgerError as exc:
            raise api_error(exc) from exc

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread (the ledger and Docker block); the project's
        errors become API errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except NbcontainerError as exc:
            raise api_error(exc) from exc

    def body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc

    def answer(self, doc: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(doc, default=str))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Tornado's warning names the whole URI, where a token may be (``?token=``): this
        one names the path alone (the server's access log, which redacts, has the rest)."""
        if isinstance(value, ApiError):
            self.log.warning(
                "%d %s %s: %s",
                value.status_code,
                self.request.method,
                self.request.path,
                value.reason_text,
            )
            return
        if isinstance(value, web.HTTPError):
            self.log.warning("%d %s %s", value.status_code, self.request.method, self.request.path)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, ApiError):
            doc: dict[str, str | None] = {"error": exc.error, "reason": exc.reason_text}
        elif isinstance(exc, web.HTTPError):
            doc = {"error": exc.reason or str(status_code), "reason": exc.log_message}
        else:
            doc = {"error": "InternalError", "reason": "see the server's log"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(doc))


class RunsHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """A page of runs: filters name, status, backend, kind, parent (``none``: no
        sweep's children), schedule, since, q (search); limit and cursor."""
        try:
            query = model.RunQuery.parse(
                {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}
            )
        except InvalidOption as exc:
            raise api_error(exc) from exc
        self.answer(await self.call(model.list_runs, self.ledger, query))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Submit a notebook run: 202 with its id once it is recorded."""
        body = self.body()
        try:
            job = job_from_body(body, self.state.root)
        except NbcontainerError as exc:
            raise api_error(exc) from exc
        try:
            run_id = await asyncio.to_thread(self.submissions.submit, job)
        except NbcontainerError as exc:
            if type(exc) is NbcontainerError:  # what the checks said of the request itself
                raise ApiError(422, "InvalidRun", str(exc)) from exc
            raise api_error(exc) from exc
        row = await self.call(self.ledger.get, run_id)
        self.set_header("Location", f"{self.base_url}nbcontainer/api/runs/{run_id}")
        self.answer({"id": run_id, "status": row["status"]}, status=202)


class RunHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.answer(await self.call(model.run_detail, self.ledger, run_id))


class ResultHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        self.answer(await self.call(model.run_result, self.ledger, run_id))


class CancelHandler(_Api):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        ledger = self.ledger
        if not await self.call(self.submissions.cancel, run_id):
            row = await self.call(ledger.get, run_id)
            raise ApiError(409, "RunEnded", f"run {run_id} already ended ({row['status']})")
        row = await self.call(ledger.get, run_id)
        self.answer({"id": run_id, "status": row["status"]}, status=202)


class LogsHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        """The log from line `since`; with ``follow`` streamed as server-sent events (an
        ``id`` per line, so a reconnecting EventSource resumes) until the run ends."""
        from ..remote.run_logs import RunLog

        since = self._since()
        log = RunLog(self.ledger, run_id)
        lines, ended = await self.call(log.read, since)
        if self.get_argument("follow", "0") in ("0", "false", ""):
            self.answer({"lines": lines, "next": since + len(lines), "ended": ended})
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        await self._stream(log, since, lines, ended)

    def _since(self) -> int:
        text = self.request.headers.get("Last-Event-ID") or self.get_argument("since", "0")
        try:
            since = int(text) + (1 if "Last-Event-ID" in self.request.headers else 0)
        except ValueError:
            raise api_error(InvalidOption("since", text, "a line number")) from None
        if since < 0:
            raise api_error(InvalidOption("since", text, "a line number"))
        return since

    async def _stream(self, log: Any, at: int, lines: list[str], ended: bool) -> None:
        quiet = 0.0
        try:
            while True:
                for line in lines:
                    self.write(f"id: {at}\ndata: {json.dumps(line)}\n\n")
                    at += 1
                if ended:  # the job's end; the run's comes once it is collected
                    status = await self.call(log.ended_as, COLLECT_WAIT)
                    self.write(f"event: end\ndata: {json.dumps({'status': status})}\n\n")
                    await self.flush()
                    return
                if lines or quiet >= KEEPALIVE:
                    if not lines:
                        self.write(": still running\n\n")
                    quiet = 0.0
                    await self.flush()
                await asyncio.sleep(FOLLOW_EVERY)
                quiet += FOLLOW_EVERY
                lines, ended = await self.call(log.read, at)
        except StreamClosedError:
            return  # the browser went away: nothing to stop but this loop
        finally:
            if not self._finished:
                with contextlib.suppress(StreamClosedError):
                    self.finish()


class NotebookHandler(_Api):
    @property
    def content_security_policy(self) -> str:
        # What a run's notebook holds is the run's: shown in a sandbox (a unique origin,
        # no script, no form, no plugin), styled by its own inline CSS, images inline.
        return (
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            "font-src data:; frame-ancestors 'self'"
        )

    @web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        """The executed notebook (a pipeline's last, or ?name=), rendered with nbconvert."""
        name = self.get_argument("name", None)
        file_name, data = await self.call(model.notebook_bytes, self.ledger, run_id, name)
        page = await self.call(self._render, data)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(page, set_content_type="text/html; charset=utf-8")

    def _render(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        cache = self.state.rendered
        if key not in cache:
            import nbformat
            from nbconvert import HTMLExporter

            nb = nbformat.reads(data.decode("utf-8", errors="replace"), as_version=4)
            cache[key] = HTMLExporter(template_name="lab").from_notebook_node(nb)[0]
            while len(cache) > 16:
                cache.popitem(last=False)
        return cache[key]


class ParametersHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The parameters a notebook under the root declares (its `parameters` cell)."""
        path = self.get_argument("path", "")

        def read() -> list[dict[str, Any]]:
            return declared_of([str(under_root(self.state.root, path))], None)

        self.answer({"path": path, "parameters": await self.call(read)})


class BackendsHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        from ..backends.registry import available

        self.answer({"backends": available()})


class ImagesHandler(_Api):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Containerize a notebook under the root: 202 with the build's id."""
        try:
            build = self.state.builds.start(self.body(), self.state.root)
        except NbcontainerError as exc:
            raise api_error(exc) from exc
        self.set_header("Location", f"{self.base_url}nbcontainer/api/images/{build.id}")
        self.answer(build.doc(), status=202)


class BuildHandler(_Api):
    @web.authenticated
    @authorized
    async def get(self, build_id: str) -> None:
        build = self.state.builds.get(build_id)
        if build is None:
            raise ApiError(404, "UnknownBuild", f"no build {build_id} on this server")
        self.answer(build.doc())


class PageHandler(JupyterHandler):
    """The runs page and a run's page: one HTML file, filled by runs.js from the API."""

    auth_resource = AUTH_RESOURCE

    @property
    def content_security_policy(self) -> str:
        # No inline script or style at all: what a run wrote can only ever be text here.
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
            "form-action 'none'"
        )

    @web.authenticated
    @authorized
    def get(self, run_id: str | None = None) -> None:
        page = (STATIC / "runs.html").read_text()
        for key, value in {"base_url": self.base_url, "run_id": run_id or ""}.items():
            page = page.replace("{{" + key + "}}", html.escape(value, quote=True))
        self.finish(page)


def handlers(base_url: str) -> list[tuple[str, type, dict[str, Any]] | tuple[str, type]]:
    """The routes, under the server's base URL."""
    from jupyter_server.base.handlers import AuthenticatedFileHandler
    from jupyter_server.utils import url_path_join

    run = r"(?P<run_id>[A-Za-z0-9_.-]+)"

    def at(path: str) -> str:
        return url_path_join(base_url, "nbcontainer", path)

    return [
        (at("api/runs"), RunsHandler),
        (at(f"api/runs/{run}"), RunHandler),
        (at(f"api/runs/{run}/logs"), LogsHandler),
        (at(f"api/runs/{run}/notebook"), NotebookHandler),
        (at(f"api/runs/{run}/result"), ResultHandler),
        (at(f"api/runs/{run}/cancel"), CancelHandler),
        (at("api/parameters"), ParametersHandler),
        (at("api/backends"), BackendsHandler),
        (at("api/images"), ImagesHandler),
        (at(r"api/images/(?P<build_id>build-[0-9]+)"), BuildHandler),
        (at("runs"), PageHandler),
        (at(f"runs/{run}"), PageHandler),
        (at("static/(.*)"), AuthenticatedFileHandler, {"path": str(STATIC)}),
    ]

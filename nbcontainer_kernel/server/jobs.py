"""What the server starts and follows: notebook runs submitted over the API and image
builds (Containerize this notebook), each on a thread of its own.

A submitted run goes through the same RemoteRunner as ``nbcontainer run`` (checks,
snapshot, build, submit, wait, collect, the ledger), so everything it does is
recorded as a command-line run's is; the server answers once the run is recorded.
"""

from __future__ import annotations

import collections
import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.base import Hooks, Phase
from ..remote.ledger import Ledger
from ..remote.notebook_runs import NotebookJob, declared_of
from ..runtime.errors import InvalidOption, NbcontainerError

if TYPE_CHECKING:
    from ..remote.runs import RemoteRunner

__all__ = ["Submissions", "Builds", "Build", "job_from_body", "under_root", "OutsideRoot"]

#: Seconds a submission waits for its run to be recorded before it answers anyway.
RECORD_WAIT = 120.0
#: Lines of a build's output kept for its progress.
BUILD_LINES = 400


class OutsideRoot(NbcontainerError, PermissionError):
    """A path outside the server's root directory (403)."""


def under_root(root: Path, path: Any, what: str = "notebook") -> Path:
    """`path` (relative to the server's root, as the contents API names files) as a file
    under `root`; OutsideRoot for one that leaves it (.., absolute, a symlink out)."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidOption(what, path, "a path relative to the server's root")
    base = root.resolve()
    found = (base / path.lstrip("/")).resolve()
    if found != base and base not in found.parents:
        raise OutsideRoot(f"{what} {path!r} is outside the server's root directory")
    if not found.is_file():
        raise InvalidOption(what, path, "no such file under the server's root")
    return found


_BODY_TYPES: dict[str, tuple[type, ...]] = {
    "notebook": (str, list),
    "image": (str,),
    "backend": (str,),
    "name": (str,),
    "params": (dict,),
    "sweep": (dict,),
    "max_parallel": (int,),
    "timeout": (int, float),
    "cpus": (int, float),
    "memory": (str,),
    "gpus": (str,),
    "settings": (dict,),
    "base": (str,),
    "requirements": (str,),
}


def job_from_body(body: Any, root: Path) -> NotebookJob:
    """A POST runs body as a NotebookJob: a notebook (or a list: a pipeline) under the
    server's root, or an image; InvalidOption names a field that does not fit."""
    if not isinstance(body, dict):
        raise InvalidOption("body", type(body).__name__, "a JSON object")
    for key, value in body.items():
        if key not in _BODY_TYPES:
            raise InvalidOption(key, value, f"not a field of a run ({', '.join(_BODY_TYPES)})")
        if value is not None and (
            not isinstance(value, _BODY_TYPES[key]) or isinstance(value, bool)
        ):
            raise InvalidOption(key, value, f"expected {_BODY_TYPES[key][0].__name__}")
    given = body.get("notebook")
    paths = given if isinstance(given, list) else [given] if given else []
    notebooks = [str(under_root(root, p)) for p in paths]
    sweep = body.get("sweep") or {}
    for axis, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise InvalidOption(f"sweep.{axis}", values, "a list of one or more values")
    requirements = body.get("requirements")
    return NotebookJob(
        notebooks=notebooks,
        image=body.get("image"),
        params=dict(body.get("params") or {}),
        sweep_axes=[(str(k), list(v)) for k, v in sweep.items()],
        name=body.get("name"),
        backend=body.get("backend") or "local",
        max_parallel=body.get("max_parallel") or 4,
        cpus=body.get("cpus"),
        memory=body.get("memory"),
        gpus=body.get("gpus"),
        timeout=body.get("timeout"),
        base=body.get("base"),
        requirements=str(under_root(root, requirements, "requirements")) if requirements else None,
        overrides=dict(body.get("settings") or {}),
    )


class Submissions:
    """Runs submitted over the API, each followed to its end on a thread of its own by
    one RemoteRunner (so Cancel reaches a run waited on here at its next poll)."""

    def __init__(self, ledger: Ledger, runner: RemoteRunner | None = None) -> None:
        """`runner`: the RemoteRunner runs go through (tests pass one over fakes)."""
        from ..remote.runs import RemoteRunner

        self.runner = runner or RemoteRunner(ledger)

    def submit(self, job: NotebookJob) -> str:
        """Check the job, start it, and return its run id once it is recorded. What fails
        before that (a bad parameter, an unknown backend) is raised here, recorded nowhere;
        what fails after (no daemon, a failing notebook) is the run's, in its row."""
        req = job.request()  # InvalidOption before anything is built
        recorded = threading.Event()
        top: list[str] = []
        failed: list[BaseException] = []

        def on_phase(run_id: str, phase: Phase, timings: dict[str, float]) -> None:
            if not top:
                top.append(run_id)
                recorded.set()

        def go() -> None:
            try:
                self.runner.run(req, {}, Hooks(on_phase=[on_phase]))
            except BaseException as exc:  # noqa: BLE001 - the run's row records it
                failed.append(exc)
            finally:
                recorded.set()

        # A daemon: a server that stops leaves the run recorded (`nbcontainer attach` ends it).
        threading.Thread(target=go, name=f"nbcontainer-run-{req.name}", daemon=True).start()
        recorded.wait(RECORD_WAIT)
        if top:
            return top[0]
        if failed:
            raise failed[0]
        raise NbcontainerError(f"the run {req.name} was not recorded in {RECORD_WAIT:.0f} s")

    def cancel(self, run_id: str) -> bool:
        """False when the run had already ended."""
        return self.runner.cancel_tree(run_id)


@dataclass
class Build:
    """An image build (Containerize this notebook) and how far it got."""

    id: str
    notebook: str
    tag: str
    status: str = "building"  # building, succeeded, failed
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=BUILD_LINES)
    )
    image_id: str | None = None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "notebook": self.notebook,
            "tag": self.tag,
            "status": self.status,
            "lines": list(self.lines),
            "image_id": self.image_id,
            "parameters": self.parameters,
            "error": self.error,
            "started": self.started,
            "ended": self.ended,
        }


class Builds:
    """Image builds started over the API, by id (kept for the server's life)."""

    def __init__(self) -> None:
        self._builds: dict[str, Build] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, body: Any, root: Path) -> Build:
        """Start containerizing the notebook a POST images body names (under `root`);
        InvalidOption or OutsideRoot for a body that does not fit, before anything runs."""
        from ..remote.notebooks import containerize

        if not isinstance(body, dict):
            raise InvalidOption("body", type(body).__name__, "a JSON object")
        for key in body:
            if key not in ("notebook", "tag", "base", "requirements"):
                raise InvalidOption(key, body[key], "not a field of a build")
        notebook = under_root(root, body.get("notebook"))
        tag = check_tag(body.get("tag"))
        reqs = body.get("requirements")
        base = body.get("base") or None
        requirements = str(under_root(root, reqs, "requirements")) if reqs else None
        with self._lock:
            build = Build(id=f"build-{next(self._ids)}", notebook=str(body["notebook"]), tag=tag)
            self._builds[build.id] = build

        def go() -> None:
            try:
                image = containerize(
                    [str(notebook)],
                    tag,
                    base=base,
                    requirements=requirements,
                    on_line=build.lines.append,
                )
                build.image_id = image.image_id
                build.parameters = declared_of([str(notebook)], None)
                build.status = "succeeded"
            except Exception as exc:  # noqa: BLE001 - said in the build's status
                build.error = str(exc)
                build.status = "failed"
            finally:
                build.ended = time.time()

        threading.Thread(target=go, name=f"nbcontainer-{build.id}", daemon=True).start()
        return build

    def get(self, build_id: str) -> Build | None:
        return self._builds.get(build_id)


#: An image reference's repository[:tag] (Docker's grammar, a registry host allowed).
_TAG = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)


def check_tag(tag: Any) -> str:
    """A tag a browser may build: Docker's grammar, and not one of the project's own
    images (nbcontainer/...: the base, the dependency layers), which a build would replace."""
    if not isinstance(tag, str) or len(tag) > 255 or not _TAG.match(tag):
        raise InvalidOption("tag", tag, "an image name such as team/forecast:1")
    if tag.startswith("nbcontainer/"):
        raise InvalidOption("tag", tag, "nbcontainer/ holds the project's own images")
    return tag

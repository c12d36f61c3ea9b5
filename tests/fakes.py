"""Fakes behind the project's own seams, for unit tests of its state machines.

:class:`ScriptedBackend` is a Backend whose jobs follow a script: phases one
status call at a time, log pages, outputs copied from a prepared directory,
and errors raised on demand at any step. It is registered by name through
the backend registry's ``register()``, like any backend. The real-daemon
tests stay; these run in milliseconds and reach branches a daemon cannot be
made to take.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbcontainer_kernel.backends.base import Backend, Job, Phase, RunSpec


@dataclass
class Script:
    """What one job does: the phases its status calls report (the last one repeats), its
    exit code at the end, log lines (one more per status call), and its outputs."""

    phases: list[Phase] = field(default_factory=lambda: [Phase.QUEUED, Phase.RUNNING, Phase.SUCCEEDED])
    exit_code: int = 0
    logs: list[str] = field(default_factory=list)
    # A directory holding model/ and output/, or a callable (spec, dest) that writes them.
    outputs: Path | Callable[[RunSpec, Path], None] | None = None
    fail_on: dict[str, BaseException] = field(default_factory=dict)  # step name -> error to raise
    wait_for_cancel: bool = False  # stay RUNNING until cancelled


class ScriptedBackend(Backend):
    """A backend that plays scripts; `calls` records every step it was asked for."""

    name = "scripted"

    def __init__(self, scripts: dict[str, Script] | Callable[[RunSpec], Script] | None = None) -> None:
        self.scripts = scripts or {}
        self.calls: list[tuple[str, str]] = []
        self.specs: dict[str, RunSpec] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def script_for(self, spec: RunSpec) -> Script:
        if callable(self.scripts):
            return self.scripts(spec)
        return self.scripts.get(spec.run_id) or self.scripts.get("*") or Script()

    def _step(self, name: str, job_or_id: Job | str) -> dict[str, Any]:
        run_id = job_or_id if isinstance(job_or_id, str) else job_or_id.run_id
        with self._lock:
            self.calls.append((name, run_id))
            state = self._state.get(run_id, {})
        error = state.get("script", Script()).fail_on.get(name) if state else None
        if error is not None:
            raise error
        return state

    def submit(self, spec: RunSpec) -> Job:
        script = self.script_for(spec)
        with self._lock:
            self.specs[spec.run_id] = spec
            self._state[spec.run_id] = {"script": script, "calls": 0, "cancelled": False, "cleaned": False}
        self._step("submit", spec.run_id)
        return Job(self.name, spec.run_id, {"fake_id": f"job-{spec.run_id}"})

    def status(self, job: Job) -> tuple[Phase, int | None]:
        state = self._step("status", job)
        script: Script = state["script"]
        if state["cancelled"]:
            return Phase.CANCELLED, 137
        if script.wait_for_cancel:
            return Phase.RUNNING, None
        i = min(state["calls"], len(script.phases) - 1)
        state["calls"] += 1
        phase = script.phases[i]
        return phase, (script.exit_code if phase.terminal else None)

    def logs(self, job: Job, since: int = 0) -> list[str]:
        state = self._step("logs", job)
        lines = state["script"].logs
        done = state["cancelled"] or state["calls"] >= len(state["script"].phases)
        return (lines if done else lines[:state["calls"]])[since:]

    def cancel(self, job: Job) -> None:
        state = self._step("cancel", job)
        state["cancelled"] = True

    def fetch_results(self, job: Job, dest: Path) -> None:
        state = self._step("fetch_results", job)
        dest.mkdir(parents=True, exist_ok=True)
        outputs = state["script"].outputs
        if callable(outputs):
            outputs(self.specs[job.run_id], dest)
        elif outputs is not None:
            for sub in ("model", "output"):
                if (outputs / sub).is_dir():
                    shutil.copytree(outputs / sub, dest / sub, dirs_exist_ok=True)

    def cleanup(self, job: Job) -> None:
        state = self._step("cleanup", job)
        state["cleaned"] = True

    def cleaned(self, run_id: str) -> bool:
        return bool(self._state.get(run_id, {}).get("cleaned"))


def sealed_outputs(values: dict[str, Any], *, failure: str | None = None,
                   key: str | None = None) -> Callable[[RunSpec, Path], None]:
    """Outputs as a real run writes them: `values` as results, sealed with the run's key
    (from its spec's environment, as the runner gets it) or with `key`."""
    from nbcontainer_kernel.runner.cell import write_results
    from nbcontainer_kernel.runner.paths import Paths
    from nbcontainer_kernel.trust import KEY_ENV, seal

    def write(spec: RunSpec, dest: Path) -> None:
        paths = Paths(snapshot=dest / "unused", ml=dest)
        index = write_results(dict(values), list(values), None, [], spec.params, paths)
        if failure is not None:
            paths.failure.write_text(failure)
        seal(dest, key or spec.env.get(KEY_ENV), index)

    return write


def fake_image_builder(snap: Any, **_: Any) -> Any:
    """Stands in for build_run_image: no Docker, a made-up tag per snapshot."""
    from nbcontainer_kernel.remote.run_images import RunImage

    return RunImage(tag=f"fake/run:{snap.digest[:12]}", image_id="sha256:fake", digest=snap.digest,
                    deps_image="fake/deps:1", deps_reused=True)

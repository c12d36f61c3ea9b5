"""A run's log, read from where it is: what was collected (``logs.txt``) once the run
ended, else what its platform holds now (the container's log, CloudWatch).

One reader for every place a log is shown: ``nbcontainer logs [-f]`` and the server's
``GET runs/{id}/logs`` (followed there as server-sent events).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..backends.base import Phase
from .ledger import Ledger

__all__ = ["RunLog"]

TERMINAL = tuple(p.value for p in Phase if p.terminal)


class RunLog:
    """The lines of one run's log, read on from a line number."""

    def __init__(self, ledger: Ledger, run_id: str) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self._backend: Any = None
        self._job: Any = None

    def _platform(self, row: dict[str, Any]) -> tuple[Any, Any]:
        """The run's backend and job, attached once (a backend that follows a job started
        by another process attaches to it first)."""
        if self._backend is None:
            from ..backends.base import Job
            from ..backends.registry import get_backend

            self._backend = get_backend(row["backend"])
            self._job = Job(row["backend"], self.run_id, row["job"])
            attach = getattr(self._backend, "attach", None)
            if attach is not None:
                attach(self._job)
        return self._backend, self._job

    def read(self, since: int = 0) -> tuple[list[str], bool]:
        """The lines from line `since` on, and whether the run's job has ended (no line
        will follow them). A run not submitted yet (building) has none. A job that ended
        may still be collected (its outputs, its log as logs.txt): the ledger says when
        the run itself has ended (:meth:`ended_as`)."""
        row = self.ledger.get(self.run_id)
        ended = row["status"] in TERMINAL
        if ended or not row["job"]:
            return collected_lines(row)[since:], ended
        backend, job = self._platform(row)
        lines: list[str] = list(backend.logs(job, since))
        phase, _ = backend.status(job)
        if phase.terminal:  # the last lines, written as it ended
            lines += backend.logs(job, since + len(lines))
        return lines, bool(phase.terminal)

    def ended_as(self, wait: float = 0.0) -> str:
        """The run's status once it has ended in the ledger, waiting up to `wait` seconds
        for its collection; else the status it has now (COLLECTING: no one has collected
        it yet; `nbcontainer attach` does)."""
        deadline = time.monotonic() + wait
        while True:
            status = str(self.ledger.get(self.run_id)["status"])
            if status in TERMINAL or time.monotonic() >= deadline:
                return status
            time.sleep(0.25)


def collected_lines(row: dict[str, Any]) -> list[str]:
    log = Path(row["result_dir"] or "") / "logs.txt"
    if not log.is_file():
        return []
    return log.read_text(errors="replace").splitlines()

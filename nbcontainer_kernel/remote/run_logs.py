"""A run's log, read from where it is: what was collected (``logs.txt``) once the run
ended, else what its platform holds now (the container's log, CloudWatch).

One reader for every place a log is shown: ``nbcontainer logs [-f]`` and the server's
``GET runs/{id}/logs`` (followed there as server-sent events).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .ledger import Ledger

__all__ = ["RunLog", "TERMINAL"]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
#: Seconds a job's end waits for the ledger's (its outputs collected) before a log ends.
COLLECT_GRACE = 60.0


class RunLog:
    """The lines of one run's log, read on from a line number."""

    def __init__(self, ledger: Ledger, run_id: str) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self._backend: Any = None
        self._job: Any = None
        self._job_ended: float | None = None  # when the platform first said the job ended

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
        """The lines from line `since` on, and whether the run has ended (no line will
        follow them). A run not submitted yet (building) has none.

        A run has ended when the ledger says so: after its job ends it is still collected
        (its outputs, its log as logs.txt). A job that ended COLLECT_GRACE seconds ago
        while the ledger still says otherwise has no one collecting it (`nbcontainer
        attach` does): its log has ended too."""
        row = self.ledger.get(self.run_id)
        ended = row["status"] in TERMINAL
        if ended or not row["job"]:
            return collected_lines(row)[since:], ended
        backend, job = self._platform(row)
        lines: list[str] = list(backend.logs(job, since))
        phase, _ = backend.status(job)
        if not phase.terminal:
            return lines, False
        lines += backend.logs(job, since + len(lines))  # the last lines, written as it ended
        if self._job_ended is None:
            self._job_ended = time.monotonic()
        return lines, time.monotonic() - self._job_ended > COLLECT_GRACE


def collected_lines(row: dict[str, Any]) -> list[str]:
    log = Path(row["result_dir"] or "") / "logs.txt"
    if not log.is_file():
        return []
    return log.read_text(errors="replace").splitlines()

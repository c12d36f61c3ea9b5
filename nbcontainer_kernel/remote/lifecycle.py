"""One run's record in the ledger, and the only writer of its phases.

RemoteRunner makes a :class:`RunRecord` per run (a sweep's parent and each child
have their own). Every phase change goes through it: non-terminal phases with
:meth:`RunRecord.enter`, the end with :meth:`~RunRecord.end` (a run waited on:
its results, metric points and terminal phase in one transaction),
:meth:`~RunRecord.fail` or :meth:`~RunRecord.cancel`. The listeners (the panel,
the text printer) hear every transition, in order, after the ledger has it; a
record ends once, and later ends are no-ops.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..backends.base import Hooks, Outcome, Phase
from ..runtime.errors import LedgerError, NbcontainerError
from ..runtime.trust import Verdict
from .ledger import Ledger
from .results import RunResult

__all__ = ["RunRecord", "collecting", "end_fields", "failure_of"]


def failure_of(exc: BaseException, doing: str = "") -> tuple[str, bool]:
    """(the reason recorded for a run that `exc` ended before it ran, whether it was an
    interrupt): what "failed before it started" says, in one place."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted before it started", True
    return f"{type(exc).__name__}{f' while {doing}' if doing else ''}: {exc}", False


class RunRecord:
    """One run's row: the phases it goes through, its timings and its end."""

    def __init__(self, ledger: Ledger, run_id: str, hooks: Hooks | None = None) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.hooks = hooks or Hooks()
        #: Set to ask the run to stop (the Cancel button, %remote_cancel, a sweep's
        #: cancel): the driver waiting on it stops the job at its next poll.
        self.cancel_requested = threading.Event()
        self.timings: dict[str, float] = {}
        self._phase_started: tuple[Phase, float] | None = None
        self._ended = False
        self._lock = threading.Lock()

    @property
    def ended(self) -> bool:
        return self._ended

    # ------------------------------------------------------------ progress
    def enter(self, phase: Phase) -> None:
        """A non-terminal phase began: recorded with its time, then told to the listeners."""
        assert not phase.terminal, "a run ends through end(), fail() or cancel()"
        with self._lock:
            if self._ended:
                return
            at = self._advance(phase)
            self.ledger.add_phase(self.run_id, phase.value, at)
        self.hooks.phase(self.run_id, phase, dict(self.timings))

    def log(self, line: str) -> None:
        self.hooks.log(self.run_id, line)

    # ---------------------------------------------------------------- ends
    def end(self, outcome: Outcome, result: RunResult, accounting: dict[str, Any]) -> bool:
        """The end of a run waited on: its result fields, metric points and terminal
        phase in one transaction. An end the ledger cannot take now is kept beside the
        run's outputs and recorded when a ledger next opens (the listeners still hear
        it). False when the record had already ended."""
        fields, points = end_fields(outcome, result, accounting)
        return self._end(outcome.phase, fields, points)

    def fail(self, reason: str) -> bool:
        """End FAILED with `reason` (nothing ran, or what ran could not be waited on)."""
        return self._end(Phase.FAILED, {"failure": reason})

    def cancel(self, reason: str = "cancelled") -> bool:
        """End CANCELLED with `reason`."""
        return self._end(Phase.CANCELLED, {"failure": reason})

    def fail_from(self, exc: BaseException, doing: str = "") -> bool:
        """End for `exc` raised before the run ran: CANCELLED for an interrupt, else FAILED."""
        reason, interrupted = failure_of(exc, doing)
        return self.cancel(reason) if interrupted else self.fail(reason)

    def succeed(self, failure: str | None = None) -> bool:
        """End SUCCEEDED (a sweep's parent whose children all did)."""
        return self._end(Phase.SUCCEEDED, {"failure": failure})

    def _end(
        self,
        phase: Phase,
        fields: dict[str, Any],
        points: list[dict[str, Any]] | None = None,
    ) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            at = self._advance(phase)
            try:
                self.ledger.finish(self.run_id, fields, points, (phase.value, at))
            except LedgerError as exc:
                self.log(f"[nbcontainer] the run's end is kept to be recorded later: {exc}")
        self.hooks.phase(self.run_id, phase, dict(self.timings))
        return True

    def _advance(self, phase: Phase) -> float:
        """Close the running phase's time and open `phase`'s; returns now."""
        now = time.time()
        if self._phase_started is not None:
            prev, t0 = self._phase_started
            key = prev.value.lower()
            self.timings[key] = self.timings.get(key, 0.0) + now - t0
        self._phase_started = None if phase.terminal else (phase, now)
        return now


def end_fields(
    outcome: Outcome, result: RunResult, accounting: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(the ledger fields of a run's end, its metric points): metrics only from outputs
    that are believed; the run's own failure text only from those too."""
    trusted = outcome.verdict != Verdict.REFUSED
    base = {
        "exit_code": outcome.exit_code,
        "timed_out": int(outcome.timed_out),
        "verdict": outcome.verdict.value if outcome.verdict else None,
        "verified": outcome.verified,
        "platform": accounting,
    }
    if outcome.verdict is None:  # nothing was collected (the wait failed)
        return {**base, "failure": outcome.reason}, None
    try:
        fields = {
            **base,
            "metrics": result.metrics if trusted else {},
            "recorded": result.recorded if trusted else {},
            "failure": (result.failure if trusted else outcome.reason) or outcome.reason,
            "result_files": sorted(p.name for p in result.model_dir.glob("*"))
            if result.model_dir.exists()
            else [],
        }
        points = result.metric_history if trusted and result.metric_history else None
    except (NbcontainerError, OSError, ValueError) as exc:
        # Outputs that cannot be read (refused while read, unreadable): the end says so.
        return {**base, "failure": outcome.reason or str(exc)}, None
    return fields, points


def read_logs(dest: Path) -> list[str]:
    p = dest / "logs.txt"
    return p.read_text().splitlines() if p.exists() else []


@contextlib.contextmanager
def collecting(dest: Path) -> Iterator[None]:
    """One collector of a run's outputs at a time, across threads and processes (a
    --no-wait run's thread and %remote_attach, two kernels attached to one run): the
    second waits, then reads what the first fetched (RunDriver fetches once)."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".collecting", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

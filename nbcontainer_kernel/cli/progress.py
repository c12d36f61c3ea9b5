"""Progress of a run in the terminal, on stderr (stdout keeps the run's log and results).

One run: a bar through its phases (SNAPSHOT ... COLLECTING), one line per phase
with the time the last one took, and its log lines as they come. A sweep: the
parent's phases, then counts per state of its children on one line (redrawn in
place on a terminal, printed when they change elsewhere, at most once a second),
and every failed child named with its parameters and why, as it fails.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO

from ..backends.base import PROGRESS_STEPS as _STEPS
from ..backends.base import Hooks, Phase

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """A listener on a run's hooks that draws its progress on `stream`."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        logs: IO[str] | None = None,
        quiet: bool = False,
        width: int | None = None,
        describe: Callable[[str], str] | None = None,
    ) -> None:
        """`logs` gets the run's log lines (None: not shown); `quiet` shows only ends;
        `describe(child)` says a sweep child's parameters on its failure line."""
        self.stream = stream or sys.stderr
        self.logs = logs
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width or min(30, max(10, shutil.get_terminal_size((80, 20)).columns - 50))
        self.top: str | None = None  # the run asked for (a sweep's parent)
        self.children: dict[str, Phase] = {}
        self.failed: dict[str, str] = {}
        self.describe = describe
        self._lock = threading.Lock()
        self._last_counts = ""
        self._last_drawn = 0.0
        self._started = time.monotonic()

    @property
    def hooks(self) -> Hooks:
        return Hooks(on_phase=[self.on_phase], on_log=[self.on_log])

    def _write(self, text: str) -> None:
        if self.tty and self._last_counts:
            text = "\r\x1b[K" + text  # over the counts line; it is drawn again below
        print(text, file=self.stream, flush=True)
        if self.tty and self._last_counts:
            print(self._last_counts, end="", file=self.stream, flush=True)

    def _bar(self, phase: Phase) -> str:
        step = _STEPS.index(phase) + 1 if phase in _STEPS else len(_STEPS)
        filled = int(self.width * step / len(_STEPS))
        return "[" + "#" * filled + "-" * (self.width - filled) + "]"

    def on_phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        with self._lock:
            if self.top is None:
                self.top = run_id
            if run_id != self.top:
                self._child(run_id, phase)
                return
            if self.quiet and not phase.terminal:
                return
            elapsed = time.monotonic() - self._started
            took = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            if phase.terminal and self._last_counts:
                self._draw_counts(force=True)
                if self.tty:
                    print(file=self.stream)
                self._last_counts = ""
            self._write(
                f"{self._bar(phase)} {run_id} {phase.value:<10} {elapsed:6.1f} s"
                + (f"  ({took})" if took and phase.terminal else "")
            )

    def _child(self, run_id: str, phase: Phase) -> None:
        self.children[run_id] = phase
        if phase is Phase.FAILED and run_id not in self.failed:
            self.failed[run_id] = self.describe(run_id) if self.describe else ""
            self._write(f"  failed: {run_id} {self.failed[run_id]}".rstrip())
        self._draw_counts()

    def _draw_counts(self, force: bool = False) -> None:
        counts = Counter(p.value.lower() for p in self.children.values())
        done = sum(counts[p] for p in ("succeeded", "failed", "cancelled"))
        total = max(len(self.children), 1)
        filled = int(self.width * done / total)
        line = (
            "["
            + "#" * filled
            + "-" * (self.width - filled)
            + f"] {done}/{len(self.children)} "
            + " · ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        )
        now = time.monotonic()
        if self.tty:
            self._last_counts = line
            print("\r\x1b[K" + line, end="", file=self.stream, flush=True)
        elif force or (line != self._last_counts and now - self._last_drawn >= 1.0):
            self._last_counts = line
            self._last_drawn = now
            print(line, file=self.stream, flush=True)
        else:
            self._last_counts = self._last_counts or line

    def on_log(self, run_id: str, line: str) -> None:
        if self.logs is None or (self.top is not None and run_id != self.top):
            return  # a sweep's children: their logs are in `nbcontainer logs CHILD`
        print(line, file=self.logs, flush=True)

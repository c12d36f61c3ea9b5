"""The progress panel's plain-text twin: one line per phase change, then log lines
as they come. Used where no widget frontend is attached (nbclient, papermill,
terminal IPython)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..backends.base import Phase

__all__ = ["TextProgress"]


class TextProgress:
    """A listener on the progress hooks that prints."""

    def __init__(self, stream: TextIO | None = None, prefix_logs: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.prefix_logs = prefix_logs  # in a sweep, say which child a log line is from
        self.lines: list[str] = []
        self.started = time.monotonic()

    def _print(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def on_phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        done = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        elapsed = time.monotonic() - self.started
        self._print(
            f"[{run_id}] {phase.value} ({elapsed:.1f}s elapsed" + (f"; {done})" if done else ")")
        )

    def on_log(self, run_id: str, line: str) -> None:
        self._print(f"[{run_id}] {line}" if self.prefix_logs else line)

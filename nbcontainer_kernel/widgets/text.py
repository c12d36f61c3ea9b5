"""The progress panel's plain-text twin: one line per phase change, then log lines
as they come; a sweep child's end says its parameters, duration and latest metrics, and
a run's end its latest metrics. Used where no widget frontend is attached (nbclient,
papermill, terminal IPython)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..backends.base import Phase
from ..runtime.metrics import parse_metric_lines

__all__ = ["TextProgress"]


class TextProgress:
    """A listener on the progress hooks that prints."""

    def __init__(
        self,
        stream: TextIO | None = None,
        prefix_logs: bool = False,
        describe: Callable[[str], str] | None = None,
    ) -> None:
        """`describe(child)` gives a sweep child's parameter values for its end line."""
        self.stream = stream or sys.stdout
        self.prefix_logs = prefix_logs  # in a sweep, say which child a log line is from
        self.describe = describe
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.latest: dict[str, dict[str, tuple[float, int | None]]] = {}

    def _print(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def on_phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        from .panel import latest_metrics_text

        done = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        elapsed = time.monotonic() - self.started
        self._print(
            f"[{run_id}] {phase.value} ({elapsed:.1f}s elapsed" + (f"; {done})" if done else ")")
        )
        if phase.terminal:
            parts = [self.describe(run_id) if self.describe else ""]
            if self.describe and parts[0]:  # a sweep child: how long it took, as its row says
                parts.append(f"{sum(timings.values()):.1f} s")
            parts.append(latest_metrics_text(self.latest.get(run_id, {})))
            if any(parts):
                self._print(f"[{run_id}] " + "; ".join(p for p in parts if p))

    def on_log(self, run_id: str, line: str) -> None:
        for point in parse_metric_lines(line):
            self.latest.setdefault(run_id, {})[point["name"]] = (point["value"], point["step"])
        self._print(f"[{run_id}] {line}" if self.prefix_logs else line)

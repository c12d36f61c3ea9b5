"""The progress panel (ipywidgets): phase, per-phase timings, a bar, elapsed time, the
latest value of each metric the run logs, live logs in a collapsible area and a Cancel
button; one row per child of a sweep (its parameters, phase, duration, latest metric).

It is one more listener on the library's progress hooks; the core never
imports ipywidgets.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from collections.abc import Callable

import ipywidgets as w

from ..backends.base import PROGRESS_STEPS as _STEPS
from ..backends.base import Phase
from ..runtime.metrics import parse_metric_lines

__all__ = ["RunPanel"]

_STYLE = {Phase.SUCCEEDED: "success", Phase.FAILED: "danger", Phase.CANCELLED: "warning"}
#: A sweep shows at most this many child rows (failed children first, then running ones),
#: under a summary line that counts every child by phase.
MAX_CHILD_ROWS = 20


def latest_metrics_text(latest: dict[str, tuple[float, int | None]]) -> str:
    """``loss 0.25 (step 3) · acc 0.91``: a run's latest metric values on one line."""
    return " · ".join(
        f"{name} {value:.4g}" + (f" (step {step})" if step is not None else "")
        for name, (value, step) in latest.items()
    )


class _Row:
    """A sweep child: its id, its parameter values, a bar, its phase, how long it took and
    its latest metric values."""

    def __init__(self, run_id: str, detail: str = "") -> None:
        self.label = w.Label(run_id, layout=w.Layout(width="10em"))
        self.detail = w.Label(detail, layout=w.Layout(width="14em"))
        self.bar = w.IntProgress(value=0, min=0, max=len(_STEPS), layout=w.Layout(width="25%"))
        self.phase = w.Label("", layout=w.Layout(width="11em"))
        self.metric = w.Label("")
        self.box = w.HBox([self.label, self.detail, self.bar, self.phase, self.metric])

    def set(self, phase: Phase, seconds: float | None = None) -> None:
        self.bar.value = len(_STEPS) if phase.terminal else _STEPS.index(phase) + 1
        self.bar.bar_style = _STYLE.get(phase, "info")
        self.phase.value = phase.value + (f" {seconds:.1f} s" if seconds else "")


class RunPanel:
    """One panel per run (a sweep's children get a row each)."""

    def __init__(
        self,
        run_id: str,
        on_cancel: Callable[[], None] | None = None,
        max_log_lines: int = 2000,
        describe: Callable[[str], str] | None = None,
    ) -> None:
        """`describe(child)` gives a sweep child's parameter values for its row (asked once
        per row shown)."""
        self.run_id = run_id
        self._describe = describe
        self.started = time.monotonic()
        self.phase = w.HTML(f"<b>{html.escape(run_id)}</b>: starting")
        self.bar = w.IntProgress(value=0, min=0, max=len(_STEPS), description="progress")
        self.elapsed = w.Label("0.0 s")
        self.timings = w.HTML("")
        self.metrics = w.HTML("")  # the latest value of each metric, as the run logs them
        self.log = w.Textarea(value="", layout=w.Layout(width="100%", height="14em"), disabled=True)
        self.logs = w.Accordion(children=[self.log], selected_index=None)
        self.logs.set_title(0, "log")
        self.cancel = w.Button(description="Cancel", button_style="warning", icon="stop")
        self.children = w.VBox([])
        self.summary = w.HTML("")
        self.rows: dict[str, _Row] = {}
        self.child_phases: dict[str, Phase] = {}  # every child, shown or not
        self._seconds: dict[str, float] = {}  # how long each finished child took
        self._counts: dict[Phase, int] = {}
        # Children by group (failed, running, waiting, finished), each in order of arrival.
        self._groups: tuple[dict[str, None], ...] = ({}, {}, {}, {})
        self._on_cancel = on_cancel
        self.cancel.on_click(lambda _b: self.request_cancel())
        self.max_log_lines = max_log_lines
        self._lock = threading.RLock()
        self._log_lines: list[str] = []
        # run id -> metric name -> (latest value, its step), from the run's metric lines
        self.latest: dict[str, dict[str, tuple[float, int | None]]] = {}
        self.widget = w.VBox(
            [
                w.HBox([self.phase, self.elapsed, self.cancel]),
                self.bar,
                self.timings,
                self.metrics,
                self.summary,
                self.children,
                self.logs,
            ]
        )

    def request_cancel(self) -> None:
        """The Cancel button's handler (the kernel's main thread, while the run is waited on)."""
        with self._lock:
            self.cancel.disabled = True
            self.cancel.description = "Cancelling"
        if self._on_cancel:
            self._on_cancel()

    # listeners: called from the thread that waits on a run, and from a sweep's worker
    # threads at once; one lock keeps each update whole.
    def on_phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        with self._lock:
            self._on_phase(run_id, phase, timings)

    def on_log(self, run_id: str, line: str) -> None:
        with self._lock:
            self._on_log(run_id, line)

    def _on_phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        self.elapsed.value = f"{time.monotonic() - self.started:.1f} s"
        if run_id != self.run_id:
            if phase.terminal:
                self._seconds[run_id] = sum(timings.values())
            self._on_child(run_id, phase)
            return
        self.phase.value = f"<b>{html.escape(run_id)}</b>: {phase.value}"
        self.bar.value = len(_STEPS) if phase.terminal else _STEPS.index(phase) + 1
        self.bar.bar_style = _STYLE.get(phase, "info")
        self.timings.value = "".join(
            f"<span style='margin-right:1em'>{k} {v:.2f}s</span>" for k, v in timings.items()
        )
        if phase.terminal:
            self.ended(phase)

    def ended(self, phase: Phase) -> None:
        """The run is over: Cancel is disabled, and looks it (no colour, says why)."""
        self.cancel.disabled = True
        self.cancel.button_style = ""
        self.cancel.icon = "check" if phase == Phase.SUCCEEDED else "times"
        self.cancel.description = phase.value.capitalize()
        self.cancel.tooltip = "the run has ended"

    def _on_child(self, run_id: str, phase: Phase) -> None:
        # Kept incrementally: a sweep of 10,000 children reports about 30,000 changes.
        old = self.child_phases.get(run_id)
        if old is not None:
            self._counts[old] -= 1
            self._groups[self._group(old)].pop(run_id, None)
        self.child_phases[run_id] = phase
        self._counts[phase] = self._counts.get(phase, 0) + 1
        self._groups[self._group(phase)][run_id] = None
        self.summary.value = f"{len(self.child_phases)} children: " + ", ".join(
            f"{n} {p.value.lower()}"
            for p, n in sorted(
                self._counts.items(), key=lambda pn: (pn[0] != Phase.FAILED, pn[0].order)
            )
            if n
        )
        shown = self._shown()
        for child in shown:
            if child not in self.rows:
                self.rows[child] = _Row(child, self._describe(child) if self._describe else "")
                self.rows[child].metric.value = latest_metrics_text(self.latest.get(child, {}))
        if run_id in self.rows:
            self.rows[run_id].set(phase, self._seconds.get(run_id))
        boxes = tuple(self.rows[c].box for c in shown)
        if boxes != self.children.children:
            for child in shown:
                self.rows[child].set(self.child_phases[child], self._seconds.get(child))
            self.children.children = boxes

    @staticmethod
    def _group(phase: Phase) -> int:
        if phase == Phase.FAILED:
            return 0
        if phase in (Phase.STARTING, Phase.RUNNING, Phase.COLLECTING):
            return 1
        return 3 if phase.terminal else 2

    def _shown(self) -> list[str]:
        """The children with a row: all of a small sweep, the failed first, the others in
        order; of a large one, only the failed and then the running: MAX_CHILD_ROWS at
        most (the summary line counts the rest)."""
        if len(self.child_phases) <= MAX_CHILD_ROWS:
            failed = sorted(self._groups[0], key=_run_order)
            others = sorted(
                (c for c in self.child_phases if c not in self._groups[0]), key=_run_order
            )
            return failed + others
        return list(itertools.islice(itertools.chain(*self._groups[:2]), MAX_CHILD_ROWS))

    def _on_log(self, run_id: str, line: str) -> None:
        self.elapsed.value = f"{time.monotonic() - self.started:.1f} s"
        for point in parse_metric_lines(line):
            latest = self.latest.setdefault(run_id, {})
            latest[point["name"]] = (point["value"], point["step"])
            if run_id == self.run_id:
                self.metrics.value = _metrics_table(latest)
            elif run_id in self.rows:
                self.rows[run_id].metric.value = latest_metrics_text(latest)
        prefix = f"[{run_id}] " if run_id != self.run_id else ""
        self._log_lines.append(prefix + line)
        del self._log_lines[: -self.max_log_lines]
        self.log.value = "\n".join(self._log_lines)


def _metrics_table(latest: dict[str, tuple[float, int | None]]) -> str:
    cells = "".join(
        f"<tr><td style='padding-right:1em'>{html.escape(name)}</td>"
        f"<td style='text-align:right'>{value:.6g}</td>"
        f"<td style='padding-left:1em;color:#666'>{_step(step)}</td></tr>"
        for name, (value, step) in latest.items()
    )
    return f"<table style='font-size:90%'>{cells}</table>"


def _step(step: int | None) -> str:
    return "" if step is None else f"step {step}"


def _run_order(run_id: str) -> tuple[str, int, str]:
    """NAME-N ids in the order of N (sweep-10 after sweep-9), others by name."""
    stem, _, seq = run_id.rpartition("-")
    return (stem, int(seq), "") if seq.isdigit() else (run_id, 0, run_id)

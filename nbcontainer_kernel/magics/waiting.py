"""How ``%%remote_run`` waits without deafening the kernel to its own Cancel button.

A click on the panel's Cancel button is a comm message on the kernel's shell channel.
A cell that blocks holds the kernel, which reads that message only once the cell is
done: the click would land after the run (jupyter-widgets/ipywidgets#3468). ipykernel
7.4 and later dispatch comm messages while a cell *awaits*. So in such a kernel a
``%%remote_run`` cell is rewritten, before it runs, into an awaiting one: the run is
waited on in a worker thread (:func:`asyncio.to_thread`, which carries the cell's
context, so prints and displays land in the cell) while the kernel's event loop stays
free to deliver the click. The click sets the request's StopSignal; the run stops at
its next poll (0.1 s), is cancelled and cleaned up, and the cell ends with one short
"cancelled" line.

The kernel's interrupt (the stop button) cancels the awaiting cell (ipykernel turns
SIGINT into a CancelledError); the worker is then stopped the way Ctrl-C stops a run
waited on in the main thread (cancelled, or detached with ``RemoteRun.interrupt =
'detach'``), and the cell ends with KeyboardInterrupt as before.

In ipykernel 6 (and 5), which deliver shell messages only between cells, the magic
blocks as before but pumps the kernel's pending messages at every poll while it waits
(jupyter-ui-poll, which holds back execute requests and replays them after the cell):
the click is handled within a poll there too. Anywhere else (terminal IPython, a kernel
that has neither) the magic blocks as before and Cancel takes effect after the cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["register", "waits_concurrently", "run_async", "pumping"]

_CELL = re.compile(r"^%%remote_run(?:[ \t]+(?P<line>[^\n]*))?[ \t]*$")
_MIN_IPYKERNEL = (7, 4)


def waits_concurrently(shell: Any) -> bool:
    """Whether this shell's kernel delivers comm messages while a cell awaits."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None or not type(kernel).__module__.startswith("ipykernel"):
        return False
    try:
        import ipykernel
    except ImportError:  # pragma: no cover - a kernel object without ipykernel
        return False
    return tuple(getattr(ipykernel, "version_info", (0,))[:2]) >= _MIN_IPYKERNEL


@contextlib.contextmanager
def pumping(shell: Any) -> Iterator[Callable[[], None] | None]:
    """A function that handles the kernel's pending messages (widget clicks) while the main
    thread waits, for kernels that deliver them only between cells; None elsewhere."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None or waits_concurrently(shell) or not hasattr(kernel, "do_one_iteration"):
        yield None
        return
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:  # pragma: no cover - a dependency; without it Cancel waits for the cell
        yield None
        return
    with ui_events() as poll:
        yield lambda: poll(10)


def _rewrite(lines: list[str]) -> list[str]:
    """IPython's cleanup transform: a ``%%remote_run`` cell becomes an awaited call."""
    if not lines:
        return lines
    m = _CELL.match(lines[0].rstrip("\n"))
    if m is None:
        return lines
    line, cell = m.group("line") or "", "".join(lines[1:])
    module = __name__
    return [
        f"await __import__({module!r}, fromlist=['run_async']).run_async("
        f"get_ipython(), {line!r}, {cell!r})\n"
    ]


def register(shell: Any) -> bool:
    """Install the rewrite on a shell whose kernel waits concurrently; True when installed."""
    if not waits_concurrently(shell):
        return False
    transforms = shell.input_transformers_cleanup
    if _rewrite not in transforms:
        transforms.append(_rewrite)
    return True


async def run_async(shell: Any, line: str, cell: str) -> Any:
    """The body of a rewritten ``%%remote_run`` cell (see the module's doc)."""
    magics = shell.magics_manager.registry["RemoteRun"]
    prepared = magics._prepare(line, cell)  # UsageErrors here, in the cell, as before
    worker = asyncio.ensure_future(asyncio.to_thread(_execute, prepared))
    with _interrupts_stop(prepared.stop):
        try:
            outcome = await asyncio.shield(worker)
        except asyncio.CancelledError:
            # The cell was cancelled (ipykernel's own SIGINT handling): stop the run as Ctrl-C
            # would, and wait for its end and cleanup.
            prepared.stop.set()
            outcome = await worker
    if isinstance(outcome, _Interrupted):
        prepared.say_interrupted()
        raise KeyboardInterrupt
    return magics._show(outcome, prepared.listener)


@contextlib.contextmanager
def _interrupts_stop(stop: Any) -> Iterator[None]:
    """While the cell awaits, SIGINT (the kernel's interrupt) sets the run's stop signal.

    ipykernel's own handler for awaiting cells only cancels the cell at the event loop's
    next wake-up, which a long wait may not give it for minutes; the loop's own signal
    handling wakes it at once.
    """
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no Unix loop
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)


class _Interrupted:
    """What the worker returns instead of raising KeyboardInterrupt (which asyncio would
    re-raise out of the kernel's event loop)."""


def _execute(prepared: Any) -> Any:
    try:
        return prepared.execute()
    except KeyboardInterrupt:
        return _Interrupted()

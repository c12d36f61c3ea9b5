"""The backend seam: where a run image runs (this machine, AWS Batch, SageMaker).

A backend implements a few steps, like jupyter_client's provisioner base:
``submit`` a job, report its ``status`` as a :class:`Phase`, return its
``logs`` since a line, ``cancel`` it, ``fetch_results`` into a directory, and
``cleanup`` whatever it made. :class:`RunDriver` follows a submitted job
to its end around them (the timeout, a cancel asked for, the always-run cleanup)
and returns an :class:`Outcome`; the run's record, and every phase written to
it, is its owner's (remote.lifecycle.RunRecord).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from traitlets import MetaHasTraits, TraitError

from ..config import EnvDefaults, trait_default
from ..runtime.errors import InvalidOption
from ..runtime.trust import Verdict

__all__ = [
    "Phase",
    "RunSpec",
    "Job",
    "Backend",
    "Settings",
    "RunDriver",
    "Outcome",
    "Progress",
    "HooksProgress",
    "Verifier",
    "StopSignal",
    "Hooks",
    "PhaseCallback",
    "LogCallback",
    "write_log",
]

log = logging.getLogger(__name__)

#: Left in a run's output directory once its outputs are fetched in full.
COLLECTED = ".collected"


class Phase(str, enum.Enum):
    """One status model for every backend."""

    SNAPSHOT = "SNAPSHOT"
    BUILD = "BUILD"
    PUSH = "PUSH"
    SUBMITTED = "SUBMITTED"
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    COLLECTING = "COLLECTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)

    @property
    def order(self) -> int:
        return list(Phase).index(self)


#: The phases a progress bar counts (a terminal phase fills it), in order.
PROGRESS_STEPS = (
    Phase.SNAPSHOT,
    Phase.BUILD,
    Phase.PUSH,
    Phase.SUBMITTED,
    Phase.QUEUED,
    Phase.STARTING,
    Phase.RUNNING,
    Phase.COLLECTING,
    Phase.SUCCEEDED,
)

PhaseCallback = Callable[[str, "Phase", dict[str, float]], None]
LogCallback = Callable[[str, str], None]


@dataclass
class Hooks:
    """Progress listeners: the widget panel and the text printer are two of them."""

    on_phase: list[PhaseCallback] = field(default_factory=list)
    on_log: list[LogCallback] = field(default_factory=list)

    def phase(self, run_id: str, phase: Phase, timings: dict[str, float]) -> None:
        for cb in self.on_phase:
            cb(run_id, phase, timings)

    def log(self, run_id: str, line: str) -> None:
        for cb in self.on_log:
            cb(run_id, line)


#: One run's backend settings, resolved when the run starts and frozen (read-only): the
#: run carries them (RunSpec.settings), and nothing a later run configures changes them.
Settings = Mapping[str, Any]


@dataclass
class RunSpec:
    """What to run: an image, its parameters, and its resources."""

    run_id: str
    image: str
    params: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # arguments to the runner (e.g. -p NAME VALUE)
    env: dict[str, str] = field(default_factory=dict)  # given at run time only, never baked in
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    timeout: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    detached: bool = False
    name: str = "run"  # the run's name (job definitions and job names use it)
    notebook: str | None = None  # the notebook the run came from (a tag where platforms take one)
    #: This run's backend settings (Backend.settings), frozen when the run started.
    settings: Settings = field(default_factory=lambda: MappingProxyType({}))
    #: A private directory of this run on the host (the ledger's run directory), at the same
    #: path in a containerized kernel; for backends that stage files beside the run.
    workdir: str | None = None
    #: Names the cell logs metrics under (platforms that must be told, like SageMaker).
    metric_names: list[str] = field(default_factory=list)
    #: A snapshot directory on this host, for a backend that runs_snapshots: `image` is then
    #: the snapshot's runtime image, and the backend copies the snapshot into its container.
    snapshot: str | None = None


@dataclass
class Job:
    """A submitted run, as a backend knows it; `handle` is what finds it again."""

    backend: str
    run_id: str
    handle: dict[str, Any]


class _BackendType(MetaHasTraits, ABCMeta):
    """A backend is a traitlets Configurable (its settings) and an abstract base."""


class Backend(EnvDefaults, metaclass=_BackendType):
    """Runs run images somewhere. Found by name through the
    ``nbcontainer_kernel.backends`` entry points (see registry.py).

    Its settings are its ``config=True`` traits (``c.BatchBackend.queue``, or ``%config
    BatchBackend.queue``; the environment variable in each trait's metadata, then the
    ``[tool.nbcontainer]`` table, as config.EnvDefaults reads them). One instance serves
    every run of a process, so no run changes it: RemoteRunner resolves a run's settings
    once (:meth:`settings`) and hands them to every step with the run.
    """

    name: str = "?"
    #: Whether the image must be pushed to a registry before submit.
    needs_push: bool = False
    #: Whether a sweep goes to the platform in one step (:meth:`submit_sweep`: AWS Batch's
    #: array job) rather than child by child as slots free up (the runner's thread pool).
    one_job_per_sweep: bool = False
    #: Whether it can run a snapshot on its runtime image (RunSpec.snapshot) without a run
    #: image made for it: the local backend copies the snapshot into a warm container.
    #: Such a backend has a ``run_pool_size`` setting (0: a run image for every run).
    runs_snapshots: bool = False

    def settings(self, overrides: Mapping[str, Any] | None = None) -> Settings:
        """A run's settings, frozen: each configured value, with `overrides` (a run's
        flags, by setting name or by its ``[tool.nbcontainer]`` name) over them; None in
        `overrides` is not given. Called by RemoteRunner once, when the run starts.
        InvalidOption names a bad value and where it came from."""
        traits = self.traits(config=True)
        aliases = {t.metadata.get("setting", n): n for n, t in traits.items()}
        sections = [self.config[s] for s in self.section_names() if s in self.config]
        values = {
            # A configured value as it is; the others read afresh (the environment of now).
            # A value configured as None is not set (`%config BatchBackend.queue = None`
            # undoes an earlier one): the environment and pyproject.toml speak again.
            name: getattr(self, name)
            if any(section.get(name) is not None for section in sections)
            else trait_default(self, name)
            for name in traits
        }
        for key, value in (overrides or {}).items():
            name = aliases.get(key, key)
            if value is None or name not in traits:
                continue
            try:
                values[name] = traits[name]._validate(self, value)
            except TraitError as exc:
                # Overrides are a run's flags: named as the flag (the magic shows a UsageError).
                flag = f"--{name.replace('_', '-')}"
                raise InvalidOption(flag, value, str(exc).splitlines()[0]) from None
        return MappingProxyType(values)

    def check(self, settings: Settings) -> None:  # noqa: B027 - optional step
        """Refuse settings a run cannot go with (MissingSetting or InvalidOption, naming
        the setting); called by RemoteRunner before each run, which is then recorded
        FAILED with that reason."""

    def check_resources(  # noqa: B027 - optional step
        self, cpus: float | None, memory: str | None, gpus: str | None, settings: Settings
    ) -> None:
        """Refuse resources this backend cannot give (InvalidOption naming the flag, which the
        magic shows as a UsageError); called by RemoteRunner after check, before a build."""

    def accounting(self, job: Job) -> dict[str, Any]:
        """What the platform says the ended job cost (billable seconds, instance type, spot
        savings); RemoteRunner records it in the ledger once the run ended."""
        return {}

    def poll_interval(self, waited: float) -> float:
        """Seconds between status polls after `waited` seconds of waiting (RunDriver asks
        before each sleep); platforms with rate-limited APIs back off."""
        return 0.1

    def submit_sweep(self, parent: str, specs: list[RunSpec]) -> list[Job]:
        """Submit every child of sweep `parent` in one step; returns one Job per spec, in
        order. Called by RemoteRunner once, for one_job_per_sweep backends; by default
        each child is submitted on its own."""
        return [self.submit(spec) for spec in specs]

    @abstractmethod
    def submit(self, spec: RunSpec) -> Job:
        """Start the run; called once per run by RemoteRunner once the image exists."""

    @abstractmethod
    def status(self, job: Job) -> tuple[Phase, int | None]:
        """(phase, exit code once known); called by RunDriver while it waits."""

    @abstractmethod
    def logs(self, job: Job, since: int = 0) -> list[str]:
        """Log lines from number `since` on (0-based), as they are written."""

    @abstractmethod
    def cancel(self, job: Job) -> None:
        """Stop the run; idempotent."""

    @abstractmethod
    def fetch_results(self, job: Job, dest: Path) -> None:
        """Copy the run's /opt/ml/model and /opt/ml/output into dest (model/, output/)."""

    def end_reason(self, job: Job) -> str | None:
        """Why a job ended, when the platform says more than an exit code (OOMKilled);
        called by RunDriver once the job is over."""
        return None

    def cleanup(self, job: Job) -> None:  # noqa: B027 - optional step: nothing to remove by default
        """Remove what the run left on the platform (RunDriver's `finally` calls it)."""

    def push(
        self, image: str, settings: Settings, hooks: Hooks | None = None, run_id: str = ""
    ) -> str:
        """Push the image where the backend can pull it (its `settings` say where); returns
        the pushed reference (by digest). Called by RemoteRunner in the PUSH phase when
        needs_push; progress goes to `hooks` as log lines of `run_id`."""
        return image


class StopSignal(threading.Event):
    """Asks runs waited on in another thread to stop: what Ctrl-C is to a run waited on in
    the main thread. Those waiting raise KeyboardInterrupt at their next poll and end as
    an interrupt would: ``cancel()`` (the panel's Cancel, ``%remote_cancel``) always
    cancels; ``set()`` (the kernel's interrupt) cancels or detaches as configured."""

    force_cancel = False
    #: Called by check() on the main thread: lets a kernel that delivers widget messages
    #: only between cells handle a Cancel click while the main thread waits.
    pump: Callable[[], None] | None = None

    def cancel(self) -> None:
        self.force_cancel = True
        self.set()

    def check(self) -> None:
        """Raise KeyboardInterrupt when a stop was asked for (called between steps)."""
        if self.pump is not None and threading.current_thread() is threading.main_thread():
            self.pump()
        if self.is_set():
            raise KeyboardInterrupt


@dataclass(frozen=True)
class Outcome:
    """How a run waited on ended: :meth:`RunDriver.wait`'s answer, which the run's owner
    records (remote.lifecycle.RunRecord.end)."""

    phase: Phase  # terminal
    exit_code: int | None = None
    timed_out: bool = False
    verdict: Verdict | None = None  # None: outputs never collected
    verified: str | None = None  # the verdict in words (which file was refused, and why)
    #: What the host knows of an end the run could not write itself (timed out, cancelled,
    #: out of memory, the wait failed).
    reason: str | None = None
    #: The collected outputs, verified once (a RunOutputs; reads do not hash them again).
    outputs: Any = field(default=None, compare=False, repr=False)
    #: What ended the wait early (the daemon went away): re-raised once the end is recorded.
    error: BaseException | None = field(default=None, compare=False)


class Progress(Protocol):
    """Where a driver reports a run's progress (the host's RunRecord; run_image's hooks)."""

    def enter(self, phase: Phase) -> None:
        """A non-terminal phase began."""

    def log(self, line: str) -> None:
        """A line of the run's log."""


#: Checks collected outputs: (verdict, the verdict in words, the verified RunOutputs).
Verifier = Callable[[Path], tuple[Verdict, str, Any]]


class RunDriver:
    """Follows one submitted job to its end: a poll loop that returns an :class:`Outcome`.

    It writes nothing itself: the phases it sees go to `progress`, its end is the
    Outcome it returns (or the KeyboardInterrupt it lets through). A cancel asked for
    (`cancel` set) or the timeout stops the job on its backend; the backend's cleanup
    runs whatever happens, and an error in it is logged beside what ended the run,
    never instead of it.
    """

    def __init__(
        self,
        backend: Backend,
        progress: Progress,
        *,
        on_interrupt: str = "cancel",
        verify: Verifier | None = None,
        stop: StopSignal | None = None,
        cancel: threading.Event | None = None,
        collecting: Callable[[Path], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.backend = backend
        self.progress = progress
        #: Held while outputs are fetched and verified (one collector of a run at a time).
        self.collecting = collecting or (lambda _dest: nullcontext())
        self.on_interrupt = on_interrupt  # what Ctrl-C while waiting does: "cancel" or "detach"
        self.verify = verify
        self.stop = stop  # a stop asked from another thread (the Cancel button, an interrupt)
        self.cancel = cancel if cancel is not None else threading.Event()
        self._stopped = False  # the job was stopped and cleaned up after an interrupt

    def wait(self, job: Job, spec: RunSpec, dest: Path, poll: float | None = None) -> Outcome:
        """Follow a submitted job to its end, streaming its log; then collect and verify
        its outputs into `dest`.

        Ctrl-C (or a stop) raises KeyboardInterrupt after stopping the job and cleaning
        up, except when it is to detach: then the job runs on and can be attached later.
        Any other error ends the wait in an Outcome FAILED carrying it.
        """
        try:
            outcome = self._poll(job, spec, dest, poll)
        except KeyboardInterrupt as interrupt:
            if not self.detaches():
                self.stop_job(job, interrupt)
            raise
        except Exception as exc:
            # The daemon went away, a platform call failed, results could not be fetched.
            self.clean(job, exc)
            return Outcome(
                Phase.FAILED, reason=f"{type(exc).__name__} while waiting: {exc}", error=exc
            )
        self.clean(job)
        return outcome

    def detaches(self) -> bool:
        """Whether an interrupt now leaves the job running (detach) rather than cancelling it."""
        forced = self.stop is not None and self.stop.force_cancel
        return self.on_interrupt == "detach" and not forced

    def interrupt_reason(self) -> str:
        """Why a run stopped by an interrupt ended (the Cancel button, or Ctrl-C)."""
        forced = self.stop is not None and self.stop.force_cancel
        return "cancelled" if forced else "cancelled by a kernel interrupt"

    def stop_job(self, job: Job, cause: BaseException | None = None) -> None:
        """Stop the job on its backend and remove what it left (once)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.backend.cancel(job)
        finally:
            self.clean(job, cause)

    def clean(self, job: Job, cause: BaseException | None = None) -> None:
        """The backend's cleanup; an error in it is logged (and noted on `cause`), never raised
        in place of what ended the run."""
        try:
            self.backend.cleanup(job)
        except Exception as exc:
            msg = (
                f"cleanup of run {job.run_id} failed: {type(exc).__name__}: {exc}; "
                "`nbcontainer gc` removes what it left"
            )
            log.warning(msg)
            self.progress.log(f"[nbcontainer] {msg}")
            if cause is not None and hasattr(cause, "add_note"):
                cause.add_note(f"({msg})")

    def _sleep(self, seconds: float) -> None:
        """Sleep until the next poll, in slices: a stop (and, on the main thread, a Cancel
        click that the stop's pump delivers) or a cancel asked meanwhile cuts it short."""
        deadline = time.monotonic() + seconds
        while True:
            if self.stop is not None:
                self.stop.check()
            left = deadline - time.monotonic()
            if left <= 0 or self.cancel.is_set():
                return
            time.sleep(min(left, 0.1))

    def _poll(self, job: Job, spec: RunSpec, dest: Path, poll: float | None) -> Outcome:
        seen = 0
        started = time.monotonic()
        cancel_sent = timed_out = False
        phase, code = Phase.SUBMITTED, None
        deadline = None if spec.timeout is None else started + spec.timeout
        while True:
            new, code = self.backend.status(job)
            if new != phase and not new.terminal:
                self.progress.enter(new)
            phase = new
            for line in self.backend.logs(job, seen):
                seen += 1
                self.progress.log(line)
            if phase.terminal:
                break
            if self.stop is not None:
                self.stop.check()
            if not self.cancel.is_set() and deadline is not None and time.monotonic() > deadline:
                timed_out = True
                self.cancel.set()
            if self.cancel.is_set() and not cancel_sent:
                # Once: a platform may take a while to stop the job; we wait for it.
                cancel_sent = True
                self.backend.cancel(job)
            waited = time.monotonic() - started
            self._sleep(poll if poll is not None else self.backend.poll_interval(waited))
        for line in self.backend.logs(job, seen):
            self.progress.log(line)
        self.progress.enter(Phase.COLLECTING)
        with self.collecting(dest):
            # Collected once: another waiter of this run (a --no-wait run's thread and
            # %remote_attach) reads the same files, which a second fetch would rewrite
            # under whoever reads them.
            if not (dest / COLLECTED).exists():
                self.backend.fetch_results(job, dest)
                (dest / COLLECTED).touch()
            verdict, verified, outputs = self.verify(dest) if self.verify else (None, None, None)
        reason = None
        if timed_out:
            reason = f"the run timed out after {spec.timeout:g} s and was stopped"
            phase = Phase.FAILED
        elif self.cancel.is_set():
            reason, phase = "cancelled", Phase.CANCELLED
        elif phase == Phase.SUCCEEDED and verdict == Verdict.REFUSED:
            reason, phase = f"its outputs were {verified}", Phase.FAILED
        elif phase == Phase.FAILED:
            reason = self.backend.end_reason(job)
        return Outcome(phase, code, timed_out, verdict, verified, reason, outputs)


class HooksProgress:
    """Progress of one run told to hooks alone (a run outside the ledger: run_image)."""

    def __init__(self, run_id: str, hooks: Hooks) -> None:
        self.run_id, self.hooks = run_id, hooks

    def enter(self, phase: Phase) -> None:
        self.hooks.phase(self.run_id, phase, {})

    def log(self, line: str) -> None:
        self.hooks.log(self.run_id, line)


def write_log(dest: Path, lines: list[str]) -> None:
    """A run's log as fetch_results leaves it: ``logs.txt`` beside model/ and output/."""
    (dest / "logs.txt").write_text("\n".join(lines) + ("\n" if lines else ""))

"""%%remote_run's library: snapshot -> build -> (push) -> submit -> wait -> collect,
recorded in the ledger at every phase, with progress through hooks.

The magics only parse arguments and call :class:`RemoteRunner`; nothing here
knows about widgets or IPython display.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..backends.base import (
    Backend,
    Hooks,
    Job,
    Outcome,
    Phase,
    RunDriver,
    RunSpec,
    Settings,
    StopSignal,
)
from ..backends.registry import get_backend
from ..images.runs import RunImage, build_run_image, build_runtime_image
from ..images.wheels import resolution_budget
from ..runtime.errors import InvalidOption, NbcontainerError, RunCancelled, SweepFailed
from ..runtime.metrics import metric_names_in
from ..runtime.trust import KEY_ENV, TRUST_MODES, RunOutputs, Verdict
from ..snapshots import Snapshot, names_assigned, snapshot
from .ledger import Ledger
from .lifecycle import RunRecord, collecting, read_logs
from .results import RunResult, load_results

log = logging.getLogger(__name__)

_TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.CANCELLED.value)
MAX_NAME = 40
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_name(name: str) -> str:
    """A run name must fit everywhere a run id goes (container and job names, directories)."""
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidOption(
            "--name",
            name,
            f"a run name is 1-{MAX_NAME} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    return name


__all__ = [
    "RemoteRequest",
    "RemoteRunner",
    "RunHandle",
    "combine_sweep",
    "sweep_grid",
    "swept_values",
]


@dataclass
class RemoteRequest:
    """One ``%%remote_run`` (or a library call), already parsed and checked.

    Fields:
        cell: the cell's source (IPython syntax).
        name: the run's name (ids are NAME-1, NAME-2, ...); checked by check_run_name.
        backend: a name from the backend registry (local, batch, sagemaker, ...).
        params: NAME -> value; they override the restored variables of the same name.
        sweep: one child run per row (NAME -> value), under one parent row; a grid of
            several names is the Cartesian product (:func:`sweep_grid`). (NAME, values)
            is accepted for one name.
        max_parallel: children of a sweep running at once.
        variables / all_vars: the names to ship (default: those the cell reads).
        out: the names to bring back (default: those the cell assigns).
        base: the run image's base (default: the containerized kernel itself, else
            NBCONTAINER_BASE_IMAGE or python:X.Y-slim).
        cpus, memory, gpus, timeout: the run's resources and its time limit (seconds).
        wait: False returns a RunHandle at once (``--no-wait``).
        rerun: run that earlier run's image again (no snapshot, no build).
        interrupt: what Ctrl-C while waiting does to a single run: cancel or detach.
        allow_unpinned: take the newest version of a package whose pin has no wheel.
        resolve_timeout: seconds the dependency layer's wheel resolution may take in all.
        overrides: this run's values of backend settings, over the configured ones
            (--instance-type and friends; by setting name, e.g. ``queue``, or by its
            ``[tool.nbcontainer]`` name, ``batch_queue``): Backend.settings.
        notebooks: a notebook run (``nbcontainer run``): these notebooks, in order, are
            the run (a pipeline when several); `cell` is then empty.
        image: a notebook run of an image ``nbcontainer containerize`` made (no snapshot,
            no build).
        requirements: a notebook run's requirements file (else this environment's lock).
        schedule: the schedule or trigger that started the run (its ledger row says so).
    """

    cell: str
    name: str | None = None
    backend: str = "local"
    params: dict[str, Any] = field(default_factory=dict)
    sweep: list[dict[str, Any]] | tuple[str, list[Any]] | None = None
    max_parallel: int = 4
    variables: list[str] | None = None
    all_vars: bool = False
    out: list[str] | None = None
    base: str | None = None
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    timeout: float | None = None
    wait: bool = True
    rerun: str | None = None
    interrupt: str = "cancel"
    allow_unpinned: bool = False
    resolve_timeout: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    notebooks: list[str] | None = None
    image: str | None = None
    requirements: str | None = None
    schedule: str | None = None

    @property
    def kind(self) -> str:
        """What the run runs: "notebook" (notebooks or an image of them) or "cell"."""
        return "notebook" if self.notebooks or self.image else "cell"

    def __post_init__(self) -> None:
        if isinstance(self.sweep, tuple):
            self.sweep = sweep_grid([self.sweep])

    @functools.cached_property
    def metric_names(self) -> list[str]:
        """The metric names the cell logs literally (parsed once per request, not per child)."""
        return metric_names_in(self.cell)

    @property
    def sweep_rows(self) -> list[dict[str, Any]]:
        assert not isinstance(self.sweep, tuple)  # made rows in __post_init__
        return list(self.sweep or [])


def sweep_grid(axes: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Rows of the Cartesian product of several (NAME, values), the first name slowest."""
    rows: list[dict[str, Any]] = [{}]
    for name, values in axes:
        rows = [{**row, name: v} for row in rows for v in values]
    return rows


def swept_values(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """NAME -> its distinct values in order (what a sweep's parent row records)."""
    out: dict[str, list[Any]] = {}
    for row in rows:
        for k, v in row.items():
            if v not in out.setdefault(k, []):
                out[k].append(v)
    return out


class RunHandle:
    """A run that goes on without the cell waiting (``--no-wait``)."""

    def __init__(self, run_id: str, runner: RemoteRunner) -> None:
        self.run_id = run_id
        self.runner = runner

    def status(self) -> str:
        return str(self.runner.ledger.get(self.run_id)["status"])

    def wait(self, timeout: float | None = None) -> str:
        self.runner.join(self.run_id, timeout)
        return self.status()

    def __repr__(self) -> str:
        return (
            f"<remote run {self.run_id}: {self.status()}; %remote_attach {self.run_id} collects it>"
        )


class RemoteRunner:
    """Runs cells remotely and records every run in the ledger.

    Each run's record (:class:`RunRecord`) is the only writer of its phases; the
    driver (:class:`RunDriver`) follows a submitted job and answers with an Outcome,
    which the record ends the run with.
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        trust: str = "signed",
        image_builder: Callable[..., RunImage] = build_run_image,
        runtime_builder: Callable[..., RunImage] = build_runtime_image,
    ) -> None:
        """`image_builder` makes a run image from a snapshot (build_run_image), and
        `runtime_builder` the image a snapshot runs on without one (build_runtime_image),
        for backends that run snapshots; tests pass fakes."""
        if trust not in TRUST_MODES:
            raise InvalidOption("trust", trust, f"expected one of {', '.join(TRUST_MODES)}")
        self.image_builder = image_builder
        self.runtime_builder = runtime_builder
        self.ledger = ledger or Ledger()
        self.trust = trust  # how far run outputs are believed (see runtime.trust)
        self.records: dict[str, RunRecord] = {}  # runs waited on here, for cancel buttons
        # The stop signal of each run waited on (a sweep's parent and children share one).
        self._stops: dict[str, StopSignal] = {}
        self._threads: dict[str, threading.Thread] = {}  # --no-wait runs followed here

    # ---------------------------------------------------------------- entry
    def run(
        self,
        req: RemoteRequest,
        namespace: dict[str, Any],
        hooks: Hooks,
        notebook: str | None = None,
        stop: StopSignal | None = None,
    ) -> RunResult:
        """Snapshot `namespace` for `req.cell`, build (or reuse) the run image, run it on
        the request's backend, record every phase in the ledger, and bring results back.

        `stop`, when this is called off the main thread, stands for Ctrl-C: setting it
        makes the call end as an interrupt would (:class:`StopSignal`), and
        ``cancel(run_id)`` sets it.

        Returns the run's RunResult: of a run waited on, its results already in
        `namespace`; for ``wait=False`` one that is ``pending`` (:meth:`join` waits for
        it); for a sweep the parent's, with its children and their combined values
        (name -> DataFrame with the swept parameters as columns), also put in
        `namespace` (those of the children that succeeded, when some failed: then
        SweepFailed names the failed ones). Raises RemoteExecutionError when the run failed,
        UntrustedResults when its outputs are refused, and NbcontainerError subclasses
        when it could not start; the ledger row ends in a terminal phase with the reason
        in every case. `hooks` hear every phase and log line (the panel, the text twin).
        """
        backend = get_backend(req.backend)
        out_names = req.out if req.out is not None else names_assigned(req.cell)
        name = (
            check_run_name(req.name)
            if req.name
            else (self.ledger.get(req.rerun)["name"] if req.rerun else "run")
        )
        params = dict(req.params)
        if req.sweep:
            params.update(swept_values(req.sweep_rows))
        if notebook is None and req.notebooks:
            notebook = str(Path(req.notebooks[0]).resolve())
        run_id = self.ledger.create(
            name,
            backend.name,
            params=params,
            notebook=notebook,
            kind=req.kind,
            schedule=req.schedule,
        )
        record = RunRecord(self.ledger, run_id, hooks)
        stop = stop or StopSignal()
        self._stops[run_id] = stop
        try:
            return self._run(req, namespace, record, name, backend, out_names, stop)
        except KeyboardInterrupt:
            if stop.force_cancel:  # Cancel, not Ctrl-C: the run ended as asked, say so briefly
                raise RunCancelled(run_id) from None
            raise
        finally:
            self._stops.pop(run_id, None)

    def _run(
        self,
        req: RemoteRequest,
        namespace: dict[str, Any],
        record: RunRecord,
        name: str,
        backend: Backend,
        out_names: list[str],
        stop: StopSignal,
    ) -> RunResult:
        run_id = record.run_id
        self.records[run_id] = record
        snap: Snapshot | None = None
        try:
            # Resolved once, frozen, and carried with the run: what another run (or
            # thread) configures meanwhile changes nothing here. Bad or missing: recorded.
            settings = backend.settings(req.overrides)
            backend.check(settings)
            backend.check_resources(req.cpus, req.memory, req.gpus, settings)
            stop.check()
            image, digest, snap = self._image_for(
                record, req, namespace, warm=self._runs_warm(backend, req, settings), stop=stop
            )
            stop.check()
            # A snapshot run without a run image records none: --rerun makes one if needed.
            self.ledger.update(run_id, image="" if snap else image, snapshot_digest=digest)
            if backend.needs_push:
                record.enter(Phase.PUSH)
                image = backend.push(image, settings, record.hooks, run_id)
                self.ledger.update(run_id, image=image)
        except BaseException as exc:
            # Nothing ran, but the record stays, saying why (an unusable base, Ctrl-C, ...).
            record.fail_from(exc)
            self.records.pop(run_id, None)
            self._keep(run_id, snap)
            raise
        try:
            snapshot_dir = str(snap.directory) if snap else None
            if req.sweep:
                return self._sweep(
                    record,
                    name,
                    backend,
                    image,
                    req,
                    settings,
                    out_names,
                    stop,
                    namespace,
                    snapshot_dir,
                )
            spec = self._spec(run_id, image, req, dict(req.params), settings, snapshot_dir)
            driver = self._driver(record, backend, req.interrupt, stop)
            job = None
            try:
                job = self._submit(record, backend, spec)
                if not req.wait:
                    return self._follow(record, driver, job, spec)
                result = self._wait(record, driver, job, spec)
            except KeyboardInterrupt:
                # Wherever Ctrl-C lands once the job exists, the run is cancelled (or detached).
                if job is not None and not driver.detaches():
                    driver.stop_job(job)
                    record.cancel(driver.interrupt_reason())
                raise
            result.raise_for_status()
            namespace.update(load_results(result.outputs, out_names))
            return result
        finally:
            if run_id not in self._threads:  # a --no-wait run's record is its thread's
                self.records.pop(run_id, None)
            self._keep(run_id, snap)

    def _follow(self, record: RunRecord, driver: RunDriver, job: Job, spec: RunSpec) -> RunResult:
        """A --no-wait run: followed to its end on a thread of its own; its result now."""
        self.records[record.run_id] = record
        thread = threading.Thread(
            target=self._wait_quietly, args=(record, driver, job, spec), daemon=True
        )
        self._threads[record.run_id] = thread
        thread.start()
        return self._result(self.ledger.get(record.run_id), image=spec.image)

    def _wait_quietly(self, record: RunRecord, driver: RunDriver, job: Job, spec: RunSpec) -> None:
        try:
            self._wait(record, driver, job, spec)
        except Exception as exc:
            # No cell waits to be told: the run's row holds why (%remote_attach raises it).
            log.info("run %s ended: %s: %s", record.run_id, type(exc).__name__, exc)
        finally:
            self.records.pop(record.run_id, None)
            self._threads.pop(record.run_id, None)

    def join(self, run_id: str, timeout: float | None = None) -> None:
        """Wait for a --no-wait run followed here to end (at most `timeout` seconds)."""
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)

    def _driver(
        self,
        record: RunRecord,
        backend: Backend,
        interrupt: str,
        stop: StopSignal | None = None,
    ) -> RunDriver:
        trust, run_id = self.trust, record.run_id

        def verify(dest: Path) -> tuple[Verdict, str, RunOutputs]:
            # The key as the ledger holds it when the outputs arrive (a sweep submitted in
            # one step gives its children the parent's key after their drivers exist).
            outputs = RunOutputs(dest, self.ledger.get(run_id).get("run_key"), trust)
            return (*outputs.check(), outputs)

        return RunDriver(
            backend,
            record,
            on_interrupt=interrupt,
            verify=verify,
            stop=stop,
            cancel=record.cancel_requested,
            collecting=collecting,
        )

    def attach(
        self,
        run_id: str,
        namespace: dict[str, Any],
        hooks: Hooks,
        out: list[str] | None = None,
        interrupt: str = "cancel",
    ) -> RunResult:
        """Pick a run up where it is (after a kernel restart) and collect it."""
        row = self.ledger.get(run_id)
        if row["status"] not in _TERMINAL:
            record = RunRecord(self.ledger, run_id, hooks)
            if not row["job"]:
                # Its kernel died before the run reached a backend: nothing runs, record why.
                reason = (
                    f"abandoned in {row['status']}: its kernel went away before the run "
                    "was submitted"
                )
                record.fail(reason)
                raise NbcontainerError(
                    f"Run {run_id} never reached its backend ({reason}); there is "
                    "nothing to attach to. Run the cell again."
                )
            backend = get_backend(row["backend"])
            driver = self._driver(record, backend, interrupt)
            self.records[run_id] = record
            job = Job(row["backend"], run_id, row["job"])
            attach = getattr(backend, "attach", None)
            if attach is not None:
                attach(job)
            spec = RunSpec(run_id, row["image"] or "", params=row["params"])
            try:
                result = self._wait(record, driver, job, spec)
            finally:
                self.records.pop(run_id, None)
        else:
            result = self.result_of(run_id)
        result.raise_for_status()
        names = out if out is not None else list(result.index.get("variables", {}))
        namespace.update(load_results(result.outputs, names))
        return result

    def cancel(self, run_id: str) -> None:
        """Cancel a run (a sweep with all its children): the one waited on here stops at its
        next poll and ends CANCELLED; one waited on elsewhere is stopped on its backend."""
        row = self.ledger.get(run_id)
        if run_id in self._stops:
            self._stops[run_id].cancel()
            return
        if run_id in self.records:
            self.records[run_id].cancel_requested.set()
            return
        if row["job"] and row["status"] not in _TERMINAL:
            backend = get_backend(row["backend"])
            job = Job(row["backend"], run_id, row["job"])
            try:
                backend.cancel(job)
                backend.cleanup(job)
            finally:
                RunRecord(self.ledger, run_id).cancel("cancelled")

    def cancel_tree(self, run_id: str) -> bool:
        """Cancel a run and, for a sweep, each child still going (from any process: the
        command line, the server). False when the run had already ended."""
        if self.ledger.get(run_id)["status"] in _TERMINAL:
            return False
        for child in self.ledger.find(parent=run_id):
            if child["status"] not in _TERMINAL:
                self.cancel(child["id"])
        self.cancel(run_id)
        return True

    def result_of(self, run_id: str, trust: str | None = None) -> RunResult:
        """A recorded run's outputs, read under `trust` (default: the runner's)."""
        return self._result(self.ledger.get(run_id), trust=trust)

    def _result(
        self,
        row: Mapping[str, Any],
        outcome: Outcome | None = None,
        image: str | None = None,
        trust: str | None = None,
    ) -> RunResult:
        """The one place a RunResult is made: from the run's row, and the Outcome of a run
        that just ended (which the row may not hold yet: an end kept to be recorded)."""
        dest = Path(row["result_dir"])
        verdict = row.get("verdict")
        status = outcome.phase.value if outcome else row["status"]
        return RunResult(
            image=image if image is not None else (row["image"] or ""),
            exit_code=outcome.exit_code if outcome else row["exit_code"],
            output_dir=dest,
            logs=read_logs(dest),
            cancelled=status == Phase.CANCELLED.value,
            timed_out=outcome.timed_out if outcome else bool(row.get("timed_out")),
            key=row.get("run_key"),
            trust=trust or self.trust,
            reason=outcome.reason if outcome else row.get("failure"),
            run_id=row["id"],
            backend=row["backend"],
            status=status,
            verdict=outcome.verdict if outcome else (Verdict(verdict) if verdict else None),
            checked_outputs=outcome.outputs if outcome else None,
        )

    # -------------------------------------------------------------- phases
    def _image_for(
        self,
        record: RunRecord,
        req: RemoteRequest,
        namespace: Mapping[str, Any],
        warm: bool,
        stop: StopSignal,
    ) -> tuple[str, str, Snapshot | None]:
        """(image, snapshot digest, the snapshot when the image is only its runtime)."""
        if req.image:  # made by `nbcontainer containerize`: run as it is
            return req.image, _image_digest(req.image), None
        if req.notebooks and not req.rerun:
            record.enter(Phase.SNAPSHOT)
            from .notebooks import notebook_snapshot

            snap = notebook_snapshot(req.notebooks, req.requirements)
            return self._build(record, req, snap, warm, stop)
        if not req.rerun:
            record.enter(Phase.SNAPSHOT)
            snap = snapshot(namespace, req.cell, variables=req.variables, all_vars=req.all_vars)
            return self._build(record, req, snap, warm, stop)
        prior = self.ledger.get(req.rerun)
        if prior.get("image"):
            return prior["image"], prior["snapshot_digest"], None
        kept = self.kept_snapshot(req.rerun)
        if kept is None:
            raise NbcontainerError(
                f"Run {req.rerun} has no image or snapshot to run again (it failed before "
                "its build finished); run the cell without --rerun."
            )
        snap = Snapshot.load(kept)
        if not snap.verify(prior["snapshot_digest"]):
            raise NbcontainerError(
                f"The snapshot kept for run {req.rerun} ({kept}) is not the one it ran: its "
                "files changed since. Run the cell without --rerun."
            )
        return self._build(record, req, snap, warm, stop)

    def _build(
        self, record: RunRecord, req: RemoteRequest, snap: Snapshot, warm: bool, stop: StopSignal
    ) -> tuple[str, str, Snapshot | None]:
        """The BUILD phase: the snapshot's runtime image (warm: the snapshot is copied into
        a container of it), else its run image."""
        try:
            skipped = [f"{v.name} ({v.skipped})" for v in snap.skipped]
            if skipped:
                record.log(f"[nbcontainer] not shipped: {'; '.join(skipped)}")
            stop.check()
            record.enter(Phase.BUILD)
            with resolution_budget(req.resolve_timeout):
                image = (self.runtime_builder if warm else self.image_builder)(
                    snap,
                    base=req.base,
                    allow_unpinned=req.allow_unpinned,
                    on_line=_warnings_to(record, stop),
                )
            if image.skipped_requirements:
                record.log(
                    "[nbcontainer] not in the image (no wheel for its platform): "
                    + ", ".join(image.skipped_requirements)
                )
        except BaseException:
            snap.cleanup()
            raise
        if warm:
            return image.tag, snap.digest, snap
        snap.cleanup()
        return image.tag, snap.digest, None

    @staticmethod
    def _runs_warm(backend: Backend, req: RemoteRequest, settings: Settings) -> bool:
        """Whether this run goes without a run image: its backend runs snapshots (the local
        backend's warm pool), the cell waits for it, and the pool is not turned off."""
        return (
            backend.runs_snapshots and req.wait and int(settings.get("run_pool_size", 1) or 0) > 0
        )

    def kept_snapshot(self, run_id: str) -> Path | None:
        """Where a run without a run image keeps its snapshot (a sweep's children: their
        parent's), for --rerun; None when it has none."""
        row = self.ledger.get(run_id)
        for owner in (run_id, row.get("parent")):
            if owner:
                kept = self.ledger.run_dir(owner) / "snapshot"
                if kept.is_dir():
                    return kept
        return None

    def _keep(self, run_id: str, snap: Snapshot | None) -> None:
        """Keep the snapshot of a run without a run image in the run's directory, so that
        --rerun can run it again (or make its image): moved there, or, for one read back
        from another run's directory, linked there (the files are shared, not copied)."""
        if snap is None:
            return
        kept = self.ledger.run_dir(run_id) / "snapshot"
        if snap.directory == kept or kept.exists():
            snap.cleanup()
            return
        kept.parent.mkdir(parents=True, exist_ok=True)
        if snap.owned:
            shutil.move(str(snap.directory), kept)
        else:
            shutil.copytree(snap.directory, kept, copy_function=_link_or_copy)
        kept.chmod(0o700)

    def _spec(
        self,
        run_id: str,
        image: str,
        req: RemoteRequest,
        params: dict[str, Any],
        settings: Settings,
        snapshot: str | None = None,
    ) -> RunSpec:
        # The signing key reaches the run only here, at run time, in its environment.
        row = self.ledger.get(run_id)
        return RunSpec(
            run_id,
            image,
            name=row["name"],
            notebook=row.get("notebook"),
            params=params,
            cpus=req.cpus,
            memory=req.memory,
            gpus=req.gpus,
            timeout=req.timeout,
            detached=not req.wait,
            env={KEY_ENV: row["run_key"]},
            settings=settings,
            metric_names=list(req.metric_names),
            workdir=str(self.ledger.run_dir(run_id)),
            snapshot=snapshot,
        )

    def _submit(self, record: RunRecord, backend: Backend, spec: RunSpec) -> Job:
        record.enter(Phase.SUBMITTED)
        try:
            job = backend.submit(spec)
        except BaseException as exc:
            # Nothing runs; the record says why and ends (a half-submitted job is the
            # backend's to undo).
            record.fail_from(exc, "submitting")
            raise
        self.ledger.update(spec.run_id, job=job.handle)
        return job

    def _wait(self, record: RunRecord, driver: RunDriver, job: Job, spec: RunSpec) -> RunResult:
        """Wait for the run, then record its end (results, metric points, the terminal
        phase) in one transaction before the listeners hear of it: no reader sees a run
        that ended without its results. After a KeyboardInterrupt the run ends CANCELLED,
        unless it is to detach."""
        try:
            outcome = driver.wait(job, spec, self.ledger.run_dir(spec.run_id))
        except KeyboardInterrupt:
            if not driver.detaches():
                record.cancel(driver.interrupt_reason())
            raise
        result = self._result(self.ledger.get(spec.run_id), outcome, image=spec.image)
        record.end(outcome, result, _accounting(driver.backend, job))
        if outcome.error is not None:
            raise outcome.error
        return result

    # --------------------------------------------------------------- sweeps
    def _sweep(
        self,
        parent: RunRecord,
        name: str,
        backend: Backend,
        image: str,
        req: RemoteRequest,
        settings: Settings,
        out_names: list[str],
        stop: StopSignal,
        namespace: dict[str, Any],
        snapshot_dir: str | None = None,
    ) -> RunResult:
        rows = req.sweep_rows
        children = self._sweep_children(parent, name, backend.name, req, image, snapshot_dir)
        if snapshot_dir is not None:
            # As many warm containers as children run at once, made while others run (the
            # pool shrinks back as the children end).
            size = int(settings.get("run_pool_size", 1) or 0)
            settings = MappingProxyType(
                {**settings, "run_pool_size": max(size, min(req.max_parallel, len(rows)))}
            )
        drivers = {c.run_id: self._driver(c, backend, "cancel", stop) for c, _ in children}
        jobs: dict[str, tuple[Job, RunSpec]] = {}
        if backend.one_job_per_sweep:
            jobs = self._submit_sweep(parent, backend, image, req, settings, children)
        parent.enter(Phase.RUNNING)

        def one(child: RunRecord, row: dict[str, Any]) -> RunResult:
            driver = drivers[child.run_id]
            self.records[child.run_id] = child
            self._stops[child.run_id] = stop
            try:
                if child.run_id in jobs:  # submitted with the whole sweep: wait on it
                    job, spec = jobs[child.run_id]
                    return self._wait(child, driver, job, spec)
                if parent.cancel_requested.is_set() or stop.is_set():
                    child.cancel("cancelled before it started")
                    raise KeyboardInterrupt
                params = {**req.params, **row}
                spec = self._spec(child.run_id, image, req, params, settings, snapshot_dir)
                job = self._submit(child, backend, spec)
                return self._wait(child, driver, job, spec)
            finally:
                self.records.pop(child.run_id, None)

        # Child by child, `max_parallel` run at once; a sweep the platform took in one
        # step runs there at its pace, and these threads only collect (finished children
        # at once, so a few threads serve thousands).
        parallel = min(len(children), 16) if jobs else max(1, req.max_parallel)
        pool = concurrent.futures.ThreadPoolExecutor(
            parallel, thread_name_prefix=f"sweep-{parent.run_id}"
        )
        futures: dict[concurrent.futures.Future[RunResult], RunRecord] = {}
        try:
            # A Ctrl-C inside submit() could start a worker the pool never joins, or a
            # child this loop never records: SIGINT waits until every child is queued.
            with _sigint_deferred():
                for c, row in children:
                    futures[pool.submit(one, c, row)] = c
            results, errors = _collect(futures, stop)
        except KeyboardInterrupt:
            # Ctrl-C anywhere in a sweep cancels it: queued children never start, running
            # ones are cancelled, and every row ends in a terminal phase.
            self._cancel_sweep(parent, children, futures, pool, stop, jobs, backend)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for c, _ in children:
                self._stops.pop(c.run_id, None)
        return self._end_sweep(parent, children, results, errors, out_names, namespace)

    def _sweep_children(
        self,
        parent: RunRecord,
        name: str,
        backend: str,
        req: RemoteRequest,
        image: str,
        snapshot_dir: str | None,
    ) -> list[tuple[RunRecord, dict[str, Any]]]:
        """A record per row of the sweep, under its parent (the same snapshot)."""
        parent_row = self.ledger.get(parent.run_id)
        digest, notebook = parent_row["snapshot_digest"], parent_row.get("notebook")
        children = []
        for row in req.sweep_rows:
            child = self.ledger.create(
                name,
                backend,
                params={**req.params, **row},
                parent=parent.run_id,
                kind=req.kind,
                notebook=notebook,
                schedule=req.schedule,
            )
            self.ledger.update(child, image="" if snapshot_dir else image, snapshot_digest=digest)
            children.append((RunRecord(self.ledger, child, parent.hooks), row))
        return children

    def _end_sweep(
        self,
        parent: RunRecord,
        children: list[tuple[RunRecord, dict[str, Any]]],
        results: dict[str, RunResult],
        errors: dict[str, BaseException],
        out_names: list[str],
        namespace: dict[str, Any],
    ) -> RunResult:
        """The parent's end once every child ended: SUCCEEDED when all did, else FAILED
        naming the failed ones (SweepFailed, after the others' values came back)."""
        failures: dict[str, tuple[dict[str, Any], str]] = {}
        first_error: BaseException | None = None
        for c, row in children:
            try:
                if c.run_id in errors:
                    raise errors[c.run_id]
                results[c.run_id].raise_for_status()
            except Exception as exc:  # each failed child is named; the others come back
                first_error = first_error or exc
                why = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                failures[c.run_id] = (row, str(why).split("\n", 1)[0])
        if failures:
            parent.fail(f"{len(failures)} of {len(children)} children failed")
        else:
            parent.succeed()
        combined = combine_sweep(
            [(row, results[c.run_id]) for c, row in children if c.run_id not in failures],
            out_names,
        )
        namespace.update(combined)
        if failures:
            raise SweepFailed(
                parent.run_id, failures, len(children), sorted(combined)
            ) from first_error
        result = self.result_of(parent.run_id)
        result.children = {c.run_id: results[c.run_id] for c, _ in children}
        result.values = combined
        return result

    def _submit_sweep(
        self,
        parent: RunRecord,
        backend: Backend,
        image: str,
        req: RemoteRequest,
        settings: Settings,
        children: list[tuple[RunRecord, dict[str, Any]]],
    ) -> dict[str, tuple[Job, RunSpec]]:
        """The whole sweep in one step (an array job): the children share its environment,
        so they share the parent's signing key."""
        key = self.ledger.get(parent.run_id)["run_key"]
        specs = []
        for child, row in children:
            self.ledger.update(child.run_id, run_key=key)
            specs.append(self._spec(child.run_id, image, req, {**req.params, **row}, settings))
            child.enter(Phase.SUBMITTED)
        try:
            submitted = backend.submit_sweep(parent.run_id, specs)
        except BaseException as exc:
            for child, _ in children:
                child.fail_from(exc, "submitting")
            parent.fail_from(exc, "submitting")
            raise
        jobs = {}
        for (child, _), spec, job in zip(children, specs, submitted, strict=True):
            self.ledger.update(child.run_id, job=job.handle)
            jobs[child.run_id] = (job, spec)
        return jobs

    def _cancel_sweep(
        self,
        parent: RunRecord,
        children: list[tuple[RunRecord, dict[str, Any]]],
        futures: dict[concurrent.futures.Future[RunResult], RunRecord],
        pool: concurrent.futures.ThreadPoolExecutor,
        stop: StopSignal,
        jobs: dict[str, tuple[Job, RunSpec]],
        backend: Backend,
    ) -> None:
        parent.cancel_requested.set()  # a child starting now cancels itself at once
        waited = {c.run_id for c in futures.values()}
        for fut, child in futures.items():
            if fut.cancel():  # still queued: it never starts (or is never waited on)
                waited.discard(child.run_id)
        for child, _ in children:
            if child.run_id in waited:
                child.cancel_requested.set()  # running: stops within a poll, ends CANCELLED
            elif child.run_id in jobs:  # on the platform already: stop it there
                try:
                    backend.cancel(jobs[child.run_id][0])
                finally:
                    child.cancel("cancelled")
            else:
                child.cancel("cancelled before it started")
        concurrent.futures.wait(futures)
        pool.shutdown(wait=True, cancel_futures=True)
        parent.cancel("cancelled" if stop.force_cancel else "cancelled by a kernel interrupt")


def _collect(
    futures: dict[concurrent.futures.Future[RunResult], RunRecord], stop: StopSignal
) -> tuple[dict[str, RunResult], dict[str, BaseException]]:
    """Each child's result or error as it finishes (a stop asked for ends the wait)."""
    results: dict[str, RunResult] = {}
    errors: dict[str, BaseException] = {}
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(
            pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for fut in done:
            try:
                results[futures[fut].run_id] = fut.result()
            except Exception as exc:  # recorded in the child's row; the others go on
                errors[futures[fut].run_id] = exc
        stop.check()
    return results, errors


def combine_sweep(
    runs: list[tuple[dict[str, Any], RunResult]], out_names: list[str]
) -> dict[str, Any]:
    """One value per out name: DataFrames concatenated with the swept parameters as
    columns; other values as a DataFrame of (parameters..., value) rows."""
    import pandas as pd

    combined: dict[str, Any] = {}
    for name in out_names:
        frames = []
        for row, result in runs:
            got = load_results(result.outputs, [name])
            if name not in got:
                continue
            v = got[name]
            if isinstance(v, pd.Series):
                v = v.to_frame()
            if isinstance(v, pd.DataFrame):
                frames.append(v.assign(**row))
            else:
                frames.append(pd.DataFrame({**{k: [x] for k, x in row.items()}, name: [v]}))
        if frames:
            combined[name] = pd.concat(
                frames, ignore_index=not isinstance(frames[0].index, pd.DatetimeIndex)
            )
    return combined


def _image_digest(image: str) -> str:
    """The snapshot digest a run image's label holds ("" for another image); a missing
    image is an ImageNotFound that says how to make one."""
    from ..docker import labels
    from ..docker.engine import get_engine

    found = get_engine().get_image(image)
    return str((found.labels or {}).get(labels.SNAPSHOT_DIGEST, ""))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def _accounting(backend: Backend, job: Job) -> dict[str, Any]:
    """What the platform says the ended job cost: a note on the record, never its end."""
    try:
        return backend.accounting(job)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C, a kernel interrupt) until the block ends: it is delivered then.

    Only the main thread of a POSIX process can do this; elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _warnings_to(record: RunRecord, stop: StopSignal | None = None) -> Callable[[str], None]:
    """Build output goes nowhere, except its warnings: those reach the run's log. A stop
    asked for during the build ends it at its next line."""

    def on_line(line: str) -> None:
        if stop is not None:
            stop.check()
        if line.startswith("warning:"):
            record.log(f"[nbcontainer] {line}")

    return on_line

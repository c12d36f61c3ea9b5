"""%%remote_run's library: snapshot -> build -> (push) -> submit -> wait -> collect,
recorded in the ledger at every phase, with progress through hooks.

The magics only parse arguments and call :class:`RemoteRunner`; nothing here
knows about widgets or IPython display.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, Hooks, Job, Phase, RunDriver, RunSpec, StopSignal
from ..backends.registry import get_backend
from ..images.runs import RunImage, build_run_image, build_runtime_image
from ..images.wheels import resolution_budget
from ..runtime.errors import InvalidOption, LedgerError, NbcontainerError, RunCancelled, SweepFailed
from ..runtime.metrics import metric_names_in
from ..runtime.trust import KEY_ENV, TRUST_MODES, RunOutputs
from ..snapshots import Snapshot, names_assigned, snapshot
from .ledger import Ledger
from .results import RunResult, load_results

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
        settings: the RemoteRun settings handed to the backend (registry, s3_prefix,
            batch_queue, ...): each backend takes what it needs (Backend.configure).
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
    settings: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class RunHandle:
    """A run that goes on without the cell waiting (``--no-wait``)."""

    run_id: str
    runner: RemoteRunner
    thread: threading.Thread | None = None

    def status(self) -> str:
        return self.runner.ledger.get(self.run_id)["status"]

    def wait(self, timeout: float | None = None) -> str:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.status()

    def __repr__(self) -> str:
        return (
            f"<remote run {self.run_id}: {self.status()}; %remote_attach {self.run_id} collects it>"
        )


class RemoteRunner:
    """Runs cells remotely and records every run in the ledger."""

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
        self.drivers: dict[str, RunDriver] = {}  # runs being waited on, for cancel buttons
        # The stop signal of each run waited on (a sweep's parent and children share one).
        self._stops: dict[str, StopSignal] = {}
        # Runs _finish waits on: how each records its end with its terminal phase.
        self._ending: dict[str, Callable[[Phase, float], None]] = {}
        self._ending_lock = threading.Lock()

    # ---------------------------------------------------------------- entry
    def run(
        self,
        req: RemoteRequest,
        namespace: dict[str, Any],
        hooks: Hooks,
        notebook: str | None = None,
        stop: StopSignal | None = None,
    ) -> RunResult | RunHandle | dict[str, Any]:
        """Snapshot `namespace` for `req.cell`, build (or reuse) the run image, run it on
        the request's backend, record every phase in the ledger, and bring results back.

        `stop`, when this is called off the main thread, stands for Ctrl-C: setting it
        makes the call end as an interrupt would (:class:`StopSignal`), and
        ``cancel(run_id)`` sets it.

        Returns the RunResult of a run waited on (its results are already in
        `namespace`), a RunHandle for ``wait=False``, or for a sweep the combined
        results (name -> DataFrame with the swept parameters as columns), also put in
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
        run_id = self.ledger.create(name, backend.name, params=params, notebook=notebook)
        stop = stop or StopSignal()
        self._stops[run_id] = stop
        try:
            return self._run(req, namespace, hooks, run_id, name, backend, out_names, stop)
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
        hooks: Hooks,
        run_id: str,
        name: str,
        backend: Backend,
        out_names: list[str],
        stop: StopSignal,
    ) -> RunResult | RunHandle | dict[str, Any]:
        driver = self._driver(run_id, backend, hooks, req.interrupt, stop)
        self.drivers[run_id] = driver
        snap: Snapshot | None = None
        try:
            backend.configure(req.settings)  # a missing setting fails here, recorded
            backend.check_resources(req.cpus, req.memory, req.gpus, req.settings)
            stop.check()
            image, digest, snap = self._image_for(
                run_id, driver, req, namespace, warm=self._runs_warm(backend, req)
            )
            stop.check()
            # A snapshot run without a run image records none: --rerun makes one if needed.
            self.ledger.update(run_id, image="" if snap else image, snapshot_digest=digest)
            if backend.needs_push:
                driver.enter(run_id, Phase.PUSH)
                image = backend.push(image, driver.hooks, run_id)
                self.ledger.update(run_id, image=image)
        except BaseException as exc:
            # Nothing ran, but the record stays, saying why (an unusable base, Ctrl-C, ...).
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.ledger.update(
                run_id,
                failure="interrupted before it started"
                if interrupted
                else f"{type(exc).__name__}: {exc}",
            )
            driver.enter(run_id, Phase.CANCELLED if interrupted else Phase.FAILED)
            self.drivers.pop(run_id, None)
            self._keep(run_id, snap)
            raise
        try:
            snapshot_dir = str(snap.directory) if snap else None
            if req.sweep:
                return self._sweep(
                    run_id,
                    name,
                    backend,
                    image,
                    req,
                    hooks,
                    out_names,
                    stop,
                    namespace,
                    snapshot_dir,
                )
            spec = self._spec(run_id, image, req, params=dict(req.params), snapshot=snapshot_dir)
            job = None
            try:
                job = self._submit(driver, backend, spec)
                if not req.wait:
                    handle = RunHandle(run_id, self)
                    handle.thread = threading.Thread(
                        target=self._finish, args=(driver, job, spec, []), daemon=True
                    )
                    handle.thread.start()
                    return handle
                result = self._finish(driver, job, spec, out_names)
            except KeyboardInterrupt:
                # Wherever Ctrl-C lands once the job exists, the run is cancelled (or detached).
                if job is not None and not driver.detaches():
                    driver.cancel_and_clean(job)
                raise
            result.raise_for_status()
            namespace.update(load_results(result.outputs, out_names))
            return result
        finally:
            self._keep(run_id, snap)

    def _driver(
        self,
        run_id: str,
        backend: Backend,
        hooks: Hooks,
        interrupt: str,
        stop: StopSignal | None = None,
    ) -> RunDriver:
        trust = self.trust

        def verify(dest: Path) -> str:
            # The key as the ledger holds it when the outputs arrive (a sweep submitted in
            # one step gives its children the parent's key after their drivers exist).
            return RunOutputs(dest, self.ledger.get(run_id).get("run_key"), trust).verdict()

        return RunDriver(
            backend,
            hooks,
            self._record,
            interrupt,
            verify=verify,
            stop=stop,
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
            if not row["job"]:
                # Its kernel died before the run reached a backend: nothing runs, record why.
                reason = (
                    f"abandoned in {row['status']}: its kernel went away before the run "
                    "was submitted"
                )
                self.ledger.update(run_id, failure=reason)
                self.ledger.add_phase(run_id, Phase.FAILED.value)
                raise NbcontainerError(
                    f"Run {run_id} never reached its backend ({reason}); there is "
                    "nothing to attach to. Run the cell again."
                )
            backend = get_backend(row["backend"])
            driver = self._driver(run_id, backend, hooks, interrupt)
            self.drivers[run_id] = driver
            job = Job(row["backend"], run_id, row["job"])
            attach = getattr(backend, "attach", None)
            if attach is not None:
                attach(job)
            spec = RunSpec(run_id, row["image"] or "", params=row["params"])
            result = self._finish(driver, job, spec, [])
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
        if run_id in self.drivers:
            self.drivers[run_id].cancel_event.set()
            return
        if row["job"] and row["status"] not in _TERMINAL:
            backend = get_backend(row["backend"])
            job = Job(row["backend"], run_id, row["job"])
            try:
                backend.cancel(job)
                backend.cleanup(job)
            finally:
                self.ledger.update(run_id, failure="cancelled")
                self.ledger.add_phase(run_id, Phase.CANCELLED.value)

    def result_of(self, run_id: str, trust: str | None = None) -> RunResult:
        """A recorded run's outputs, read under `trust` (default: the runner's)."""
        row = self.ledger.get(run_id)
        return RunResult(
            image=row["image"] or "",
            exit_code=row["exit_code"],
            output_dir=Path(row["result_dir"]),
            logs=_read_logs(Path(row["result_dir"])),
            cancelled=row["status"] == Phase.CANCELLED.value,
            key=row.get("run_key"),
            trust=trust or self.trust,
            reason=row.get("failure"),
            run_id=run_id,
            backend=row["backend"],
            timed_out=(row.get("failure") or "").startswith("the run timed out"),
        )

    # -------------------------------------------------------------- phases
    def _image_for(
        self,
        run_id: str,
        driver: RunDriver,
        req: RemoteRequest,
        namespace: Mapping[str, Any],
        warm: bool,
    ) -> tuple[str, str, Snapshot | None]:
        """(image, snapshot digest, the snapshot when the image is only its runtime)."""
        if not req.rerun:
            driver.enter(run_id, Phase.SNAPSHOT)
            snap = snapshot(namespace, req.cell, variables=req.variables, all_vars=req.all_vars)
            return self._build(run_id, driver, req, snap, warm)
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
        return self._build(run_id, driver, req, snap, warm)

    def _build(
        self, run_id: str, driver: RunDriver, req: RemoteRequest, snap: Snapshot, warm: bool
    ) -> tuple[str, str, Snapshot | None]:
        """The BUILD phase: the snapshot's runtime image (warm: the snapshot is copied into
        a container of it), else its run image."""
        try:
            skipped = [f"{v.name} ({v.skipped})" for v in snap.skipped]
            if skipped:
                driver.hooks.log(run_id, f"[nbcontainer] not shipped: {'; '.join(skipped)}")
            if driver.stop is not None:
                driver.stop.check()
            driver.enter(run_id, Phase.BUILD)
            with resolution_budget(req.resolve_timeout):
                image = (self.runtime_builder if warm else self.image_builder)(
                    snap,
                    base=req.base,
                    allow_unpinned=req.allow_unpinned,
                    on_line=_warnings_to(driver.hooks, run_id, driver.stop),
                )
            if image.skipped_requirements:
                driver.hooks.log(
                    run_id,
                    "[nbcontainer] not in the image (no wheel for its platform): "
                    + ", ".join(image.skipped_requirements),
                )
        except BaseException:
            snap.cleanup()
            raise
        if warm:
            return image.tag, snap.digest, snap
        snap.cleanup()
        return image.tag, snap.digest, None

    def _record(self, run_id: str, phase: Phase, at: float) -> None:
        record_end = None
        if phase.terminal:
            with self._ending_lock:
                record_end = self._ending.pop(run_id, None)
        if record_end is not None:
            record_end(phase, at)  # with the run's results, in one transaction
        else:
            self.ledger.add_phase(run_id, phase.value, at)

    @staticmethod
    def _runs_warm(backend: Backend, req: RemoteRequest) -> bool:
        """Whether this run goes without a run image: its backend runs snapshots (the local
        backend's warm pool), the cell waits for it, and the pool is not turned off."""
        return (
            backend.runs_snapshots
            and req.wait
            and int(req.settings.get("run_pool_size", 1) or 0) > 0
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
            settings=dict(req.settings),
            metric_names=list(req.metric_names),
            workdir=str(self.ledger.run_dir(run_id)),
            snapshot=snapshot,
        )

    def _submit(self, driver: RunDriver, backend: Backend, spec: RunSpec) -> Job:
        driver.enter(spec.run_id, Phase.SUBMITTED)
        try:
            job = backend.submit(spec)
        except BaseException as exc:
            # Nothing runs; the record says why and ends (a half-submitted job is the
            # backend's to undo).
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.ledger.update(
                spec.run_id,
                failure="interrupted before it started"
                if interrupted
                else f"{type(exc).__name__} while submitting: {exc}",
            )
            driver.done = True
            driver.enter(spec.run_id, Phase.CANCELLED if interrupted else Phase.FAILED)
            raise
        self.ledger.update(spec.run_id, job=job.handle)
        return job

    def _finish(
        self, driver: RunDriver, job: Job, spec: RunSpec, out_names: list[str]
    ) -> RunResult:
        """Wait for the run; its end (results, metric points, the terminal phase) goes
        into the ledger in one transaction as the driver enters that phase, before the
        listeners hear of it: no reader sees a run that ended without its results."""
        dest = self.ledger.run_dir(spec.run_id)
        row = self.ledger.get(spec.run_id)
        ended: list[RunResult] = []

        def result_of(phase: Phase) -> RunResult:
            return RunResult(
                image=spec.image,
                exit_code=driver.exit_code,
                output_dir=dest,
                logs=_read_logs(dest),
                cancelled=phase == Phase.CANCELLED,
                timed_out=driver.timed_out,
                key=row.get("run_key"),
                trust=self.trust,
                reason=driver.reason,
                run_id=spec.run_id,
                backend=row["backend"],
            )

        def record_end(phase: Phase, at: float) -> None:
            result = result_of(phase)
            ended.append(result)
            self._record_end(driver, job, spec, result, (phase.value, at))

        with self._ending_lock:
            self._ending[spec.run_id] = record_end
        try:
            phase, _code = driver.wait(job, spec, dest)
        finally:
            with self._ending_lock:
                self._ending.pop(spec.run_id, None)
            self.drivers.pop(spec.run_id, None)
        return ended[-1] if ended else result_of(phase)

    def _record_end(
        self,
        driver: RunDriver,
        job: Job,
        spec: RunSpec,
        result: RunResult,
        end: tuple[str, float],
    ) -> None:
        trusted = driver.verdict is None or not driver.verdict.startswith("refused")
        try:
            accounting = driver.backend.accounting(job)
        except Exception as exc:  # what it cost is a note on the record, never its end
            accounting = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            fields = {
                "platform": accounting,
                "exit_code": driver.exit_code,
                "verified": driver.verdict,
                "metrics": result.metrics if trusted else {},
                "failure": (result.failure if trusted else driver.reason) or driver.reason,
                "result_files": sorted(p.name for p in result.model_dir.glob("*"))
                if result.model_dir.exists()
                else [],
            }
            points = result.metric_history if trusted and result.metric_history else None
        except (NbcontainerError, OSError, ValueError) as exc:
            # Outputs that cannot be read (refused while read, unreadable): the end says so.
            fields = {"exit_code": driver.exit_code, "failure": driver.reason or str(exc)}
            points = None
        try:
            self.ledger.finish(spec.run_id, fields, points, end)
        except LedgerError as exc:
            # Its outputs are kept, and its end with them: recorded when a ledger next opens.
            driver.hooks.log(
                spec.run_id,
                f"[nbcontainer] the run's end is kept to be recorded later: {exc}",
            )

    # --------------------------------------------------------------- sweeps
    def _sweep(
        self,
        parent: str,
        name: str,
        backend: Backend,
        image: str,
        req: RemoteRequest,
        hooks: Hooks,
        out_names: list[str],
        stop: StopSignal,
        namespace: dict[str, Any],
        snapshot_dir: str | None = None,
    ) -> dict[str, Any]:
        rows = req.sweep_rows
        digest = self.ledger.get(parent)["snapshot_digest"]
        children: list[tuple[str, dict[str, Any]]] = []
        for row in rows:
            child = self.ledger.create(
                name, backend.name, params={**req.params, **row}, parent=parent
            )
            self.ledger.update(child, image="" if snapshot_dir else image, snapshot_digest=digest)
            children.append((child, row))
        parent_driver = self.drivers[parent]
        if snapshot_dir is not None:
            # As many warm containers as children run at once, made while others run.
            size = int(req.settings.get("run_pool_size", 1) or 0)
            backend.configure(
                {**req.settings, "run_pool_size": max(size, min(req.max_parallel, len(rows)))}
            )
        drivers = {c: self._driver(c, backend, hooks, "cancel", stop) for c, _ in children}
        jobs: dict[str, tuple[Job, RunSpec]] = {}
        if backend.one_job_per_sweep:
            jobs = self._submit_sweep(parent, backend, image, req, children, drivers)
        parent_driver.enter(parent, Phase.RUNNING)

        def one(child: str, row: dict[str, Any]) -> RunResult:
            driver = drivers[child]
            self.drivers[child] = driver
            self._stops[child] = stop
            if child in jobs:  # submitted with the whole sweep: wait on it
                job, spec = jobs[child]
                return self._finish(driver, job, spec, out_names)
            if parent_driver.cancel_event.is_set() or stop.is_set():
                self.ledger.update(child, failure="cancelled before it started")
                self.ledger.add_phase(child, Phase.CANCELLED.value)
                raise KeyboardInterrupt
            spec = self._spec(
                child, image, req, params={**req.params, **row}, snapshot=snapshot_dir
            )
            job = self._submit(driver, backend, spec)
            return self._finish(driver, job, spec, out_names)

        # Child by child, `max_parallel` run at once; a sweep the platform took in one
        # step runs there at its pace, and these threads only collect (finished children
        # at once, so a few threads serve thousands).
        parallel = min(len(children), 16) if jobs else max(1, req.max_parallel)
        results: dict[str, RunResult] = {}
        errors: dict[str, BaseException] = {}
        pool = concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix=f"sweep-{parent}")
        futures: dict[concurrent.futures.Future[RunResult], str] = {}
        try:
            # A Ctrl-C inside submit() could start a worker the pool never joins, or a
            # child this loop never records: SIGINT waits until every child is queued.
            with _sigint_deferred():
                for c, row in children:
                    futures[pool.submit(one, c, row)] = c
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for fut in done:
                    try:
                        results[futures[fut]] = fut.result()
                    except Exception as exc:  # recorded in the child's row; the others go on
                        errors[futures[fut]] = exc
                stop.check()
        except KeyboardInterrupt:
            # Ctrl-C anywhere in a sweep cancels it: queued children never start, running
            # ones are cancelled, and every row ends in a terminal phase.
            self._cancel_sweep(parent, children, futures, pool, stop, jobs, backend)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for c, _ in children:
                self._stops.pop(c, None)
            if snapshot_dir is not None:
                # The sweep's extra runner containers go: back to run_pool_size.
                backend.configure(req.settings)
        failures: dict[str, tuple[dict[str, Any], str]] = {}
        first_error: BaseException | None = None
        for c, row in children:
            try:
                if c in errors:
                    raise errors[c]
                results[c].raise_for_status()
            except Exception as exc:  # each failed child is named; the others come back
                first_error = first_error or exc
                why = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                failures[c] = (row, str(why).split("\n", 1)[0])
        self.ledger.update(
            parent,
            failure=f"{len(failures)} of {len(children)} children failed" if failures else None,
        )
        parent_driver.done = True
        parent_driver.enter(parent, Phase.FAILED if failures else Phase.SUCCEEDED)
        self.drivers.pop(parent, None)
        combined = combine_sweep(
            [(row, results[c]) for c, row in children if c not in failures], out_names
        )
        namespace.update(combined)
        if failures:
            raise SweepFailed(parent, failures, len(children), sorted(combined)) from first_error
        return combined

    def _submit_sweep(
        self,
        parent: str,
        backend: Backend,
        image: str,
        req: RemoteRequest,
        children: list[tuple[str, dict[str, Any]]],
        drivers: dict[str, RunDriver],
    ) -> dict[str, tuple[Job, RunSpec]]:
        """The whole sweep in one step (an array job): the children share its environment,
        so they share the parent's signing key."""
        key = self.ledger.get(parent)["run_key"]
        specs = []
        for child, row in children:
            self.ledger.update(child, run_key=key)
            specs.append(self._spec(child, image, req, params={**req.params, **row}))
            drivers[child].enter(child, Phase.SUBMITTED)
        try:
            submitted = backend.submit_sweep(parent, specs)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            why = (
                "interrupted before it started"
                if interrupted
                else f"{type(exc).__name__} while submitting: {exc}"
            )
            for child, _ in children:
                self.ledger.update(child, failure=why)
                drivers[child].done = True
                drivers[child].enter(child, Phase.CANCELLED if interrupted else Phase.FAILED)
            self.ledger.update(parent, failure=why)
            self.drivers[parent].done = True
            self.drivers[parent].enter(parent, Phase.CANCELLED if interrupted else Phase.FAILED)
            self.drivers.pop(parent, None)
            raise
        jobs = {}
        for (child, _), spec, job in zip(children, specs, submitted, strict=True):
            self.ledger.update(child, job=job.handle)
            jobs[child] = (job, spec)
        return jobs

    def _cancel_sweep(
        self,
        parent: str,
        children: list[tuple[str, dict[str, Any]]],
        futures: dict[concurrent.futures.Future[RunResult], str],
        pool: concurrent.futures.ThreadPoolExecutor,
        stop: StopSignal,
        jobs: dict[str, tuple[Job, RunSpec]],
        backend: Backend,
    ) -> None:
        if parent in self.drivers:
            self.drivers[parent].cancel_event.set()  # a child starting now cancels itself at once
        waited = set(futures.values())
        for fut, child in futures.items():
            if fut.cancel():  # still queued: it never starts (or is never waited on)
                waited.discard(child)
        for child, _ in children:
            if child in waited:
                continue
            if child in jobs:  # on the platform already: stop it there
                try:
                    backend.cancel(jobs[child][0])
                finally:
                    self.ledger.update(child, failure="cancelled")
                    self.ledger.add_phase(child, Phase.CANCELLED.value)
            else:
                self.ledger.update(child, failure="cancelled before it started")
                self.ledger.add_phase(child, Phase.CANCELLED.value)
        for child, _ in children:
            if child in self.drivers:
                self.drivers[child].cancel_event.set()
        # Running children see their cancel within a poll, stop, and record CANCELLED.
        concurrent.futures.wait(futures)
        pool.shutdown(wait=True, cancel_futures=True)
        why = "cancelled" if stop.force_cancel else "cancelled by a kernel interrupt"
        self.ledger.update(parent, failure=why)
        parent_driver = self.drivers.pop(parent, None)
        if parent_driver is not None:
            parent_driver.done = True
            parent_driver.enter(parent, Phase.CANCELLED)
        else:
            self.ledger.add_phase(parent, Phase.CANCELLED.value)


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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def _read_logs(dest: Path) -> list[str]:
    p = dest / "logs.txt"
    return p.read_text().splitlines() if p.exists() else []


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


def _warnings_to(hooks: Hooks, run_id: str, stop: StopSignal | None = None):  # noqa: ANN202
    """Build output goes nowhere, except its warnings: those reach the run's log. A stop
    asked for during the build ends it at its next line."""

    def on_line(line: str) -> None:
        if stop is not None:
            stop.check()
        if line.startswith("warning:"):
            hooks.log(run_id, f"[nbcontainer] {line}")

    return on_line

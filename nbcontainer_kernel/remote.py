"""%%remote_run's library: snapshot -> build -> (push) -> submit -> wait -> collect,
recorded in the ledger at every phase, with progress through hooks.

The magics only parse arguments and call :class:`RemoteRunner`; nothing here
knows about widgets or IPython display.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Backend, Hooks, Job, Phase, RunDriver, RunSpec
from .backends.registry import get_backend
from .errors import NbcontainerError
from .results import RunResult, load_results
from .runimages import build_run_image
from .runs import Runs
from .snapshots import names_assigned, snapshot

__all__ = ["RemoteRequest", "RemoteRunner", "RunHandle", "combine_sweep"]


@dataclass
class RemoteRequest:
    cell: str
    name: str | None = None
    backend: str = "local"
    params: dict[str, Any] = field(default_factory=dict)
    sweep: tuple[str, list[Any]] | None = None
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


@dataclass
class RunHandle:
    """A run that goes on without the cell waiting (``--no-wait``)."""

    run_id: str
    runner: "RemoteRunner"
    thread: threading.Thread | None = None

    def status(self) -> str:
        return self.runner.ledger.get(self.run_id)["status"]

    def wait(self, timeout: float | None = None) -> str:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.status()

    def __repr__(self) -> str:
        return f"<remote run {self.run_id}: {self.status()}; %remote_attach {self.run_id} collects it>"


class RemoteRunner:
    """Runs cells remotely and records every run in the ledger."""

    def __init__(self, ledger: Runs | None = None) -> None:
        self.ledger = ledger or Runs()
        self.drivers: dict[str, RunDriver] = {}  # runs being waited on, for cancel buttons

    # ---------------------------------------------------------------- entry
    def run(self, req: RemoteRequest, namespace: dict[str, Any], hooks: Hooks,
            notebook: str | None = None) -> RunResult | RunHandle | dict[str, Any]:
        backend = get_backend(req.backend)
        out_names = req.out if req.out is not None else names_assigned(req.cell)
        name = req.name or (self.ledger.get(req.rerun)["name"] if req.rerun else "run")
        params = dict(req.params)
        if req.sweep:
            params[req.sweep[0]] = req.sweep[1]
        run_id = self.ledger.create(name, backend.name, params=params, notebook=notebook)
        driver = RunDriver(backend, hooks, self._record, req.interrupt)
        self.drivers[run_id] = driver
        try:
            image, digest = self._image_for(run_id, driver, req, namespace)
            self.ledger.update(run_id, image=image, snapshot_digest=digest)
            if backend.needs_push:
                driver.enter(run_id, Phase.PUSH)
                image = backend.push(image)
                self.ledger.update(run_id, image=image)
        except BaseException as exc:
            # Nothing ran, but the record stays, saying why (an unusable base, Ctrl-C, ...).
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.ledger.update(run_id, failure="interrupted before it started" if interrupted
                               else f"{type(exc).__name__}: {exc}")
            driver.enter(run_id, Phase.CANCELLED if interrupted else Phase.FAILED)
            self.drivers.pop(run_id, None)
            raise
        if req.sweep:
            return self._sweep(run_id, name, backend, image, req, hooks, out_names)
        spec = self._spec(run_id, image, req, params=dict(req.params))
        job = None
        try:
            job = self._submit(driver, backend, spec)
            if not req.wait:
                handle = RunHandle(run_id, self)
                handle.thread = threading.Thread(target=self._finish, args=(driver, job, spec, []), daemon=True)
                handle.thread.start()
                return handle
            result = self._finish(driver, job, spec, out_names)
        except KeyboardInterrupt:
            # Wherever Ctrl-C lands once the job exists, the run is cancelled (or detached).
            if job is not None and req.interrupt != "detach":
                driver.cancel_and_clean(job)
            raise
        result.raise_for_status()
        namespace.update(load_results(result.model_dir, out_names))
        return result

    def attach(self, run_id: str, namespace: dict[str, Any], hooks: Hooks, out: list[str] | None = None,
               interrupt: str = "cancel") -> RunResult:
        """Pick a run up where it is (after a kernel restart) and collect it."""
        row = self.ledger.get(run_id)
        if row["status"] not in (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.CANCELLED.value):
            backend = get_backend(row["backend"])
            driver = RunDriver(backend, hooks, self._record, interrupt)
            self.drivers[run_id] = driver
            job = Job(row["backend"], run_id, row["job"] or {})
            if hasattr(backend, "attach"):
                backend.attach(job)  # type: ignore[attr-defined]
            spec = RunSpec(run_id, row["image"] or "", params=row["params"])
            result = self._finish(driver, job, spec, [])
        else:
            result = self.result_of(run_id)
        result.raise_for_status()
        names = out if out is not None else list(result.index.get("variables", {}))
        namespace.update(load_results(result.model_dir, names))
        return result

    def cancel(self, run_id: str) -> None:
        row = self.ledger.get(run_id)
        if run_id in self.drivers:
            self.drivers[run_id].cancel_event.set()
            return
        if row["job"] and row["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            backend = get_backend(row["backend"])
            job = Job(row["backend"], run_id, row["job"])
            backend.cancel(job)
            backend.cleanup(job)
            self.ledger.add_phase(run_id, Phase.CANCELLED.value)

    def result_of(self, run_id: str) -> RunResult:
        row = self.ledger.get(run_id)
        return RunResult(image=row["image"] or "", exit_code=row["exit_code"],
                         output_dir=Path(row["result_dir"]),
                         logs=_read_logs(Path(row["result_dir"])),
                         cancelled=row["status"] == "CANCELLED")

    # -------------------------------------------------------------- phases
    def _image_for(self, run_id: str, driver: RunDriver, req: RemoteRequest,
                   namespace: Mapping[str, Any]) -> tuple[str, str]:
        if not req.rerun:
            return self._snapshot_and_build(run_id, driver, req, namespace)
        prior = self.ledger.get(req.rerun)
        if not prior.get("image"):
            raise NbcontainerError(f"Run {req.rerun} has no image to run again (it failed before its "
                                   "build finished); run the cell without --rerun.")
        return prior["image"], prior["snapshot_digest"]

    def _record(self, run_id: str, phase: Phase, at: float) -> None:
        self.ledger.add_phase(run_id, phase.value, at)

    def _snapshot_and_build(self, run_id: str, driver: RunDriver, req: RemoteRequest,
                            namespace: Mapping[str, Any]) -> tuple[str, str]:
        driver.enter(run_id, Phase.SNAPSHOT)
        snap = snapshot(namespace, req.cell, variables=req.variables, all_vars=req.all_vars)
        try:
            skipped = [f"{v.name} ({v.skipped})" for v in snap.skipped]
            if skipped:
                driver.hooks.log(run_id, f"[nbcontainer] not shipped: {'; '.join(skipped)}")
            driver.enter(run_id, Phase.BUILD)
            image = build_run_image(snap, base=req.base)
            return image.tag, snap.digest
        finally:
            snap.cleanup()

    def _spec(self, run_id: str, image: str, req: RemoteRequest, params: dict[str, Any]) -> RunSpec:
        return RunSpec(run_id, image, params=params, cpus=req.cpus, memory=req.memory, gpus=req.gpus,
                       timeout=req.timeout, detached=not req.wait)

    def _submit(self, driver: RunDriver, backend: Backend, spec: RunSpec) -> Job:
        driver.enter(spec.run_id, Phase.SUBMITTED)
        job = backend.submit(spec)
        self.ledger.update(spec.run_id, job=job.handle)
        return job

    def _finish(self, driver: RunDriver, job: Job, spec: RunSpec, out_names: list[str]) -> RunResult:
        dest = self.ledger.run_dir(spec.run_id)
        try:
            phase, code = driver.wait(job, spec, dest)
        except KeyboardInterrupt:
            if driver.on_interrupt != "detach":
                self.ledger.update(spec.run_id, failure="cancelled by a kernel interrupt")
            raise
        finally:
            self.drivers.pop(spec.run_id, None)
        result = RunResult(image=spec.image, exit_code=code, output_dir=dest, logs=_read_logs(dest),
                           cancelled=phase == Phase.CANCELLED)
        metrics = result.metrics
        self.ledger.update(spec.run_id, exit_code=code, metrics=metrics, failure=result.failure,
                           result_files=sorted(p.name for p in result.model_dir.glob("*"))
                           if result.model_dir.exists() else [])
        return result

    # --------------------------------------------------------------- sweeps
    def _sweep(self, parent: str, name: str, backend: Backend, image: str, req: RemoteRequest,
               hooks: Hooks, out_names: list[str]) -> dict[str, Any]:
        assert req.sweep is not None
        pname, values = req.sweep
        children = []
        for v in values:
            child = self.ledger.create(name, backend.name, params={**req.params, pname: v}, parent=parent)
            self.ledger.update(child, image=image, snapshot_digest=self.ledger.get(parent)["snapshot_digest"])
            children.append((child, v))
        parent_driver = self.drivers[parent]
        parent_driver.enter(parent, Phase.RUNNING)

        def one(child: str, value: Any) -> RunResult:
            driver = RunDriver(backend, hooks, self._record, req.interrupt)
            self.drivers[child] = driver
            if parent_driver.cancel_event.is_set():
                driver.cancel_event.set()
            spec = self._spec(child, image, req, params={**req.params, pname: value})
            job = self._submit(driver, backend, spec)
            return self._finish(driver, job, spec, out_names)

        parallel = max(1, req.max_parallel if backend.name == "local" else len(children))
        results: dict[str, RunResult] = {}
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            futures = {pool.submit(one, c, v): c for c, v in children}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    results[futures[fut]] = fut.result()
            except KeyboardInterrupt:
                for c, _ in children:
                    if c in self.drivers:
                        self.drivers[c].cancel_event.set()
                raise
        ok = all(r.succeeded for r in results.values())
        parent_driver.enter(parent, Phase.SUCCEEDED if ok else Phase.FAILED)
        self.drivers.pop(parent, None)
        for c, _ in children:
            results[c].raise_for_status()
        return combine_sweep(pname, [(v, results[c]) for c, v in children], out_names)


def combine_sweep(pname: str, runs: list[tuple[Any, RunResult]], out_names: list[str]) -> dict[str, Any]:
    """One value per out name: DataFrames concatenated with the swept parameter as a
    column; other values as a DataFrame of (parameter, value) rows."""
    import pandas as pd

    combined: dict[str, Any] = {}
    for name in out_names:
        frames = []
        for value, result in runs:
            got = load_results(result.model_dir, [name])
            if name not in got:
                continue
            v = got[name]
            if isinstance(v, pd.Series):
                v = v.to_frame()
            if isinstance(v, pd.DataFrame):
                frames.append(v.assign(**{pname: value}))
            else:
                frames.append(pd.DataFrame({pname: [value], name: [v]}))
        if frames:
            combined[name] = pd.concat(frames, ignore_index=not isinstance(frames[0].index, pd.DatetimeIndex))
    return combined


def _read_logs(dest: Path) -> list[str]:
    p = dest / "logs.txt"
    return p.read_text().splitlines() if p.exists() else []

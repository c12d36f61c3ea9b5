"""Notebook runs (``nbcontainer run``, schedules): what was asked, checked before anything
is built, as one RemoteRequest for RemoteRunner.

A notebook run goes through the same runner as a cell run (snapshot, build, push,
submit, wait, collect, the ledger), on every backend: the request names notebooks
(or an image ``nbcontainer containerize`` made) instead of a cell. What it adds is
checked here: parameter names against the ``parameters`` cell, sweep tables (a grid
of ``--sweep`` axes, or rows from a CSV or Parquet file), and the table of what the
children recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Hooks
from ..runtime.errors import ImageNotFound, InvalidOption, NbcontainerError
from .ledger import Ledger
from .runs import RemoteRequest, check_run_name, sweep_grid

__all__ = [
    "NotebookJob",
    "declared_of",
    "check_names",
    "parse_settings",
    "parse_value",
    "read_sweep_file",
    "sweep_axis",
    "recorded_frame",
    "MAX_ARRAY",
    "bring_in_runs",
]

#: Batch's limit on an array job's children: a larger sweep is refused before it is built.
MAX_ARRAY = 10_000


def parse_value(text: str) -> Any:
    """A parameter's value as given on a command line: JSON where it parses (0.5, true,
    [1, 2], "quoted"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set SETTING=VALUE`` (repeatable) -> a run's backend setting overrides."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidOption("--set", item, "expected SETTING=VALUE (e.g. queue=gpu-queue)")
        out[key.strip()] = parse_value(value)
    return out


def sweep_axis(spec: str) -> tuple[str, list[Any]]:
    """``NAME=V1,V2,...`` -> (NAME, values), each value as :func:`parse_value` reads it."""
    name, sep, values = spec.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise InvalidOption("--sweep", spec, "expected NAME=V1,V2,...")
    return name.strip(), [parse_value(v.strip()) for v in values.split(",")]


def read_sweep_file(path: Path | str) -> list[dict[str, Any]]:
    """The rows of a CSV or Parquet file (a column per parameter), as plain values."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InvalidOption("--sweep-file", str(p), "no such file")
    try:
        parquet = p.suffix.lower() in (".parquet", ".pq")
        frame = pd.read_parquet(p) if parquet else pd.read_csv(p)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except Exception as exc:  # not CSV, not Parquet: one line saying which file
        raise InvalidOption("--sweep-file", str(p), f"cannot be read: {exc}") from exc
    if frame.empty:
        raise InvalidOption("--sweep-file", str(p), "it holds no rows: a sweep needs one or more")
    # JSON round trip: numpy scalars become Python numbers, NaN becomes None.
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows


def declared_of(notebooks: Sequence[str] | None, image: str | None) -> list[dict[str, Any]]:
    """The parameters the notebooks' `parameters` cells declare, or the image's label."""
    if notebooks:
        import nbformat

        from .notebooks import declared_parameters

        nbs = []
        for n in notebooks:
            if not Path(n).is_file():
                raise NbcontainerError(f"No notebook at {Path(n).resolve()}.")
            nbs.append(nbformat.read(n, as_version=4))
        return declared_parameters(nbs)
    if image:
        from ..docker import labels
        from ..docker.engine import get_engine

        try:
            found = get_engine().get_image(image)
        except ImageNotFound as exc:
            raise NbcontainerError(
                f"No image {image!r} on this Docker engine ({exc.reason or 'not found'}). "
                f"Make one with `nbcontainer containerize NOTEBOOK --tag {image}`, or run the "
                "notebook itself: `nbcontainer run NOTEBOOK.ipynb`."
            ) from exc
        raw = (found.labels or {}).get(labels.PARAMETERS)
        if raw is None:
            raise NbcontainerError(
                f"{image} is not an image `nbcontainer containerize` made (it has no "
                f"{labels.PARAMETERS} label); run a notebook, or containerize it first."
            )
        declared: list[dict[str, Any]] = json.loads(raw)
        return declared
    return []


def check_names(declared: list[dict[str, Any]], names: Sequence[str], where: str) -> None:
    """Every name given must be a declared parameter, when the notebook declares any (a
    notebook without a `parameters` cell takes any: the run says where they went)."""
    known = [str(p["name"]) for p in declared]
    if not known:
        return
    for name in names:
        if name not in known:
            raise InvalidOption(
                where,
                name,
                f"the notebook declares no parameter {name!r} (its parameters cell has "
                f"{', '.join(known)})",
            )


@dataclass
class NotebookJob:
    """One ``nbcontainer run`` as given: checked by :meth:`request` before anything runs."""

    notebooks: list[str] = field(default_factory=list)
    image: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    sweep_axes: list[tuple[str, list[Any]]] = field(default_factory=list)
    sweep_file: str | None = None
    name: str | None = None
    backend: str = "local"
    max_parallel: int = 4
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    timeout: float | None = None
    wait: bool = True
    base: str | None = None
    requirements: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None

    def default_name(self) -> str:
        if self.notebooks:
            return Path(self.notebooks[0]).stem
        ref = (self.image or "run").split("@", 1)[0]
        return ref.rsplit("/", 1)[-1].split(":", 1)[0]

    def rows(self) -> list[dict[str, Any]]:
        """The sweep's rows: the file's, each crossed with the grid of --sweep axes."""
        grid = sweep_grid(self.sweep_axes) if self.sweep_axes else [{}]
        if not self.sweep_file:
            return [] if grid == [{}] else grid
        return [{**row, **g} for row in read_sweep_file(self.sweep_file) for g in grid]

    def request(self) -> RemoteRequest:
        """The RemoteRequest of this run; InvalidOption (a usage error) when a name, a
        sweep or the notebooks do not fit, before anything is built."""
        if bool(self.notebooks) == bool(self.image):
            raise InvalidOption("target", self.notebooks or self.image, "a notebook or an image")
        name = check_run_name(_run_name(self.name or self.default_name()))
        declared = declared_of(self.notebooks, self.image)
        check_names(declared, list(self.params), "-p")
        rows = self.rows()
        if rows and not self.wait:
            raise InvalidOption(
                "--no-wait",
                True,
                "a sweep is waited on (Ctrl-C or `nbcontainer cancel` stops it), as "
                "%%remote_run's is; run it in the background of your shell instead",
            )
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            where = f"--sweep-file {self.sweep_file}" if self.sweep_file else "--sweep"
            check_names(declared, columns, f"{where} column" if self.sweep_file else where)
            if len(rows) > MAX_ARRAY:
                raise InvalidOption(
                    where, len(rows), f"a sweep has at most {MAX_ARRAY:,} children (Batch's limit)"
                )
        return RemoteRequest(
            cell="",
            name=name,
            backend=self.backend,
            params=dict(self.params),
            sweep=rows or None,
            max_parallel=self.max_parallel,
            out=[],
            base=self.base,
            cpus=self.cpus,
            memory=self.memory,
            gpus=self.gpus,
            timeout=self.timeout,
            wait=self.wait,
            overrides=dict(self.overrides),
            notebooks=[str(Path(n).resolve()) for n in self.notebooks] or None,
            image=self.image,
            requirements=self.requirements,
            schedule=self.schedule,
        )


def _run_name(text: str) -> str:
    """A notebook's stem as a run name: what check_run_name takes (cut, odd characters -)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._") or "notebook"
    return cleaned[:40]


def recorded_frame(ledger: Ledger, run_id: str) -> Any:
    """A run's recorded values as a DataFrame: for a sweep a row per child (its id,
    status, parameters and what it recorded), else the run's one row. A failed child
    keeps its row, with what it recorded before it failed."""
    import pandas as pd

    row = ledger.get(run_id)
    rows = ledger.find(parent=run_id) or [row]
    params = [r["params"] for r in rows]
    records = [r["recorded"] or {} for r in rows]
    frame = pd.DataFrame(
        [
            {"run": r["id"], "status": r["status"], **_flat(p), **rec}
            for r, p, rec in zip(rows, params, records, strict=True)
        ]
    )
    return frame.set_index("run")


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as table cells: lists and dicts as their JSON text."""
    return {
        k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in (params or {}).items()
    }


def bring_in_runs(name: str, ledger: Ledger, backend_name: str = "batch") -> list[str]:
    """Record the Batch jobs a schedule or trigger started in the ledger (kind notebook,
    schedule NAME; their outputs checked with the schedule's key), and collect those that
    ended. Returns the run ids brought in now."""
    from ..backends.registry import get_backend
    from ..backends.schedules import Schedules
    from .runs import RemoteRunner

    backend = get_backend(backend_name)
    schedules = Schedules(backend, backend.settings({}))  # type: ignore[arg-type]
    doc = schedules.describe(name)
    known = {(r.get("job") or {}).get("job_id") for r in ledger.find(schedule=name)}
    listed = schedules.jobs(name, doc)
    jobs = [j for j in listed if j["jobId"] not in known]
    key = schedules.key_of(name) if jobs else None
    given = schedules.job_parameters([j["jobId"] for j in jobs]) if doc["kind"] == "trigger" else {}
    made = []
    for job in jobs:
        run_id = ledger.create(
            name,
            backend_name,
            params={**(doc.get("params") or {}), **given.get(job["jobId"], {})},
            kind="notebook",
            schedule=name,
            notebook=doc.get("notebook"),
            status="SUBMITTED",
        )
        ledger.update(
            run_id,
            job={"job_id": job["jobId"], "output_uri": job["output_uri"]},
            run_key=key,
            image=doc.get("image") or "",
        )
        made.append(run_id)
    runner = RemoteRunner(ledger)
    ended = {j["jobId"] for j in listed if j["status"] in ("SUCCEEDED", "FAILED")}
    for row in ledger.find(schedule=name):
        if row["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED") and (
            (row.get("job") or {}).get("job_id") in ended
        ):
            try:
                runner.attach(row["id"], {}, Hooks(), out=[])
            except NbcontainerError:
                continue  # a failed run: its row says why
    return made

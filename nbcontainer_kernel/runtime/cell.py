"""Cell mode: restore the namespace, apply parameters, run the cell with IPython, collect."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import metrics
from .names import is_ipython_name, names_assigned, names_imported
from .paths import Paths
from .serialize import SerializationError, deserialize, serialize_value
from .snapshot import Snapshot

__all__ = ["restore_namespace", "run_cell"]


def restore_environment(snap: Snapshot) -> None:
    """Env vars (the platform's own win), sys.path for local code, and the working directory."""
    env_file = snap.directory / "env.json"
    if env_file.exists():
        for k, v in json.loads(env_file.read_text()).items():
            os.environ.setdefault(k, v)
    code = snap.directory / "src" / "code"
    site = snap.directory / "src" / "site"
    entries = [str(code / p) for p in snap.source_paths] + [str(code), str(site)]
    for e in reversed(entries):
        if Path(e).is_dir() and e not in sys.path:
            sys.path.insert(0, e)
    if code.is_dir():
        os.chdir(code)


def restore_namespace(snap: Snapshot) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    for var in snap.variables:
        if var.kind in ("value", "module"):
            ns[var.name] = deserialize(
                {
                    "name": var.name,
                    "type": var.type,
                    "serializer": var.serializer,
                    "files": [Path(f).name for f in var.files],
                    "module": var.module,
                    "note": var.note,
                },
                snap.directory / "vars",
            )
    return ns


def shell() -> Any:  # IPython's InteractiveShell, imported here
    """The shell cells run in: made on first call (a warm runner makes it while it waits),
    with a display publisher of the run's own, new on every call."""
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class KeepingPublisher(DisplayPublisher):
        """display() calls: printed as text for the log, and kept as mime bundles."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.kept: list[dict[str, Any]] = []

        def publish(  # type: ignore[no-untyped-def]  # IPython's DisplayPublisher.publish
            self, data, metadata=None, source=None, *, transient=None, update=False, **kw
        ):
            self.kept.append({"data": _jsonable(data), "metadata": _jsonable(metadata or {})})
            if "text/plain" in data:
                print(data["text/plain"], flush=True)

    ip = InteractiveShell.instance(colors="nocolor")
    ip.display_pub = KeepingPublisher(shell=ip)
    return ip


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return (
            {
                k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                for k, v in obj.items()
            }
            if isinstance(obj, dict)
            else str(obj)
        )


def run_cell(snap: Snapshot, params: dict[str, Any], paths: Paths, index: dict[str, Any]) -> int:
    """Run the snapshot's cell; write results (their entries go into `index`), metrics and
    (on error) the failure. Returns the exit code."""
    restore_environment(snap)
    ip = shell()
    ns = restore_namespace(snap)
    ns.update(params)  # parameters override restored variables of the same name
    ip.user_ns.update(ns)
    before = {k: id(v) for k, v in ip.user_ns.items()}
    result = ip.run_cell(snap.cell, store_history=False, silent=False)
    sys.stdout.flush()
    sys.stderr.flush()

    error = result.error_before_exec or result.error_in_exec
    imported = names_imported(snap.cell)
    assigned = [n for n in names_assigned(snap.cell) if n in ip.user_ns and n not in imported]
    # Names bound another way (exec, globals(), a magic) count too, imports do not.
    changed = [
        k
        for k, v in ip.user_ns.items()
        if k not in assigned
        and k not in imported
        and (k not in before or before[k] != id(v))
        and not k.startswith("_")
        and not is_ipython_name(k)
        and k not in params
    ]
    index.update(
        write_results(
            ip.user_ns,
            assigned + changed,
            result.result if error is None else None,
            ip.display_pub.kept,
            params,
            paths,
        )
    )
    if error is not None:
        write_failure(error, paths, context="the cell raised")
        return 1
    return 0


def write_results(
    ns: dict[str, Any],
    names: list[str],
    last_value: Any,
    displays: list[dict[str, Any]],
    params: dict[str, Any],
    paths: Paths,
) -> dict[str, Any]:
    """/opt/ml/model: one file set per variable and metrics.json; returns the results index
    (which the runner seals into results.json)."""
    import types

    paths.make()
    variables, skipped = {}, {}
    for name in names:
        value = ns[name]
        if isinstance(value, types.ModuleType):
            continue
        try:
            variables[name] = serialize_value(name, value, paths.model).to_dict()
        except SerializationError as exc:
            skipped[name] = str(exc)
    last = None
    if last_value is not None:
        try:
            last = serialize_value("_last", last_value, paths.model, prefix="__").to_dict()
        except SerializationError as exc:
            skipped["_last"] = str(exc)
    (paths.model / "metrics.json").write_text(json.dumps(metrics.summary(), indent=1))
    return {
        "variables": variables,
        "skipped": skipped,
        "last_value": last,
        "displays": displays,
        "parameters": _jsonable(params),
    }


def _from_the_cell(tb: Any) -> Any:
    """The traceback from the cell's first frame on: IPython's and the runner's own frames
    say nothing about the user's code (all frames stay when the cell has none)."""
    start = tb
    while start is not None and not start.tb_frame.f_code.co_filename.startswith("<"):
        start = start.tb_next
    return start or tb


def write_failure(error: BaseException, paths: Paths, context: str) -> None:
    """The failure file (reason, then traceback) and the pickled exception."""
    from .serialize import dumps_exception

    paths.make()
    tb = "".join(
        traceback.format_exception(type(error), error, _from_the_cell(error.__traceback__))
    )
    paths.failure.write_text(f"{context}: {type(error).__name__}: {error}\n\n{tb}")
    paths.exception.write_bytes(dumps_exception(error))

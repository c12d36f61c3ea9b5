"""`nbcontainer run | runs | logs | cancel | result | attach`: notebook runs from a
terminal, on every backend, in the same ledger as cell runs.

Each command parses its flags and calls the library (RemoteRunner, the ledger,
remote.notebook_runs); progress goes to stderr, logs and results to stdout, and
``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.errors import InvalidOption, NbcontainerError, SweepFailed

if TYPE_CHECKING:
    from ..remote.ledger import Ledger
    from ..remote.results import RunResult

    _Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_commands"]


def _ledger() -> Ledger:
    from ..remote.ledger import Ledger

    return Ledger()


def resolve_run(ledger: Ledger, ref: str) -> str:
    """A run id, or a run name meaning its newest run (`nbcontainer result grid`)."""
    from ..runtime.errors import UnknownRun

    try:
        return str(ledger.get(ref)["id"])
    except UnknownRun:
        named = [r for r in ledger.find(name=ref) if not r["parent"]]
        if not named:
            raise
        return str(named[-1]["id"])


def _emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=1, default=str))


def _screen(text: str, reserve: int = 4) -> str:
    """At most one screen of `text`: its first line (what failed, and where) and its last
    lines (where a traceback ends)."""
    rows = max(10, shutil.get_terminal_size((80, 24)).lines - reserve)
    lines = text.rstrip().splitlines()
    if len(lines) <= rows:
        return "\n".join(lines)
    return "\n".join([lines[0], f"... ({len(lines) - rows + 1} lines)", *lines[-rows + 2 :]])


# ------------------------------------------------------------------- run
def _job(args: argparse.Namespace) -> Any:
    from ..remote.notebook_runs import NotebookJob, parse_settings, parse_value, sweep_axis

    targets = list(args.targets)
    notebooks = [t for t in targets if t.endswith(".ipynb") or Path(t).is_file()]
    if notebooks and len(notebooks) != len(targets):
        raise InvalidOption("target", targets, "notebooks or one image, not both")
    if not notebooks and len(targets) > 1:
        raise InvalidOption("target", targets, "one image at a time")
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "instance_type": args.instance_type,
            "instance_count": args.instance_count,
            "spot": args.spot or None,
        }.items()
        if v is not None
    }
    overrides.update(parse_settings(args.set))
    return NotebookJob(
        notebooks=notebooks,
        image=None if notebooks else targets[0],
        params={n: parse_value(v) for n, v in args.param or []},
        sweep_axes=[sweep_axis(s) for s in args.sweep or []],
        sweep_file=args.sweep_file,
        name=args.name,
        backend=args.backend,
        max_parallel=args.max_parallel,
        cpus=args.cpus,
        memory=args.memory,
        gpus=args.gpus,
        timeout=args.timeout,
        wait=not args.no_wait,
        base=args.base,
        requirements=args.requirements,
        overrides=overrides,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from ..remote.runs import RemoteRunner
    from .progress import TerminalProgress

    req = _job(args).request()  # usage errors before anything is built
    runner = RemoteRunner()
    progress = TerminalProgress(
        logs=None if args.json or args.quiet else sys.stdout,
        describe=lambda child: json.dumps(runner.ledger.get(child)["params"]),
    )
    failed: NbcontainerError | None = None
    result: RunResult | None = None
    try:
        result = runner.run(req, {}, progress.hooks)
    except SweepFailed as exc:
        failed = exc
    except NbcontainerError as exc:
        if progress.top is None:
            raise  # nothing was recorded: main() says what happened
        failed = exc
    run_id = progress.top or (result.run_id if result else None)
    if run_id is None:  # pragma: no cover - run() records before anything else
        raise NbcontainerError("the run was not recorded")
    if args.no_wait:
        return _submitted(runner.ledger, run_id, args.json)
    return _report(runner.ledger, run_id, failed, args)


def _submitted(ledger: Ledger, run_id: str, as_json: bool) -> int:
    row = ledger.get(run_id)
    if as_json:
        _emit_json({"run": run_id, "status": row["status"], "job": row["job"]})
    else:
        print(f"{run_id} submitted ({row['backend']}); follow it: nbcontainer logs {run_id} -f")
        print(f"collect it: nbcontainer attach {run_id}")
    return 0


def _report(ledger: Ledger, run_id: str, failed: Exception | None, args: argparse.Namespace) -> int:
    """What the run left: its outputs, executed notebooks and recorded values; for a
    failed one the failing cell and its traceback, one screen."""
    from ..remote.notebook_runs import recorded_frame

    row = ledger.get(run_id)
    rows = ledger.find(parent=run_id) or [row]
    frame = recorded_frame(ledger, run_id)
    copied = _copy_outputs(rows, Path(args.output)) if args.output else None
    if args.json:
        _emit_json(
            {
                "run": run_id,
                "status": row["status"],
                "failure": row["failure"],
                "outputs": copied or row["result_dir"],
                "notebooks": {r["id"]: _notebooks(r) for r in rows},
                "recorded": json.loads(frame.reset_index().to_json(orient="records")),
            }
        )
        return 0 if row["status"] == "SUCCEEDED" else 1
    for r in rows:
        made = _notebooks(r)
        if made:
            print(f"{r['id']}: {', '.join(made)}")
    if len(rows) > 1 or len(frame.columns) > 1:
        print(frame.to_string(max_rows=40))
    print(f"outputs: {copied or row['result_dir']}")
    if row["status"] == "SUCCEEDED":
        return 0
    _print_failure(ledger, rows, failed)
    return 1


def _notebooks(row: dict[str, Any]) -> list[str]:
    data = Path(row["result_dir"] or "") / "output" / "data"
    if not data.is_dir():
        return []
    return sorted(str(p) for p in data.iterdir() if p.suffix in (".ipynb", ".html"))


def _copy_outputs(rows: list[dict[str, Any]], dest: Path) -> str:
    """Each run's executed notebooks and outputs copied under `dest` (one folder per
    child of a sweep)."""
    for r in rows:
        src = Path(r["result_dir"] or "")
        if src.is_dir():
            target = dest if len(rows) == 1 else dest / r["id"]
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    return str(dest.resolve())


def _print_failure(ledger: Ledger, rows: list[dict[str, Any]], failed: Exception | None) -> None:
    bad = [r for r in rows if r["status"] != "SUCCEEDED"]
    first = bad[0] if bad else rows[0]
    failure_file = Path(first["result_dir"] or "") / "output" / "failure"
    text = ""
    if failure_file.is_file() and first.get("verdict") == "signed":
        text = failure_file.read_text(errors="replace")
    if len(rows) > 1:
        print(f"{len(bad)} of {len(rows)} children did not succeed:", file=sys.stderr)
        for r in bad[:20]:
            why = (r["failure"] or r["status"]).splitlines()[0]
            print(f"  {r['id']} {json.dumps(r['params'])}: {why}", file=sys.stderr)
        print(f"--- {first['id']} ---", file=sys.stderr)
    print(_screen(text or (first["failure"] or str(failed or "the run failed"))), file=sys.stderr)


# ------------------------------------------------------------------ runs
def cmd_runs(args: argparse.Namespace) -> int:
    if args.schedule:
        from ..remote.notebook_runs import bring_in_runs

        bring_in_runs(args.schedule, _ledger())
    ledger = _ledger()
    rows = ledger.find(name=args.name, status=args.status, kind=args.kind, schedule=args.schedule)
    rows = [r for r in rows if args.children or not r["parent"]]  # a sweep: its parent row
    if args.last is not None:
        rows = rows[-args.last :] if args.last > 0 else []
    if args.json:
        _emit_json([_row_doc(r) for r in rows])
        return 0
    if not rows:
        filtered = any((args.name, args.status, args.kind, args.schedule))
        print("no runs recorded" + (" that match" if filtered else ""))
        return 0
    print(_runs_table(rows, shutil.get_terminal_size((120, 24)).columns))
    return 0


def _runs_table(rows: list[dict[str, Any]], width: int) -> str:
    """One line per run, cut to the terminal's width: the last column (parameters and
    recorded values) takes what is left."""
    import datetime

    from ..remote.ledger import Ledger

    lines = []
    for r in rows:
        seconds = Ledger.duration(r)
        took = f"{seconds:.1f}s" if seconds is not None else ""
        when = datetime.datetime.fromtimestamp(r["created"]).strftime("%m-%d %H:%M")
        what = " ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items())
        got = " ".join(f"{k}={v}" for k, v in (r.get("recorded") or {}).items())
        lines.append(
            [
                r["id"],
                r.get("kind", "cell"),
                r["backend"],
                r["status"],
                when,
                took,
                what + (f" -> {got}" if got else ""),
            ]
        )
    header = ["RUN", "KIND", "BACKEND", "STATUS", "CREATED", "TOOK", "PARAMETERS -> RECORDED"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)][:-1]
    rest = max(10, width - sum(widths) - 2 * len(widths))
    out = []
    for line in [header, *lines]:
        cells = [str(x).ljust(w) for x, w in zip(line, widths, strict=False)]
        last = str(line[-1])
        cells.append(last if len(last) <= rest else last[: rest - 1] + "…")
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _row_doc(r: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "id",
        "name",
        "kind",
        "backend",
        "status",
        "params",
        "recorded",
        "metrics",
        "failure",
        "parent",
        "schedule",
        "notebook",
        "job",
        "exit_code",
        "created",
        "updated",
        "result_dir",
    )
    return {k: r.get(k) for k in keep}


# ------------------------------------------------------------------ logs
def cmd_logs(args: argparse.Namespace) -> int:
    """The run's log: what was collected (logs.txt), or, for a run still going, what its
    platform has (the container's log, CloudWatch); -f follows it to the end."""
    from ..remote.run_logs import RunLog

    ledger = _ledger()
    args.run = resolve_run(ledger, args.run)
    log = RunLog(ledger, args.run)
    shown = 0
    while True:
        lines, ended = log.read(shown)
        for line in lines:
            print(line, flush=True)
        shown += len(lines)
        if ended or not args.follow:
            if not shown:
                status = ledger.get(args.run)["status"]
                said = "left no log" if ended else f"has no log yet ({status})"
                print(f"{args.run} {said}", file=sys.stderr)
            return 0
        time.sleep(1.0)


# ---------------------------------------------------------------- cancel
def cmd_cancel(args: argparse.Namespace) -> int:
    from ..remote.runs import RemoteRunner

    runner = RemoteRunner()
    args.run = resolve_run(runner.ledger, args.run)
    if not runner.cancel_tree(args.run):
        print(f"{args.run} already ended ({runner.ledger.get(args.run)['status']})")
        return 0
    print(f"{args.run}: {runner.ledger.get(args.run)['status']}")
    return 0


# ---------------------------------------------------------------- result
def cmd_result(args: argparse.Namespace) -> int:
    from ..remote.notebook_runs import recorded_frame

    ledger = _ledger()
    args.run = resolve_run(ledger, args.run)
    frame = recorded_frame(ledger, args.run)
    if args.write:
        out = Path(args.write)
        if out.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(out)
        else:
            frame.to_csv(out)
        print(f"wrote {len(frame)} rows to {out}", file=sys.stderr)
    elif args.json:
        _emit_json(json.loads(frame.reset_index().to_json(orient="records")))
    else:
        print(frame.to_string(max_rows=200))
    if args.open:
        _open_html(ledger.get(args.run))
    return 0


def _open_html(row: dict[str, Any]) -> None:
    import webbrowser

    pages = [p for p in _notebooks(row) if p.endswith(".html")]
    if not pages:
        raise NbcontainerError(f"{row['id']} left no executed notebook to open")
    for page in pages:
        print(f"opening {page}", file=sys.stderr)
        webbrowser.open(Path(page).as_uri())


# ---------------------------------------------------------------- attach
def cmd_attach(args: argparse.Namespace) -> int:
    from ..remote.runs import RemoteRunner
    from .progress import TerminalProgress

    runner = RemoteRunner()
    args.run = resolve_run(runner.ledger, args.run)
    progress = TerminalProgress(logs=None if args.json else sys.stdout)
    progress.top = args.run
    failed: Exception | None = None
    try:
        runner.attach(args.run, {}, progress.hooks, out=[])
    except NbcontainerError as exc:
        failed = exc
    return _report(runner.ledger, args.run, failed, args)


# --------------------------------------------------------------- parsers
def add_commands(sub: _Commands) -> None:
    _run_parser(sub)
    r = sub.add_parser("runs", help="list recorded runs (cell and notebook runs)")
    r.add_argument("--name", help="only runs of this name")
    r.add_argument("--status", help="only runs in this status (e.g. failed)")
    r.add_argument("--kind", choices=["cell", "notebook"], help="only cell or notebook runs")
    r.add_argument("--last", type=int, metavar="K", help="only the K most recent")
    r.add_argument(
        "--schedule", metavar="NAME", help="runs a schedule or trigger started (brought in first)"
    )
    r.add_argument("--children", action="store_true", help="list sweeps' children too")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_runs)
    lg = sub.add_parser("logs", help="a run's log")
    lg.add_argument("run", help="a run id, or a name (its newest run)")
    lg.add_argument("-f", "--follow", action="store_true", help="follow it until the run ends")
    lg.set_defaults(func=cmd_logs)
    c = sub.add_parser("cancel", help="cancel a run (a sweep with all its children)")
    c.add_argument("run", help="a run id, or a name (its newest run)")
    c.set_defaults(func=cmd_cancel)
    res = sub.add_parser("result", help="what a run (a sweep: each child) recorded, as a table")
    res.add_argument("run", help="a run id, or a name (its newest run)")
    res.add_argument("--write", "-w", metavar="FILE", help="write it to FILE (.csv or .parquet)")
    res.add_argument("--open", action="store_true", help="open the executed notebook's HTML")
    res.add_argument("--json", action="store_true", help="print JSON")
    res.set_defaults(func=cmd_result)
    a = sub.add_parser("attach", help="follow a run started elsewhere (--no-wait) and collect it")
    a.add_argument("run", help="a run id, or a name (its newest run)")
    a.add_argument("--output", "-o", help="copy its outputs here")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_attach)


def _run_parser(sub: _Commands) -> None:
    rn = sub.add_parser(
        "run",
        help="run notebooks (or an image containerize made) on any backend",
        description="Run a notebook, a pipeline of notebooks (several, in order), or an image "
        "`nbcontainer containerize` made, with parameters, on any backend; recorded in the "
        "ledger beside cell runs.",
    )
    rn.add_argument("targets", nargs="+", metavar="NOTEBOOK|IMAGE")
    rn.add_argument("--name", help="the run's name (runs are NAME-1, NAME-2, ...)")
    where = rn.add_argument_group("backend")
    where.add_argument(
        "--backend",
        "-b",
        default="local",
        help="local, batch, sagemaker, sagemaker-local (default: local)",
    )
    where.add_argument("--instance-type", help="SageMaker instance type")
    where.add_argument("--instance-count", type=int, help="SageMaker instances")
    where.add_argument("--spot", action="store_true", help="SageMaker managed spot training")
    where.add_argument(
        "--set",
        action="append",
        metavar="SETTING=VALUE",
        help="a backend setting for this run (queue=..., registry=..., role=...; repeatable)",
    )
    params = rn.add_argument_group("parameters and sweeps")
    params.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a parameter (repeatable); values are JSON where they parse",
    )
    params.add_argument(
        "--sweep", action="append", metavar="NAME=V1,V2", help="a sweep axis (repeatable: a grid)"
    )
    params.add_argument("--sweep-file", metavar="ROWS", help="a CSV or Parquet file, a row a run")
    params.add_argument("--max-parallel", type=int, default=4, help="children at once (default 4)")
    res = rn.add_argument_group("resources")
    res.add_argument("--cpus", type=float)
    res.add_argument("--memory", help="e.g. 4g")
    res.add_argument("--gpus", help="'all', a count, or 'device=0,1'")
    res.add_argument("--timeout", type=float, help="seconds before the run is stopped")
    img = rn.add_argument_group("image")
    img.add_argument("--base", help="base image when building from notebooks")
    img.add_argument("--requirements", "-r", help="requirements file (default: this environment)")
    out = rn.add_argument_group("waiting and output")
    out.add_argument("--no-wait", action="store_true", help="submit and return (see attach)")
    out.add_argument("--output", "-o", help="also copy the outputs here")
    out.add_argument("--quiet", "-q", action="store_true", help="no log lines, only progress")
    out.add_argument("--json", action="store_true", help="print one JSON document at the end")
    rn.set_defaults(func=cmd_run)

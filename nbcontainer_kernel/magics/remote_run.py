"""%%remote_run and friends. The magic bodies parse arguments and call the library
(:mod:`nbcontainer_kernel.remote.runs`, :mod:`nbcontainer_kernel.remote.ledger`);
progress goes to the widget panel or its text twin, both listeners on the library's hooks."""

from __future__ import annotations

import ast
import copy
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import (
    argument,
    argument_group,
    magic_arguments,
    parse_argstring,
)
from traitlets import CaselessStrEnum, Float, Int, Unicode

from ..backends.base import Hooks, Phase, StopSignal
from ..backends.registry import UnknownBackend, available
from ..config import EnvDefaults
from ..remote.ledger import Ledger
from ..runtime.errors import InvalidOption, UnknownRun

if TYPE_CHECKING:
    from ..remote.results import RunResult

__all__ = ["RemoteRun", "parse_sweep", "parse_value"]


def parse_value(text: str) -> Any:
    """A parameter value: a Python literal where it parses (0.5, 'a', [1, 2]), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(
                f"{flag} expects NAME=VALUE with NAME a Python identifier, not {item!r}"
            )
        out[name] = parse_value(value)
    return out


def parse_sweep(flags: list[str] | None, sweep_file: str | None) -> list[dict[str, Any]] | None:
    """The rows of a sweep: the grid of the --sweep flags, or the rows of --sweep-file."""
    from ..remote.runs import sweep_grid

    if flags and sweep_file:
        raise UsageError("--sweep and --sweep-file are exclusive")
    if sweep_file:
        return _sweep_file_rows(sweep_file)
    if not flags:
        return None
    axes: list[tuple[str, list[Any]]] = []
    for flag in flags:
        name, sep, values = flag.partition("=")
        if not sep or not name.isidentifier() or not values:
            raise UsageError(f"--sweep expects NAME=V1,V2,... not {flag!r}")
        if name in dict(axes):
            raise UsageError(f"--sweep {name} is given twice")
        axes.append((name, [parse_value(v.strip()) for v in values.split(",")]))
    return sweep_grid(axes)


def _sweep_file_rows(path: str) -> list[dict[str, Any]]:
    import csv
    import keyword

    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
            if not names or bad:
                raise UsageError(
                    f"--sweep-file {path}: the header must name parameters (Python identifiers)"
                    + (f"; not {bad[0]!r}" if bad else "")
                )
            rows = []
            for number, raw in enumerate(reader, start=2):
                if None in raw or any(v is None for v in raw.values()):
                    raise UsageError(
                        f"--sweep-file {path}, line {number}: expected {len(names)} values"
                    )
                rows.append({k: parse_value(v.strip()) for k, v in raw.items()})
    except OSError as exc:
        raise UsageError(f"--sweep-file {path}: {exc.strerror or exc}") from None
    if not rows:
        raise UsageError(f"--sweep-file {path} has no rows")
    return rows


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"not a variable name: {bad[0]!r}")
    return names


class _Prepared:
    """A checked ``%%remote_run``: its request, listeners and stop signal, ready to run."""

    def __init__(
        self,
        magics: RemoteRun,
        req: Any,
        hooks: Hooks,
        listener: Any,
        stop: StopSignal,
        notebook: str | None,
    ) -> None:
        self.magics, self.req, self.hooks, self.listener = magics, req, hooks, listener
        self.stop, self.notebook = stop, notebook

    def execute(self) -> Any:
        """Run it and wait (in whichever thread calls this). KeyboardInterrupt for Ctrl-C;
        RunCancelled for Cancel."""
        try:
            return self.magics.runner.run(
                self.req, self.magics._user_ns, self.hooks, notebook=self.notebook, stop=self.stop
            )
        except UnknownBackend as exc:
            raise UsageError(str(exc)) from exc
        except InvalidOption as exc:
            if exc.option.startswith("--"):  # a flag that cannot work there: one line (recorded)
                raise UsageError(str(exc)) from None
            raise

    def say_interrupted(self) -> None:
        detached = self.req.interrupt == "detach" and not self.stop.force_cancel
        print(
            "remote run interrupted: "
            + ("detached; %remote_attach collects it" if detached else "cancelled"),
            file=sys.stderr,
        )


@magics_class
class RemoteRun(EnvDefaults, Magics):
    """Run notebook cells in a container: here (--local), on AWS Batch or on SageMaker.

    Each setting is a trait: a flag wins, then ``%config RemoteRun.<name>`` (or a
    config file), then the environment variable named in its help, then the
    ``[tool.nbcontainer]`` table of the project's pyproject.toml
    (:mod:`nbcontainer_kernel.config`).
    """

    backend = Unicode(
        "local",
        help="Backend used when neither --local nor --backend is given (env NBCONTAINER_BACKEND).",
    ).tag(config=True, env="NBCONTAINER_BACKEND")
    base = Unicode(
        None,
        allow_none=True,
        help="Base image of run images (default: the kernel's own "
        "container in a containerized kernel, else NBCONTAINER_BASE_IMAGE or "
        "python:X.Y-slim).",
    ).tag(config=True)
    max_parallel = Int(
        4, min=1, help="How many children of a sweep run at once (env NBCONTAINER_MAX_PARALLEL)."
    ).tag(config=True, env="NBCONTAINER_MAX_PARALLEL")
    timeout = Float(
        None,
        allow_none=True,
        help="Seconds before a run is stopped (none by default; env NBCONTAINER_TIMEOUT).",
    ).tag(config=True, env="NBCONTAINER_TIMEOUT")
    memory = Unicode(
        None,
        allow_none=True,
        help="Memory limit of run containers, e.g. '4g' (env NBCONTAINER_MEMORY).",
    ).tag(config=True, env="NBCONTAINER_MEMORY")
    cpus = Float(
        None, allow_none=True, help="CPU limit of run containers (env NBCONTAINER_CPUS)."
    ).tag(config=True, env="NBCONTAINER_CPUS")
    interrupt = CaselessStrEnum(
        ["cancel", "detach"],
        default_value="cancel",
        help="What interrupting the kernel while a run is waited on does: cancel "
        "the run, or detach from it (collect it later with %remote_attach; "
        "env NBCONTAINER_INTERRUPT).",
    ).tag(config=True, env="NBCONTAINER_INTERRUPT")
    progress = CaselessStrEnum(
        ["auto", "widget", "text"],
        default_value="auto",
        help="Progress display: the ipywidgets panel, its text twin, or auto "
        "(the panel when a Jupyter server started the kernel; env "
        "NBCONTAINER_PROGRESS).",
    ).tag(config=True, env="NBCONTAINER_PROGRESS")
    ledger_path = Unicode(
        None,
        allow_none=True,
        help="The run ledger's SQLite file (default: "
        "NBCONTAINER_RUNS_DB or the user data directory).",
    ).tag(config=True)
    trust = CaselessStrEnum(
        ["signed", "always", "never"],
        default_value="signed",
        help="How far run outputs are believed: 'signed' loads pickles only from runs "
        "whose signed manifest and file digests hold; 'always' reads runs made before "
        "signed results; 'never' loads no pickles at all (DataFrames and JSON "
        "values only; env NBCONTAINER_TRUST).",
    ).tag(config=True, env="NBCONTAINER_TRUST")

    resolve_timeout = Float(
        300.0,
        min=1.0,
        help="Seconds a dependency layer's wheel resolution (a --base build) may take in "
        "all (env NBCONTAINER_RESOLVE_TIMEOUT); then it fails naming the package index, as "
        "it does at once when the index cannot be reached.",
    ).tag(config=True, env="NBCONTAINER_RESOLVE_TIMEOUT")

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._runner: Any = None
        if shell is not None:
            from .settings import register_backends

            register_backends(shell)  # %config BatchBackend.queue = ... reaches them

    # ---------------------------------------------------------------- helpers
    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics are registered on a shell"
        user_ns: dict[str, Any] = self.shell.user_ns
        return user_ns

    @property
    def runner(self) -> Any:
        from ..remote.runs import RemoteRunner

        if self._runner is None or (
            self.ledger_path and str(self._runner.ledger.path) != self.ledger_path
        ):
            self._runner = RemoteRunner(Ledger(self.ledger_path))
        self._runner.trust = self._setting("trust")
        return self._runner

    def _setting(self, name: str, flag_value: Any = None) -> Any:
        """The flag's value when given, else the trait's (config > env > pyproject > default)."""
        if flag_value is not None:
            return flag_value
        try:
            return getattr(self, name)
        except InvalidOption as exc:  # a bad value in the environment or pyproject.toml
            raise UsageError(str(exc)) from None

    def _listeners(self, cancel: Any, sweep: bool = False) -> tuple[Hooks, Any]:
        mode = self._setting("progress")
        if mode == "auto":
            mode = (
                "widget"
                if (os.environ.get("JPY_SESSION_NAME") and getattr(self.shell, "kernel", None))
                else "text"
            )
        hooks = Hooks()
        if mode == "widget":
            from IPython.display import display

            from ..widgets.panel import RunPanel

            holder: dict[str, Any] = {}
            made = threading.Lock()  # a sweep's children report from several threads

            def on_phase(run_id: str, phase: Phase, timings: dict[str, float]) -> None:
                with made:
                    if "panel" not in holder:
                        holder["panel"] = RunPanel(
                            run_id,
                            on_cancel=lambda: cancel(holder["panel"].run_id),
                            describe=self._swept_values_of,
                        )
                        display(holder["panel"].widget)
                holder["panel"].on_phase(run_id, phase, timings)

            hooks.on_phase.append(on_phase)
            hooks.on_log.append(
                lambda rid, line: holder["panel"].on_log(rid, line) if "panel" in holder else None
            )
            return hooks, holder
        from ..widgets.text import TextProgress

        text = TextProgress(
            sys.stdout, prefix_logs=sweep, describe=self._swept_values_of if sweep else None
        )
        hooks.on_phase.append(text.on_phase)
        hooks.on_log.append(text.on_log)
        return hooks, text

    def _swept_values_of(self, run_id: str) -> str:
        """A sweep child's values of the swept parameters, for its row in the panel."""
        row = self.runner.ledger.get(run_id)
        parent = self.runner.ledger.get(row["parent"]) if row.get("parent") else {}
        swept = {k for k, v in (parent.get("params") or {}).items() if isinstance(v, list)}
        return ", ".join(f"{k}={v!r}" for k, v in row["params"].items() if k in swept)

    def _notebook(self) -> str | None:
        return self._user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")

    # ------------------------------------------------------------------ magics
    @magic_arguments()
    @argument("--name", help="The run's name; runs are numbered NAME-1, NAME-2, ...")
    @argument_group("Backend: where it runs")
    @argument(
        "--local", action="store_true", help="Run in Docker on this machine (--backend local)."
    )
    @argument(
        "--backend",
        help="Where to run: a name registered in the nbcontainer_kernel.backends "
        "entry points (local, batch, sagemaker, sagemaker-local).",
    )
    @argument(
        "--image",
        "--base",
        dest="base",
        metavar="IMAGE",
        help="Base image of the run image (default: the kernel's container, or python:X.Y-slim).",
    )
    @argument(
        "--rerun",
        metavar="RUN",
        help="Run RUN's image again with other parameters (no snapshot, no build).",
    )
    @argument(
        "--instance-type",
        metavar="TYPE",
        help="SageMaker instance type, e.g. ml.m5.large, ml.g5.xlarge "
        "(SageMakerBackend.instance_type).",
    )
    @argument(
        "--instance-count", type=int, help="SageMaker instances (1: a cell runs on one instance)."
    )
    @argument("--volume-size", type=int, metavar="GB", help="SageMaker instance storage in GB.")
    @argument(
        "--spot",
        action="store_true",
        default=None,
        help="SageMaker managed spot training (SageMakerBackend.spot).",
    )
    @argument_group("Parameters and sweeps")
    @argument(
        "-p",
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="A parameter (repeatable); VALUE is a Python literal, else a string. It overrides "
        "the variable of the same name.",
    )
    @argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2,...",
        help="One run per value; the results are concatenated into one DataFrame with NAME "
        "as a column. Several --sweep flags make a grid (every combination).",
    )
    @argument(
        "--sweep-file",
        metavar="CSV",
        help="One run per row of a CSV file whose header names the parameters "
        "(values are Python literals where they parse).",
    )
    @argument("--max-parallel", type=int, help="Children of a sweep running at once.")
    @argument_group("Variables: what travels")
    @argument(
        "--vars", metavar="A,B", help="Variables to ship (default: the names the cell reads)."
    )
    @argument("--all-vars", action="store_true", help="Ship the whole namespace.")
    @argument(
        "--out",
        metavar="A,B",
        help="Variables to bring back (default: the names the cell assigns).",
    )
    @argument(
        "--allow-unpinned",
        action="store_true",
        help="When a pinned package has no wheel for the image, take the newest version of that "
        "name from the package index (never done without this flag: a private package's name "
        "may belong to someone else there).",
    )
    @argument_group("Resources")
    @argument("--cpus", type=float, help="CPU limit.")
    @argument("--memory", help="Memory limit, e.g. 4g.")
    @argument("--gpus", help="GPUs: 'all', a count, or 'device=0,1'.")
    @argument("--timeout", type=float, help="Seconds before the run is stopped.")
    @argument_group("Waiting")
    @argument(
        "--no-wait",
        action="store_true",
        help="Return a handle at once; %%remote_attach collects it.",
    )
    @cell_magic
    def remote_run(self, line: str, cell: str) -> Any:
        """Run this cell in a container built from the kernel's state; bring its results back."""
        from .waiting import pumping

        prepared = self._prepare(line, cell)
        try:
            with pumping(self.shell) as pump:
                prepared.stop.pump = pump
                outcome = prepared.execute()
        except KeyboardInterrupt:
            prepared.say_interrupted()
            raise
        return self._show(outcome, prepared.listener)

    def _prepare(self, line: str, cell: str) -> _Prepared:
        """Parse and check the flags (UsageError when they cannot work), make the request and
        the progress listeners. Runs where the magic is called (the kernel's main thread)."""
        from ..remote.runs import RemoteRequest

        args = parse_argstring(self.remote_run, line)
        if args.local and args.backend and args.backend != "local":
            raise UsageError("--local and --backend are exclusive")
        if args.vars and args.all_vars:
            raise UsageError("--vars and --all-vars are exclusive")
        if args.no_wait and (args.sweep or args.sweep_file):
            raise UsageError(
                "--no-wait does not apply to --sweep: a sweep is waited on (Cancel stops it)"
            )
        if args.rerun and (args.vars or args.all_vars or args.base):
            raise UsageError(
                "--rerun runs that run's image as it is: --vars, --all-vars and --base do not apply"
            )
        if args.name is not None:
            from ..remote.runs import check_run_name

            try:
                check_run_name(args.name)
            except InvalidOption as exc:
                raise UsageError(f"--name {args.name[:50]!r}: {exc.reason}") from None
        backend = "local" if args.local else self._setting("backend", args.backend)
        if backend not in available():
            raise UsageError(
                f"unknown backend {backend!r}; available: {', '.join(sorted(available()))}\n"
                + self.remote_run.parser.format_usage().strip()
            )
        sweep = parse_sweep(args.sweep, args.sweep_file)
        if args.rerun:
            try:
                self.runner.ledger.get(args.rerun)
            except UnknownRun as exc:
                raise UsageError(str(exc)) from exc
        max_parallel = self._setting("max_parallel", args.max_parallel)
        if max_parallel < 1:
            raise UsageError("--max-parallel must be at least 1")
        req = RemoteRequest(
            cell=cell,
            name=args.name,
            backend=backend,
            params=_pairs(args.param, "-p"),
            sweep=sweep,
            max_parallel=max_parallel,
            variables=_names(args.vars),
            all_vars=args.all_vars,
            out=_names(args.out),
            base=self._setting("base", args.base),
            cpus=self._setting("cpus", args.cpus),
            memory=self._setting("memory", args.memory),
            gpus=args.gpus,
            timeout=self._setting("timeout", args.timeout),
            wait=not args.no_wait,
            rerun=args.rerun,
            interrupt=self._setting("interrupt"),
            allow_unpinned=args.allow_unpinned,
            resolve_timeout=self.resolve_timeout,
            overrides=self._overrides(args),
        )
        stop = StopSignal()
        hooks, listener = self._listeners(lambda _run_id: stop.cancel(), sweep=bool(sweep))
        return _Prepared(self, req, hooks, listener, stop, self._notebook())

    @staticmethod
    def _overrides(args: Any) -> dict[str, Any]:
        """The flags that set a backend's settings for this run (None: not given)."""
        return {
            "instance_type": args.instance_type,
            "instance_count": args.instance_count,
            "volume_size": args.volume_size,
            "spot": args.spot,
        }

    def _load_config(self, cfg: Any, section_names: Any = None, traits: Any = None) -> None:
        """`RemoteRun.<name>` for a backend's setting (earlier releases' spelling) goes to
        that backend, with a warning; the rest is RemoteRun's own."""
        from ..backends.settings import legacy_names, translate_legacy
        from .settings import register_backends

        legacy = translate_legacy(cfg)
        if legacy:
            cfg = copy.deepcopy(cfg)  # the shell's own config keeps what it was given
            old_names = set(legacy_names())
            for old in [k for k in cfg["RemoteRun"] if k in old_names]:
                del cfg["RemoteRun"][old]
            if self.shell is not None:
                for backend in register_backends(self.shell):
                    backend.update_config(legacy)
        super()._load_config(cfg, section_names, traits)

    def _show(self, outcome: RunResult, listener: Any) -> Any:
        from ..remote.runs import RunHandle

        if outcome.pending:  # --no-wait: the cell shows where the run is
            return RunHandle(outcome.run_id or "", self.runner)
        if outcome.children:  # a sweep: its combined results are in the namespace
            return None
        if isinstance(listener, dict):  # the panel showed the log; the cell shows stdout too
            for line in outcome.logs:
                if not line.startswith(("[nbcontainer", "[sagemaker")):  # the platform's own
                    print(line)
        from IPython.display import display

        for bundle in outcome.displays:
            display(bundle["data"], raw=True, metadata=bundle.get("metadata") or None)
        return outcome.last_value

    @magic_arguments()
    @argument("--name", help="Only runs of this name.")
    @argument("--status", help="Only runs in this status (e.g. FAILED).")
    @argument("--backend", help="Only runs on this backend (local, batch, sagemaker, ...).")
    @argument("--last", type=int, metavar="K", help="Only the K most recent runs.")
    @argument("--sweep", metavar="PARENT", help="Only the children of this sweep.")
    @line_magic
    def remote_runs(self, line: str) -> Any:
        """The run ledger as a flat DataFrame: one row per run, one column per parameter
        (param.NAME), metric (metric.NAME, last value) and phase time (time.PHASE)."""
        from ..remote.tables import runs_frame

        args = parse_argstring(self.remote_runs, line)
        if args.last is not None and args.last < 0:
            raise UsageError("--last must be 0 or more")
        if args.sweep:
            self._check_run(args.sweep)
        return runs_frame(
            self.runner.ledger,
            name=args.name,
            status=args.status,
            backend=args.backend,
            last=args.last,
            sweep=args.sweep,
        )

    @magic_arguments()
    @argument("runs", nargs="*", help="Run ids (the first is the reference).")
    @argument("--sweep", metavar="PARENT", help="Compare the children of this sweep.")
    @argument(
        "--plot",
        metavar="METRIC",
        help="Also plot METRIC across the runs (over steps where it has them; against the "
        "swept parameter for a sweep). Needs matplotlib.",
    )
    @line_magic
    def remote_compare(self, line: str) -> Any:
        """%remote_compare RUN RUN ... | --sweep PARENT: runs side by side: the parameters
        that differ, metrics with their difference to the first run, results summarised."""
        from ..remote.tables import compare_frame, plot_metric

        args = parse_argstring(self.remote_compare, line)
        if bool(args.runs) == bool(args.sweep):
            raise UsageError("usage: %remote_compare RUN [RUN ...] | --sweep PARENT [--plot M]")
        ledger = self.runner.ledger
        ids = list(args.runs)
        swept = None
        for run_id in ids + ([args.sweep] if args.sweep else []):
            self._check_run(run_id)
        if args.sweep:
            ids = [r["id"] for r in ledger.find(parent=args.sweep)]
            if not ids:
                raise UsageError(f"{args.sweep} is not a sweep (it has no children)")
            parent = ledger.get(args.sweep)
            swept = next((k for k, v in parent["params"].items() if isinstance(v, list)), None)
        frame = compare_frame(ids, ledger, trust=self.runner.trust)
        if args.plot:
            try:
                figure = plot_metric(ids, args.plot, ledger, swept=swept)
            except ImportError:
                raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
            from IPython.display import display

            display(figure)
        return frame

    @magic_arguments()
    @argument("run", help="The run id, e.g. lda-3.")
    @argument("--out", metavar="A,B", help="Only these variables.")
    @argument(
        "--unverified",
        action="store_true",
        help="Read the data values (DataFrames, JSON) of a run whose outputs failed verification; "
        "its pickles are never loaded.",
    )
    @line_magic
    def remote_result(self, line: str) -> Any:
        """%remote_result RUN: load a run's results into the namespace (and return them)."""
        from ..remote.results import load_results

        args = parse_argstring(self.remote_result, line)
        result = self._result(args.run)
        values = load_results(result.outputs, _names(args.out), unverified_data=args.unverified)
        self._user_ns.update(values)
        return values

    @line_magic
    def remote_logs(self, line: str) -> None:
        """%remote_logs RUN: print a run's log."""
        run_id = line.strip()
        if not run_id:
            raise UsageError("usage: %remote_logs RUN")
        for log_line in self._result(run_id).logs:
            print(log_line)

    @magic_arguments()
    @argument("run", help="The run id.")
    @argument("--out", metavar="A,B", help="Only these variables.")
    @line_magic
    def remote_attach(self, line: str) -> Any:
        """%remote_attach RUN: pick a run up where it is (e.g. after a kernel restart)
        and collect it."""
        args = parse_argstring(self.remote_attach, line)
        self._check_run(args.run)
        hooks, listener = self._listeners(self.runner.cancel)
        result = self.runner.attach(
            args.run, self._user_ns, hooks, _names(args.out), self._setting("interrupt")
        )
        return self._show(result, listener)

    @line_magic
    def remote_cancel(self, line: str) -> None:
        """%remote_cancel RUN: stop a run and remove its container."""
        run_id = line.strip()
        if not run_id:
            raise UsageError("usage: %remote_cancel RUN")
        self._check_run(run_id)
        self.runner.cancel(run_id)
        print(f"cancelled {run_id}")

    def _check_run(self, run_id: str) -> dict[str, Any]:
        try:
            row: dict[str, Any] = self.runner.ledger.get(run_id)
            return row
        except UnknownRun as exc:
            raise UsageError(str(exc)) from exc

    def _result(self, run_id: str) -> Any:
        self._check_run(run_id)
        return self.runner.result_of(run_id)

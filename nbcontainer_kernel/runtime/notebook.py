"""Notebook mode: execute the whole notebook with papermill-style parameters."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import metrics
from .paths import Paths
from .recorded import recorded_in

__all__ = ["parameters_of", "inject_parameters", "run_notebook", "run_pipeline"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _is_identifier(name: object) -> bool:
    import keyword

    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def parameters_of(nb: Any) -> list[dict[str, Any]]:
    """Names, types and defaults of the cell tagged `parameters` (simple assignments)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            out = []
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                return []
            for stmt in tree.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                ):
                    try:
                        value = ast.literal_eval(stmt.value)
                        typ = type(value).__name__
                    except ValueError:
                        value, typ = ast.unparse(stmt.value), "expression"
                    out.append({"name": stmt.targets[0].id, "type": typ, "default": value})
                elif (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and stmt.value
                ):
                    try:
                        value = ast.literal_eval(stmt.value)
                    except ValueError:
                        value = ast.unparse(stmt.value)
                    out.append(
                        {
                            "name": stmt.target.id,
                            "type": ast.unparse(stmt.annotation),
                            "default": value,
                        }
                    )
            return out
    return []


def inject_parameters(nb: Any, params: dict[str, Any]) -> str:
    """Insert a cell tagged `injected-parameters` after the `parameters` cell (or first);
    returns where it went, in words (the run's log says so)."""
    import nbformat

    if not params:
        return ""
    bad = [k for k in params if not _is_identifier(k)]
    if bad:  # names become code in the injected cell: identifiers only
        raise ValueError(f"parameter names must be Python identifiers, not {bad[0]!r}")
    source = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    index = next(
        (
            i + 1
            for i, c in enumerate(nb.cells)
            if "parameters" in c.get("metadata", {}).get("tags", [])
        ),
        0,
    )
    nb.cells.insert(index, cell)
    if index == 0:
        return (
            "as a new first cell: the notebook has no cell tagged 'parameters', so its own "
            "assignments of these names run after them and win"
        )
    return f"after the cell tagged 'parameters' (as cell {index})"


def run_pipeline(
    notebooks: list[tuple[Path, str]],
    params: dict[str, Any],
    paths: Paths,
    index: dict[str, Any],
    workdir: Path,
) -> int:
    """Run (notebook, stem) pairs in order with the same parameters, each executed copy
    kept; stop at the first that fails, naming it (the failure file starts with it)."""
    index["pipeline"] = [stem for _, stem in notebooks]
    recorded: dict[str, Any] = {}
    for step, (notebook, stem) in enumerate(notebooks, 1):
        print(f"[nbcontainer] pipeline step {step}/{len(notebooks)}: {stem}", flush=True)
        code = run_notebook(notebook, params, paths, index, workdir, stem)
        recorded.update(index.get("recorded") or {})
        index["recorded"] = dict(recorded)
        _write_recorded(recorded, paths)
        if code != 0:
            text = paths.failure.read_text() if paths.failure.exists() else ""
            paths.failure.write_text(
                f"pipeline stopped at step {step} of {len(notebooks)} ({stem}); the steps "
                f"after it did not run.\n{text}"
            )
            index["failed_step"] = stem
            return code
    return 0


def run_notebook(
    notebook: Path,
    params: dict[str, Any],
    paths: Paths,
    index: dict[str, Any],
    workdir: Path,
    stem: str = "output",
) -> int:
    import nbformat
    from nbclient import NotebookClient

    class EchoingClient(NotebookClient):
        """Echo each cell's stream output to our stdout/stderr as it comes (the run's log)."""

        def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]  # nbclient's
            if msg["msg_type"] == "stream":
                stream = sys.stderr if msg["content"]["name"] == "stderr" else sys.stdout
                stream.write(msg["content"]["text"])
                stream.flush()
            return super().output(outs, msg, display_id, cell_index)

    paths.make()
    nb = nbformat.read(notebook, as_version=4)
    where = inject_parameters(nb, params)
    if where:
        print(f"[nbcontainer] parameters {sorted(params)} injected {where}", flush=True)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]

    def on_start(cell: Any, cell_index: int) -> None:
        if cell_index not in code_cells:
            return  # markdown: nothing runs
        n = code_cells.index(cell_index) + 1
        print(f"[nbcontainer] cell {n}/{len(code_cells)} (index {cell_index})", flush=True)

    code = 0
    try:
        with _ipc_kernel_config() as config:
            EchoingClient(
                nb,
                kernel_name="python3",
                timeout=None,
                startup_timeout=120,
                resources={"metadata": {"path": str(workdir)}},
                on_cell_start=on_start,
                config=config,
            ).execute()
    except Exception as exc:  # a failing cell, a dead kernel, a kernel that never started
        code = 1
        _write_failure(nb, exc, paths)
    finally:
        _write_outputs(nb, params, paths, index, stem)
    return code


@contextlib.contextmanager
def _ipc_kernel_config() -> Iterator[Any]:
    """The notebook's kernel talks over Unix sockets, not TCP ports: containers that share
    a network (a platform's host networking) would race for the same free ports, and a
    kernel that lost died before its first reply. The sockets (an absolute path: the
    kernel runs in the notebook's directory) and the connection file go in a short
    private directory (a socket's path is at most 107 bytes), removed at the end."""
    import shutil
    import tempfile

    from traitlets.config import Config

    made = tempfile.mkdtemp(prefix="nbk-")
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(made, "kernel")
    config.KernelManager.connection_file = os.path.join(made, "kernel.json")
    try:
        yield config
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _write_failure(nb: Any, exc: Exception, paths: Paths) -> None:
    """The failing cell (its index and source), the error, and the exception itself."""
    failed = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code"
            and any(o.get("output_type") == "error" for o in c.get("outputs", []))
        ),
        None,
    )
    where = f"cell {failed}" if failed is not None else "a cell"
    source = nb.cells[failed].source if failed is not None else ""
    paths.failure.write_text(
        _strip_ansi(
            f"notebook failed in {where}: {getattr(exc, 'ename', type(exc).__name__)}: "
            f"{getattr(exc, 'evalue', exc)}\n\n--- cell source ---\n{source}\n\n--- traceback "
            f"---\n{exc}\n"
        )
    )
    (paths.output / "failed_cell.json").write_text(json.dumps({"index": failed, "source": source}))
    from .serialize import dumps_exception

    paths.exception.write_bytes(dumps_exception(exc))


def _write_outputs(
    nb: Any, params: dict[str, Any], paths: Paths, index: dict[str, Any], stem: str
) -> None:
    """The executed notebook (and its HTML), the metrics its cells printed, and what the
    results manifest says of the run; whether the notebook failed or not."""
    import nbformat

    out_nb = paths.output_data / f"{stem}.ipynb"
    nbformat.write(nb, out_nb)
    try:
        from nbconvert import HTMLExporter

        html, _ = HTMLExporter().from_notebook_node(nb)
        (paths.output_data / f"{stem}.html").write_text(html)
    except Exception as exc:  # the executed notebook is kept even when HTML fails
        print(f"[nbcontainer] HTML export failed: {exc}", file=sys.stderr)
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    (paths.model / "metrics.json").write_text(
        json.dumps(metrics.summary(metrics.parse_metric_lines(text)), indent=1)
    )
    recorded = recorded_in(nb.cells)
    _write_recorded(recorded, paths)
    index.update({"parameters": params, "notebook": out_nb.name, "recorded": recorded})
    index.setdefault("notebooks", []).append(out_nb.name)


def _write_recorded(recorded: dict[str, Any], paths: Paths) -> None:
    """What the notebook recorded (record(), scrapbook's glue): model/recorded.json."""
    (paths.model / "recorded.json").write_text(json.dumps(recorded, indent=1, default=str))

"""Which names a cell reads and assigns, from its AST (IPython syntax tolerated)."""

from __future__ import annotations

import ast
import re

__all__ = ["to_python", "names_read", "names_assigned", "names_imported", "is_ipython_name"]

# IPython's own names in a user namespace: never shipped, never results.
_IPYTHON_NAMES = {
    "In",
    "Out",
    "get_ipython",
    "exit",
    "quit",
    "open",
    "_",
    "__",
    "___",
    "_i",
    "_ii",
    "_iii",
    "_ih",
    "_oh",
    "_dh",
    "_sh",
    "__builtin__",
    "__builtins__",
    "__name__",
    "__doc__",
    "__package__",
    "__loader__",
    "__spec__",
    "__session__",
    "__file__",
    "__cached__",
}
_IPYTHON_PATTERN = re.compile(r"^_i?\d+$|^_i{1,3}$")


def is_ipython_name(name: str) -> bool:
    return name in _IPYTHON_NAMES or bool(_IPYTHON_PATTERN.match(name))


def to_python(cell: str) -> str:
    """The cell as plain Python: %magics and !commands become get_ipython() calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # no IPython: plain Python is all there can be
        return cell
    return TransformerManager().transform_cell(cell)


def _parse(cell: str) -> ast.Module:
    try:
        return ast.parse(to_python(cell))
    except SyntaxError:
        return ast.parse("")


def names_read(cell: str) -> set[str]:
    """Every global name the cell loads (a superset is harmless: absent names are ignored)."""
    tree = _parse(cell)
    out = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    # Names passed to magics as text, e.g. `%time train(docs)`, are parsed too.
    for call in ast.walk(tree):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("run_line_magic", "run_cell_magic")
        ):
            for arg in call.args[1:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    try:
                        inner = ast.parse(arg.value)
                    except SyntaxError:
                        continue
                    out |= {
                        n.id
                        for n in ast.walk(inner)
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                    }
    return {n for n in out if not is_ipython_name(n)}


def names_assigned(cell: str) -> list[str]:
    """Names the cell binds at top level, in order (assignments, for/with targets, defs)."""
    tree = _parse(cell)
    found: list[str] = []

    def add(name: str) -> None:
        if name not in found and not is_ipython_name(name):
            found.append(name)

    def targets(node: ast.AST) -> None:
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                add(n.id)

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    targets(t)
            elif isinstance(stmt, (ast.For, ast.AsyncFor)):
                targets(stmt.target)
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                for item in stmt.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars)
                visit(stmt.body)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                add(stmt.name)
            elif isinstance(stmt, (ast.If, ast.While)):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for h in stmt.handlers:
                    visit(h.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, ast.Expr):
                for n in ast.walk(stmt):  # walrus targets
                    if isinstance(n, ast.NamedExpr):
                        add(n.target.id)

    visit(tree.body)
    return found


def names_imported(cell: str) -> set[str]:
    """Names bound by import statements anywhere in the cell (not results)."""
    out = set()
    for node in ast.walk(_parse(cell)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out.add((alias.asname or alias.name).split(".")[0])
    return out

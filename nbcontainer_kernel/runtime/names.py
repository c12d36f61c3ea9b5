"""Which names a cell reads and assigns, from its AST (IPython syntax tolerated)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

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
    plain: str = TransformerManager().transform_cell(cell)  # type: ignore[no-untyped-call]
    return plain


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
    found: list[str] = []
    for name in _bound_in(_parse(cell).body):
        if name not in found and not is_ipython_name(name):
            found.append(name)
    return found


def _stored(node: ast.AST) -> Iterator[str]:
    """The names a target binds (``a``, ``a, (b, c)``, ``*rest``)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            yield n.id


def _bound_in(body: list[ast.stmt]) -> Iterator[str]:
    """The names statements bind at their own level, in order: nested blocks of control
    flow are the same level; function and class bodies are not."""
    for stmt in body:
        yield from _bound_by(stmt)
        for block in _blocks(stmt):
            yield from _bound_in(block)


def _bound_by(stmt: ast.stmt) -> Iterator[str]:
    """What the statement itself binds (not its nested blocks)."""
    if isinstance(stmt, ast.Assign):
        for t in stmt.targets:
            yield from _stored(t)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        yield from _stored(stmt.target)
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            if item.optional_vars is not None:
                yield from _stored(item.optional_vars)
    elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield stmt.name
    elif isinstance(stmt, ast.Expr):
        for n in ast.walk(stmt):  # walrus targets
            if isinstance(n, ast.NamedExpr):
                yield n.target.id


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The nested blocks of a control-flow statement run at the cell's level."""
    if isinstance(stmt, (ast.For, ast.AsyncFor, ast.If, ast.While)):
        return [stmt.body, stmt.orelse]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [stmt.body]
    if isinstance(stmt, ast.Try):
        return [stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody]
    return []


def names_imported(cell: str) -> set[str]:
    """Names bound by import statements anywhere in the cell (not results)."""
    out = set()
    for node in ast.walk(_parse(cell)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out.add((alias.asname or alias.name).split(".")[0])
    return out

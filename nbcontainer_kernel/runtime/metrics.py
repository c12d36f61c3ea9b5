"""`log_metric`: metrics a cell records, printed as lines a SageMaker MetricDefinition
regex can match and kept for metrics.json.

A metric line looks like ``[nbcontainer-metric] loss=0.25 step=3``; the regex
for a metric NAME is :func:`metric_regex` (``\\[nbcontainer-metric\\] NAME=(\\S+)``).
"""

from __future__ import annotations

import ast
import math
import re
import sys
import time
from typing import Any

__all__ = [
    "log_metric",
    "metric_names_in",
    "metric_regex",
    "recorded",
    "summary",
    "parse_metric_lines",
    "reset",
]

PREFIX = "[nbcontainer-metric]"
_LINE = re.compile(
    r"^\[nbcontainer-metric\] (?P<name>[^=\s]+)=(?P<value>\S+)(?: step=(?P<step>-?\d+))?\s*$"
)
_LITERAL_CALL = re.compile(r"log_metric\(\s*['\"]([A-Za-z0-9_.:/-]+)['\"]")
_records: list[dict[str, Any]] = []


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record a metric of this run (e.g. ``log_metric("loss", 0.25, step=3)``)."""
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
        raise ValueError(f"metric names may hold letters, digits and _.:/- only, not {name!r}")
    v = float(value)
    _records.append({"name": name, "value": v, "step": step, "timestamp": time.time()})
    step_part = f" step={int(step)}" if step is not None else ""
    print(f"{PREFIX} {name}={v!r}{step_part}", file=sys.stdout, flush=True)


def metric_regex(name: str) -> str:
    return rf"\[nbcontainer-metric\] {re.escape(name)}=(\S+)"


def metric_names_in(cell: str) -> list[str]:
    """The metric names a cell logs with a literal name (``log_metric("loss", ...)``), in
    order: each gets a MetricDefinition, so SageMaker's console and CloudWatch show it."""
    try:
        tree = ast.parse(cell)
    except SyntaxError:  # IPython syntax (magics, !cmd): a plain look at the text
        return list(dict.fromkeys(_LITERAL_CALL.findall(cell)))
    found = sorted(
        (node.lineno, node.col_offset, node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "log_metric"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and re.fullmatch(r"[A-Za-z0-9_.:/-]+", node.args[0].value)
    )
    return list(dict.fromkeys(name for _, _, name in found))


def parse_metric_lines(text: str) -> list[dict[str, Any]]:
    """Metric records from printed output (used where the cell ran in another process)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            try:
                v = float(m.group("value"))
            except ValueError:
                continue
            out.append(
                {
                    "name": m.group("name"),
                    "value": v,
                    "step": int(m.group("step")) if m.group("step") else None,
                    "timestamp": None,
                }
            )
    return out


def recorded() -> list[dict[str, Any]]:
    return list(_records)


def reset() -> None:
    _records.clear()


def summary(records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """{"last": {name: value}, "history": [...]} as written to metrics.json."""
    records = _records if records is None else records
    last = {}
    for r in records:
        last[r["name"]] = (
            None if isinstance(r["value"], float) and math.isnan(r["value"]) else r["value"]
        )
    return {"last": last, "history": list(records)}

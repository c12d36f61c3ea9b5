"""The ledger as tables for comparing runs in the next cell: one flat row per run
(:func:`runs_frame`), every logged metric value (:func:`metrics_frame`), runs side by side
(:func:`compare_frame`) and a metric plotted across runs (:func:`plot_metric`).

The frames are plain pandas DataFrames for code; :class:`RunsTable` only changes how a
notebook shows one (status coloured).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..runtime.errors import UntrustedResults
from .ledger import Ledger

__all__ = ["RunsTable", "compare_frame", "metrics_frame", "plot_metric", "runs_frame", "summarise"]

_STATUS_COLOURS = {
    "SUCCEEDED": "#1a7f37",
    "FAILED": "#cf222e",
    "CANCELLED": "#9a6700",
}


class RunsTable(pd.DataFrame):  # type: ignore[misc]  # pandas without its stubs
    """A runs frame that a notebook shows with its status coloured (in every other way a
    DataFrame: slicing it gives plain DataFrames)."""

    @property
    def _constructor(self) -> Any:  # type[pd.DataFrame]
        return pd.DataFrame

    def _repr_html_(self) -> str | None:
        # No Styler: it needs jinja2, which a kernel image may not hold. Every cell is
        # escaped here, so nothing a run recorded (a parameter's text) is taken as HTML.
        plain = pd.DataFrame(self)
        formatters = {col: _html_cell for col in plain.columns}
        if "status" in plain.columns:
            formatters["status"] = _status_cell
        return str(plain.to_html(escape=False, formatters=formatters, max_rows=200))


def _html_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _status_cell(value: Any) -> str:
    hue = _STATUS_COLOURS.get(str(value), "#0969da")
    return f"<span style='color: {hue}; font-weight: bold'>{html.escape(str(value))}</span>"


def _cell(value: Any) -> Any:
    """A recorded value as a table cell: lists and dicts as their JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else _round(value, 6)


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def _rows(
    ledger: Ledger,
    name: str | None,
    status: str | None,
    backend: str | None,
    sweep: str | None,
) -> list[dict[str, Any]]:
    rows = ledger.find(name=name, status=status, parent=sweep)
    if backend is not None:
        rows = [r for r in rows if r["backend"] == backend]
    return rows


def runs_frame(
    ledger: Ledger | None = None,
    *,
    name: str | None = None,
    status: str | None = None,
    backend: str | None = None,
    last: int | None = None,
    sweep: str | None = None,
    kind: str | None = None,
) -> RunsTable:
    """One flat row per run, oldest first: id, name, backend, status, created (local time),
    duration (s), ``param.NAME`` (each parameter with its own type), ``metric.NAME`` (last
    value), ``recorded.NAME`` (what a notebook recorded), ``time.PHASE`` (s), exit code,
    image (short), and what the platform billed where it says (instance type, billable
    seconds, spot savings). Filters: run name, status, backend, the `last` K runs, the
    children of sweep `sweep`, the `kind` of run (cell or notebook)."""
    ledger = ledger or Ledger()
    rows = _rows(ledger, name, status, backend, sweep)
    if kind is not None:
        rows = [r for r in rows if r.get("kind", "cell") == kind]
    if last is not None:
        rows = rows[-last:] if last > 0 else []
    records = []
    for r in rows:
        phases = r.get("phases") or []
        record: dict[str, Any] = {
            "id": r["id"],
            "name": r["name"],
            "kind": r.get("kind", "cell"),
            "backend": r["backend"],
            "status": r["status"],
            "created": pd.Timestamp(r["created"], unit="s", tz="UTC").tz_convert(_local_tz()),
            "duration": round(phases[-1][1] - phases[0][1], 2) if len(phases) > 1 else None,
        }
        params = dict(r.get("params") or {})
        swept = _swept(ledger, r)
        if swept:
            # A sweep's parent: its swept parameters are its children's, one each; the
            # parent says what was swept in a column of its own, so that every param.*
            # column holds one kind of value and can be filtered, sorted and grouped.
            record["sweep"] = " ".join(f"{k}={','.join(map(_plain, params.pop(k)))}" for k in swept)
            record["children"] = swept[next(iter(swept))]
        record.update({f"param.{k}": v for k, v in params.items()})
        record.update({f"metric.{k}": _round(v, 6) for k, v in (r.get("metrics") or {}).items()})
        record.update({f"recorded.{k}": _cell(v) for k, v in (r.get("recorded") or {}).items()})
        record.update({f"time.{k}": round(v, 2) for k, v in Ledger.timings(r).items()})
        platform = r.get("platform") or {}
        for key in ("instance_type", "billable_seconds", "spot_savings"):
            if platform.get(key) is not None:
                record[key] = platform[key]
        record["exit_code"] = r["exit_code"]
        record["image"] = _short_image(r.get("image"))
        if r.get("parent"):
            record["parent"] = r["parent"]
        records.append(record)
    fixed = ["id", "name", "kind", "backend", "status", "created", "duration"]
    frame = pd.DataFrame.from_records(records, columns=_columns(records, fixed))
    for column in ("exit_code", "children"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return RunsTable(frame)


def _swept(ledger: Ledger, row: dict[str, Any]) -> dict[str, int]:
    """A sweep parent's swept parameters (each with its number of children): those whose
    value on the parent is the list of its children's values (a parameter whose value is a
    list in every child is not swept)."""
    params = row.get("params") or {}
    lists = [k for k, v in params.items() if isinstance(v, list)]
    if not lists or row.get("parent"):
        return {}
    children = ledger.find(parent=row["id"])
    if not children:
        return {}
    return {
        k: len(children)
        for k in lists
        if any((c.get("params") or {}).get(k) != params[k] for c in children)
    }


def _plain(value: Any) -> str:
    return str(value)


def _columns(records: list[dict[str, Any]], fixed: list[str]) -> list[str]:
    """The fixed columns, then params, metrics, times, the rest; each group in first-seen
    order (an empty ledger still gives the fixed columns)."""
    seen: dict[str, None] = dict.fromkeys(fixed)
    for rec in records:
        seen.update(dict.fromkeys(rec))
    order = ("sweep", "children", "param.", "metric.", "time.")
    grouped = [c for c in seen if c in fixed]
    for prefix in order:
        grouped += [c for c in seen if c.startswith(prefix) and c not in grouped]
    grouped += [c for c in seen if c not in grouped]
    return grouped


def _local_tz() -> Any:
    import datetime

    return datetime.datetime.now().astimezone().tzinfo


def _short_image(image: str | None) -> str | None:
    """A run image as a reader tells them apart: the tag, or the digest's first 12."""
    if not image:
        return None
    if "@sha256:" in image:
        repo, _, digest = image.partition("@sha256:")
        return f"{repo.rsplit('/', 1)[-1]}@{digest[:12]}"
    return image.rsplit("/", 1)[-1]


def metrics_frame(run_ids: Iterable[str] | str, ledger: Ledger | None = None) -> pd.DataFrame:
    """Every metric value the runs logged, long-form: run, name, step, value, time (local)."""
    ledger = ledger or Ledger()
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    points = ledger.metric_points(ids)
    frame = pd.DataFrame(points, columns=["run", "name", "step", "value", "time"])
    frame["step"] = frame["step"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True).dt.tz_convert(_local_tz())
    order = {rid: i for i, rid in enumerate(ids)}
    return frame.sort_values("run", key=lambda s: s.map(order), kind="stable").reset_index(
        drop=True
    )


def summarise(value: Any, first: Any = None, stored: int | None = None) -> Any:
    """A result as one cell of a comparison: scalars as they are; a DataFrame as its shape,
    columns added/removed against `first`, and numeric columns' mean/min/max (with the
    difference to `first`'s); anything else by type and size (its shape or length, else
    the `stored` bytes of its result files)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return _round(value, 6) if isinstance(value, float) else value
    if isinstance(value, pd.Series):
        value = value.to_frame()
    if isinstance(value, pd.DataFrame):
        parts = [f"{value.shape[0]} rows × {value.shape[1]} columns"]
        if isinstance(first, pd.Series):
            first = first.to_frame()
        base = first if isinstance(first, pd.DataFrame) and first is not value else None
        if base is not None:
            added = [str(c) for c in value.columns if c not in base.columns]
            removed = [str(c) for c in base.columns if c not in value.columns]
            if added:
                parts.append("added: " + ", ".join(added))
            if removed:
                parts.append("removed: " + ", ".join(removed))
        for col in value.select_dtypes("number").columns[:8]:
            stats = value[col].agg(["mean", "min", "max"])
            text = (
                f"{col}: mean {stats['mean']:.4g}, min {stats['min']:.4g}, max {stats['max']:.4g}"
            )
            if (
                base is not None
                and col in base.columns
                and pd.api.types.is_numeric_dtype(base[col])
            ):
                text += f" (mean {stats['mean'] - base[col].mean():+.4g})"
            parts.append(text)
        return "; ".join(parts)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    if hasattr(value, "__len__"):
        return f"{type(value).__name__} of {len(value)}"
    if hasattr(value, "get_size_inches"):  # a matplotlib figure
        width, height = value.get_size_inches()
        return f"{type(value).__name__} {width:g}×{height:g} in"
    if stored is not None:
        return f"{type(value).__name__}, {_bytes(stored)} stored"
    return type(value).__name__


def _bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def compare_frame(
    run_ids: list[str], ledger: Ledger | None = None, trust: str = "signed"
) -> pd.DataFrame:
    """Runs side by side, one column per run: the parameters that differ first, then those
    that do not, then each metric with its difference to the first run (``metric.NAME Δ``),
    then what each recorded (``recorded.NAME``, a number with its ``Δ``), then status,
    kind, backend and times, then results summarised (:func:`summarise`). Results are
    read under `trust`; a run whose outputs are refused says why."""
    from .results import RunResult, load_results

    ledger = ledger or Ledger()
    rows = [ledger.get(rid) for rid in run_ids]
    params = _union(r.get("params") or {} for r in rows)
    differing = [p for p in params if len({repr(r["params"].get(p)) for r in rows}) > 1]
    same = [p for p in params if p not in differing]
    table: dict[str, dict[str, Any]] = {r["id"]: {} for r in rows}
    first_metrics = rows[0].get("metrics") or {}
    metric_names = _union(r.get("metrics") or {} for r in rows)
    first_recorded = rows[0].get("recorded") or {}
    recorded_names = _union(r.get("recorded") or {} for r in rows)
    results: dict[str, dict[str, Any]] = {}
    stored: dict[str, dict[str, int]] = {}  # run -> result name -> bytes of its files
    for r in rows:
        result = RunResult(
            image=r["image"] or "",
            exit_code=r["exit_code"],
            output_dir=Path(r["result_dir"] or ""),
            key=r.get("run_key"),
            trust=trust,
        )
        try:
            if result.model_dir.is_dir():
                result.outputs.verify_all()  # every file, not only those a summary reads
                results[r["id"]] = load_results(result.outputs)
                stored[r["id"]] = {
                    name: sum((result.model_dir / f).stat().st_size for f in entry.get("files", []))
                    for name, entry in (result.index.get("variables") or {}).items()
                }
            else:
                results[r["id"]] = {}
        except UntrustedResults as exc:
            results[r["id"]] = {"": f"refused: {exc.file}: {exc.reason}"}
    result_names = _union(results.values())
    first_results = results[rows[0]["id"]]
    for r in rows:
        col = table[r["id"]]
        for p in differing + same:
            col[f"param.{p}"] = (r.get("params") or {}).get(p)
        for m in metric_names:
            value = (r.get("metrics") or {}).get(m)
            col[f"metric.{m}"] = _round(value, 6)
            base = first_metrics.get(m)
            col[f"metric.{m} Δ"] = (
                _round(value - base, 6)
                if isinstance(value, (int, float)) and isinstance(base, (int, float))
                else None
            )
        for name in recorded_names:
            value = (r.get("recorded") or {}).get(name)
            col[f"recorded.{name}"] = _cell(value)
            base = first_recorded.get(name)
            difference = _difference(value, base)
            if difference is not None:
                col[f"recorded.{name} Δ"] = _round(difference, 6)
        col["status"] = r["status"]
        col["kind"] = r.get("kind", "cell")
        col["backend"] = r["backend"]
        col.update({f"time.{k}": round(v, 2) for k, v in Ledger.timings(r).items()})
        for name in result_names:
            key = f"result.{name}" if name else "result"
            got = results[r["id"]]
            col[key] = (
                summarise(got[name], first_results.get(name), stored.get(r["id"], {}).get(name))
                if name in got
                else None
            )
    index = list(dict.fromkeys(k for col in table.values() for k in col))
    return pd.DataFrame(table, index=index, dtype=object)


def _difference(value: Any, base: Any) -> float | None:
    """value - base for two numbers (not booleans), else None."""
    if isinstance(value, bool) or isinstance(base, bool):
        return None
    if isinstance(value, (int, float)) and isinstance(base, (int, float)):
        return float(value - base)
    return None


def _union(dicts: Iterable[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for d in dicts:
        names.update(dict.fromkeys(d))
    return list(names)


def plot_metric(
    run_ids: list[str], metric: str, ledger: Ledger | None = None, swept: str | None = None
) -> Any:
    """A matplotlib figure of `metric`: with steps, one line per run over the steps; for a
    sweep (`swept` names the parameter), the metric against the swept parameter; else one
    bar per run."""
    import matplotlib

    if not matplotlib.get_backend().startswith(("module://", "inline")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ledger = ledger or Ledger()
    points = metrics_frame(run_ids, ledger)
    points = points[points["name"] == metric]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if points["step"].notna().any():
        for rid, group in points.groupby("run", sort=False):
            ax.plot(group["step"].astype(float), group["value"], marker="o", label=str(rid))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    elif swept is not None:
        rows = [ledger.get(rid) for rid in run_ids]
        pairs = sorted(
            (r["params"].get(swept), float(m[metric]))
            for r in rows
            if isinstance((m := r.get("metrics") or {}).get(metric), (int, float))
        )
        ax.plot([p for p, _ in pairs], [v for _, v in pairs], marker="o")
        ax.set_xlabel(swept)
    else:
        rows = [ledger.get(rid) for rid in run_ids]
        bars = [
            (str(r["id"]), float(m[metric]))
            for r in rows
            if isinstance((m := r.get("metrics") or {}).get(metric), (int, float))
        ]
        ax.bar([rid for rid, _ in bars], [v for _, v in bars])
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across {len(run_ids)} runs")
    fig.tight_layout()
    plt.close(fig)  # shown by the caller (display), not by pyplot's state
    return fig

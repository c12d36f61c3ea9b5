"""The runs API's model: what the handlers serve, read from the ledger and a run's
verified outputs. No HTTP here (the handlers parse and answer; this decides).

A page of runs is filtered and cut in SQL (Ledger.page), never by reading the whole
ledger. A run's signing key never leaves the ledger; its outputs (executed notebooks,
values) are read only through RunOutputs, which checks each file against the signed
manifest, and pickles are never loaded here (a kernel loads them).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import Phase
from ..remote.ledger import KINDS, Ledger
from ..runtime.errors import InvalidOption, NbcontainerError, UntrustedResults

__all__ = [
    "RunQuery",
    "list_runs",
    "run_detail",
    "run_result",
    "executed_notebooks",
    "notebook_bytes",
    "NoOutput",
    "MAX_LIMIT",
]

#: Rows a page holds at most (the page asks for 50).
MAX_LIMIT = 500
#: Rows of a DataFrame value sent in a result; more are counted, not sent.
MAX_FRAME_ROWS = 1000
#: Query arguments the server itself reads (authentication), not filters.
_AUTH_ARGS = ("token", "_xsrf")
_FILTERS = ("name", "status", "backend", "kind", "parent", "schedule")
_STATUSES = tuple(p.value for p in Phase)


class NoOutput(NbcontainerError):
    """The run has not (or not yet) left what was asked for (404)."""


@dataclass(frozen=True)
class RunQuery:
    """A page of runs as asked: filters by column, search text, since, a cursor."""

    filters: Mapping[str, str]
    top_only: bool = False
    since: float | None = None
    search: str | None = None
    after: tuple[float, str] | None = None
    limit: int = 50

    @classmethod
    def parse(cls, args: Mapping[str, list[str]]) -> RunQuery:
        """From a request's query arguments (each given once); InvalidOption names the
        argument that does not fit. ``parent=none`` means runs that are no sweep's child."""
        one: dict[str, str] = {}
        for key, values in args.items():
            if key in _AUTH_ARGS or (key.isdigit() and values == [""]):
                continue  # the server's, and JupyterLab's cache buster (`&1796447949787`)
            if key not in (*_FILTERS, "since", "q", "cursor", "limit"):
                known = ", ".join((*_FILTERS, "since", "q", "cursor", "limit"))
                raise InvalidOption(key, values, f"not a filter of runs (they are {known})")
            if len(values) != 1:
                raise InvalidOption(key, values, "give it once")
            one[key] = values[0]
        filters = {k: one[k] for k in _FILTERS if k in one and k != "parent"}
        if "status" in filters and filters["status"].upper() not in _STATUSES:
            raise InvalidOption("status", filters["status"], f"one of {', '.join(_STATUSES)}")
        if "kind" in filters and filters["kind"] not in KINDS:
            raise InvalidOption("kind", filters["kind"], f"one of {', '.join(KINDS)}")
        top_only = one.get("parent") == "none"
        if "parent" in one and not top_only:
            filters["parent"] = one["parent"]
        return cls(
            filters=filters,
            top_only=top_only,
            since=parse_since(one["since"]) if "since" in one else None,
            search=one.get("q") or None,
            after=decode_cursor(one["cursor"]) if "cursor" in one else None,
            limit=_limit(one.get("limit")),
        )


def _limit(text: str | None) -> int:
    if text is None:
        return 50
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidOption("limit", text, f"a whole number from 1 to {MAX_LIMIT}")
    return value


def parse_since(text: str) -> float:
    """Seconds since the epoch, or an ISO 8601 date or time (UTC unless it says)."""
    with contextlib.suppress(ValueError):  # not a number: an ISO time, or neither
        if math.isfinite(value := float(text)):
            return value
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidOption(
            "since", text, "seconds since the epoch, or an ISO 8601 time (2026-12-01T09:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def encode_cursor(row: Mapping[str, Any]) -> str:
    raw = json.dumps([row["created"], row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        created, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, TypeError):  # not base64, not JSON, not a pair
        created = run_id = None
    if not isinstance(created, (int, float)) or not isinstance(run_id, str):
        raise InvalidOption("cursor", text, "not a cursor this API gave (use a page's 'next')")
    return float(created), run_id


# ------------------------------------------------------------------ rows
def summary(row: Mapping[str, Any], children: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A run as a row of the runs table (the columns of %remote_runs)."""
    failure = row.get("failure") or ""
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row.get("kind") or "cell",
        "backend": row["backend"],
        "status": row["status"],
        "params": row.get("params") or {},
        "metrics": row.get("metrics") or {},
        "recorded": row.get("recorded") or {},
        "created": row["created"],
        "updated": row["updated"],
        "duration": Ledger.duration(row),
        "parent": row.get("parent"),
        "schedule": row.get("schedule"),
        "notebook": Path(row["notebook"]).name if row.get("notebook") else None,
        "failure": failure.splitlines()[0] if failure else None,
        "children": dict(children) if children else None,
    }


def list_runs(ledger: Ledger, query: RunQuery) -> dict[str, Any]:
    """A page of runs, newest first, with the cursor of the next page (None at the end)
    and, for each sweep on it, its children counted by status."""
    rows = ledger.page(
        filters=dict(query.filters),
        top_only=query.top_only,
        since=query.since,
        search=query.search,
        after=query.after,
        limit=query.limit + 1,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    counts = ledger.child_counts(r["id"] for r in rows)
    return {
        "runs": [summary(r, counts.get(r["id"])) for r in rows],
        "next": encode_cursor(rows[-1]) if more else None,
    }


def run_detail(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """A run's record: what the table shows, and its phases with their timings, metrics
    over steps, platform figures, verdict, image and outputs. Never its signing key."""
    row = ledger.get(run_id)
    counts = ledger.child_counts([run_id]).get(run_id)
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, name, step, value, at in ledger.metric_points([run_id]):
        history[name].append({"step": step, "value": value, "time": at})
    files = _output_files(row)
    doc = summary(row, counts)
    doc.update(
        {
            "phases": [{"phase": p, "at": t} for p, t in row.get("phases") or []],
            "timings": Ledger.timings(row),
            "metric_history": dict(history),
            "platform": row.get("platform") or {},
            "verdict": row.get("verdict"),
            "verified": row.get("verified"),
            "image": row.get("image"),
            "exit_code": row.get("exit_code"),
            "failure": row.get("failure"),
            "timed_out": bool(row.get("timed_out")),
            "job": _public_job(row.get("job")),
            "outputs": files,
            "notebooks": [n for n, _ in executed_notebooks(files)],
        }
    )
    return doc


def _public_job(job: Any) -> dict[str, Any]:
    """The job's platform ids (container, Batch job, training job), never a credential."""
    if not isinstance(job, dict):
        return {}
    return {k: v for k, v in job.items() if isinstance(v, (str, int, float)) and "key" not in k}


def _outputs(row: Mapping[str, Any]) -> Any:
    from ..runtime.trust import RunOutputs

    if not row.get("result_dir"):
        raise NoOutput(f"run {row['id']} has no outputs yet ({row['status']})")
    return RunOutputs(Path(row["result_dir"]), row.get("run_key"), "signed")


def _output_files(row: Mapping[str, Any]) -> list[str]:
    """The files of a run's signed manifest (none for a run whose outputs were refused)."""
    if row.get("verdict") != "signed":
        return []
    try:
        return sorted((_outputs(row).manifest().get("files") or {}).keys())
    except (UntrustedResults, NoOutput, OSError):
        return []


def executed_notebooks(files: list[str]) -> list[tuple[str, str]]:
    """(name, path in the outputs) of each executed notebook among a run's signed output
    files (a pipeline's in order)."""
    return [
        (f.rsplit("/", 1)[-1], f)
        for f in files
        if f.startswith("output/data/") and f.endswith(".ipynb")
    ]


def notebook_bytes(ledger: Ledger, run_id: str, name: str | None = None) -> tuple[str, bytes]:
    """An executed notebook's bytes, each checked against the run's signed manifest.
    NoOutput when the run left none (yet), or when its outputs were refused."""
    row = ledger.get(run_id)
    if row.get("verdict") not in (None, "signed"):
        raise NoOutput(
            f"run {run_id}'s outputs were refused ({row.get('verified')}): nothing it wrote "
            "is shown"
        )
    found = executed_notebooks(_output_files(row))
    if not found:
        children = ledger.child_counts([run_id]).get(run_id)
        where = "each of its children has one" if children else f"it is {row['status']}"
        raise NoOutput(f"run {run_id} has no executed notebook ({where})")
    chosen = [f for f in found if name in (None, f[0])]
    if not chosen:
        raise NoOutput(f"run {run_id} has no notebook {name!r} ({', '.join(n for n, _ in found)})")
    file_name, rel = chosen[-1] if name is None else chosen[0]
    return file_name, _outputs(row).read_bytes(rel)


# ---------------------------------------------------------------- results
def run_result(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """What a run recorded and the data values it returned (DataFrames as records with
    a Table Schema); pickled values are named, never unpickled here. A sweep: a row per
    child (id, status, parameters, recorded)."""
    row = ledger.get(run_id)
    children = ledger.find(parent=run_id)
    doc: dict[str, Any] = {
        "id": run_id,
        "status": row["status"],
        "verdict": row.get("verdict"),
        "recorded": row.get("recorded") or {},
        "metrics": row.get("metrics") or {},
        "values": {},
    }
    if children:
        doc["children"] = [
            {
                "id": c["id"],
                "status": c["status"],
                "params": c["params"],
                "recorded": c.get("recorded") or {},
                "metrics": c.get("metrics") or {},
            }
            for c in children
        ]
    if row.get("verdict") == "signed":
        doc["values"] = _values(_outputs(row))
    return doc


def _values(outputs: Any) -> dict[str, Any]:
    from ..runtime.serialize import DATA_SERIALIZERS, deserialize

    out: dict[str, Any] = {}
    source = outputs.source("model")
    for name, entry in (outputs.manifest().get("variables") or {}).items():
        kind = {"type": entry.get("type"), "serializer": entry.get("serializer")}
        if entry.get("serializer") not in DATA_SERIALIZERS:
            out[name] = {**kind, "loaded": False, "reason": "a pickled value: load it in a kernel"}
            continue
        value = deserialize(entry, source, allow_pickle=False)
        out[name] = {**kind, "loaded": True, **_json_value(value)}
    return out


def _json_value(value: Any) -> dict[str, Any]:
    """A data value as JSON: a DataFrame or Series as Table Schema records (cut to
    MAX_FRAME_ROWS), anything else as itself when JSON holds it, else its text."""
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.to_frame()
    if isinstance(value, pd.DataFrame):
        table = json.loads(value.head(MAX_FRAME_ROWS).to_json(orient="table", date_unit="ms"))
        return {
            "schema": table["schema"],
            "data": table["data"],
            "rows": len(value),
            "truncated": len(value) > MAX_FRAME_ROWS,
        }
    try:
        return {"value": json.loads(json.dumps(value, allow_nan=False))}
    except (TypeError, ValueError):
        return {"text": repr(value)[:10_000]}

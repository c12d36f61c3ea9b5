"""`record(name, value)`: values a notebook keeps for comparison across runs.

``nbcontainer_kernel.record("mae", 0.12)`` in a notebook cell shows the value and
leaves it in the cell's outputs under its own MIME type, so the executed notebook
carries it; after the run the runner reads every recorded value out of the
executed notebook (:func:`recorded_in`), scrapbook's ``glue`` scraps included,
and writes them to ``model/recorded.json``, signed with the run's other outputs.
A sweep's values come back as one table: a row per child, its parameters and
what it recorded.

Outside IPython (a script run as a job) the value is printed as a line the runner
reads back the same way. Values are JSON (numbers, strings, booleans, None, lists
and dicts of them): they land in the run's ledger row and in a DataFrame.

Runs inside run images: standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RECORD_MIME", "SCRAP_MIME", "RECORD_PREFIX", "record", "recorded_in", "check_name"]

RECORD_MIME = "application/vnd.nbcontainer.record+json"
#: scrapbook's `glue` keeps a scrap under this MIME type: {"name", "data", "encoder", ...}
SCRAP_MIME = "application/scrapbook.scrap.json+json"
RECORD_PREFIX = "[nbcontainer-record] "
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


def check_name(name: object) -> str:
    """A recorded value's name: it becomes a DataFrame column and a ledger key."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"a recorded value's name is a letter or '_' then up to 127 letters, digits or "
            f"_.:-, not {name!r}"
        )
    return name


def _json_value(name: str, value: Any) -> Any:
    """`value` as JSON holds it (numpy scalars become numbers), or a TypeError that says
    what can be recorded."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        value = item()  # a numpy scalar: its Python number
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"record({name!r}, ...) takes JSON values (numbers, strings, booleans, None, lists "
            f"and dicts of them), not {type(value).__name__}: {exc}"
        ) from None
    return json.loads(text)


def record(name: str, value: Any) -> Any:
    """Keep `value` under `name` for this run (the last value of a name wins); returns it."""
    check_name(name)
    value = _json_value(name, value)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        from IPython.display import display

        shown = f"{name} = {value!r}"
        display({RECORD_MIME: {name: value}, "text/plain": shown}, raw=True)
    else:
        print(RECORD_PREFIX + json.dumps({name: value}), flush=True)
    return value


def _from_scrap(scrap: Mapping[str, Any]) -> tuple[str, Any] | None:
    """A scrapbook scrap's (name, value), for the encoders whose data is the value itself."""
    name, encoder = scrap.get("name"), scrap.get("encoder")
    if not isinstance(name, str) or encoder not in ("json", "text"):
        return None  # a pandas/arrow/display scrap: not a value a table cell holds
    return name, scrap.get("data")


def _from_output(output: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    data = output.get("data") or {}
    if isinstance(data.get(RECORD_MIME), dict):
        yield from data[RECORD_MIME].items()
    if isinstance(data.get(SCRAP_MIME), dict):
        got = _from_scrap(data[SCRAP_MIME])
        if got:
            yield got
    if output.get("output_type") == "stream":
        text = output.get("text", "")
        for line in (text if isinstance(text, str) else "".join(text)).splitlines():
            if line.startswith(RECORD_PREFIX):
                try:
                    doc = json.loads(line[len(RECORD_PREFIX) :])
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    yield from doc.items()


def recorded_in(cells: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Every value the executed notebook's cells recorded, in order (a later value of a
    name replaces an earlier one). Names that are not valid are left out."""
    found: dict[str, Any] = {}
    for cell in cells:
        for output in cell.get("outputs", []) or []:
            for name, value in _from_output(output):
                try:
                    found[check_name(name)] = value
                except ValueError:
                    continue
    return found

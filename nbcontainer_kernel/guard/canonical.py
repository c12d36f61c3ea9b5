"""Canonical requests: what a kernel sent, read as strictly as the daemon could read it,
and written afresh so that the daemon reads exactly what the guard decided on.

Two readers stand between a kernel and dockerd, the guard's and Go's, and every way
they could differ is a way past the guard. So nothing the guard decides on is forwarded
as the client spelled it:

* A query is parsed into one value per key (a repeated key is refused: Go's
  ``FormValue`` takes the first one, other readers the last) and rebuilt from the
  validated values; a key the endpoint does not know is refused.
* A JSON body is parsed with every object's keys kept in order; a duplicate key is
  refused, and so are two keys Go's ``encoding/json`` would take as one field (it
  matches field names case-insensitively, with Unicode simple folding: ``ſ`` is ``s``,
  the Kelvin sign ``K`` is ``k``). The body is decoded into a model of the fields the
  endpoint knows (:class:`Struct`, at every level), and a fresh body is written from it
  with the canonical spelling of each field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "Bad",
    "Bool",
    "Int",
    "ListOf",
    "MapOf",
    "Opaque",
    "Query",
    "Str",
    "StrSlice",
    "Struct",
    "decode_json",
    "go_fold",
    "parse_query",
]


class Bad(ValueError):
    """A request the guard cannot read unambiguously: HTTP 400, naming where."""


# ------------------------------------------------------------------------- folding
def _fold_char(c: str) -> str:
    # Go folds by Unicode *simple* case folding: one rune to one rune. Upper then lower
    # maps every member of a simple fold orbit to one rune (K, k and the Kelvin sign K
    # to k; S, s and ſ to s); a rune whose mapping is longer than one rune (ß -> SS) has
    # no simple fold of that kind and stays itself. This may join a few more runes than
    # Go does (dotless ı with i), which only makes the duplicate check stricter.
    upper = c.upper()
    if len(upper) != 1:
        return c
    lower = upper.lower()
    return lower if len(lower) == 1 else upper


def go_fold(name: str) -> str:
    """A key as Go's encoding/json compares it with a struct field's name."""
    if name.isascii():
        return name.lower()
    return "".join(_fold_char(c) for c in name)


# ------------------------------------------------------------------------- queries
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_query(raw: str) -> dict[str, str | list[str]]:
    """``key -> value``, or ``key -> [values]`` when a key is repeated (the caller's model
    decides whether that is allowed). A malformed escape is refused, as Go refuses it."""
    out: dict[str, str | list[str]] = {}
    if not raw:
        return out
    for part in raw.split("&"):
        if not part:
            continue
        if ";" in part:
            raise Bad("the query has a ';' (Go refuses it, other readers split on it)")
        if _PERCENT.search(part):
            raise Bad(f"the query has a malformed escape in {part[:60]!r}")
        key, _, value = part.partition("=")
        try:
            key, value = unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise Bad(f"the query has an escape that is not UTF-8 in {part[:60]!r}") from None
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


# Go's httputils.BoolValue: false for these (trimmed, any case), true for anything else.
_GO_FALSE = {"", "0", "no", "false", "none"}


@dataclass(frozen=True)
class QBool:
    def __call__(self, key: str, value: str) -> str:
        return "0" if value.strip().lower() in _GO_FALSE else "1"


@dataclass(frozen=True)
class QInt:
    low: int | None = None

    def __call__(self, key: str, value: str) -> str:
        if not re.fullmatch(r"-?\d{1,19}", value):
            raise Bad(f"query parameter {key} is {value[:40]!r}, not an integer")
        if self.low is not None and int(value) < self.low:
            raise Bad(f"query parameter {key} is {value}, below {self.low}")
        return str(int(value))


@dataclass(frozen=True)
class QStr:
    pattern: str | None = None

    def __call__(self, key: str, value: str) -> str:
        if "\x00" in value:
            raise Bad(f"query parameter {key} has a NUL")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Bad(f"query parameter {key} is {value[:60]!r}, not of the form it takes")
        return value


@dataclass(frozen=True)
class QJson:
    """A parameter holding JSON (filters, labels, buildargs): checked strictly, rewritten."""

    model: Any

    def __call__(self, key: str, value: str) -> str:
        if value.strip() == "":
            return ""
        return json.dumps(decode_json(value.encode(), self.model, key), separators=(",", ":"))


QueryValue = Callable[[str, str], str]


@dataclass(frozen=True)
class Query:
    """What one endpoint's query may hold: one value per key, except `multi` keys, which
    the daemon reads as lists (``t`` of a build, ``changes`` of a commit)."""

    keys: dict[str, QueryValue] = field(default_factory=dict)
    multi: frozenset[str] = frozenset()

    def canonical(self, raw: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        out: dict[str, str | list[str]] = {}
        for key, value in raw.items():
            check = self.keys.get(key)
            if check is None:
                raise Bad(f"query parameter {key[:40]!r} is not one this endpoint takes")
            if isinstance(value, list):
                if key not in self.multi:
                    raise Bad(f"query parameter {key} is repeated")
                out[key] = [check(key, v) for v in value]
            else:
                out[key] = [check(key, value)] if key in self.multi else check(key, value)
        return out


def query_pairs(query: dict[str, str | list[str]]) -> list[tuple[str, str]]:
    """A canonical query as the (key, value) pairs to encode, in a stable order."""
    out: list[tuple[str, str]] = []
    for key in sorted(query):
        value = query[key]
        out += [(key, v) for v in value] if isinstance(value, list) else [(key, value)]
    return out


# ----------------------------------------------------------------------------- JSON
class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, in order, duplicates kept (to refuse)."""


def _no_constant(name: str) -> Any:
    raise Bad(f"the body has {name}, which is not JSON")


def loads_pairs(raw: bytes, where: str = "the body") -> Any:
    """JSON with objects as :class:`_Pairs`; NaN and Infinity refused (Go refuses them)."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Bad(f"{where} is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_Pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, Bad):
            raise
        raise Bad(f"{where} is not JSON ({str(exc)[:80]})") from None


class Model:
    """A JSON shape: ``decode`` checks a parsed value and returns it in canonical form."""

    def decode(self, value: Any, where: str) -> Any:
        raise NotImplementedError


def _type_name(value: Any) -> str:
    if isinstance(value, _Pairs):
        return "an object"
    return {bool: "a boolean", str: "a string", list: "a list", type(None): "null"}.get(
        type(value), "a number"
    )


@dataclass(frozen=True)
class Str(Model):
    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise Bad(f"{where} is {_type_name(value)}, not a string")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise Bad(f"{where} has a lone surrogate")
        return value


@dataclass(frozen=True)
class Int(Model):
    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Bad(f"{where} is {_type_name(value)}, not a number")
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise Bad(f"{where} is {value}, not an integer")
            value = int(value)
        if not -(1 << 63) <= value < (1 << 63):
            raise Bad(f"{where} is out of range")
        return value


@dataclass(frozen=True)
class Num(Model):
    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Bad(f"{where} is {_type_name(value)}, not a number")
        return value


@dataclass(frozen=True)
class Bool(Model):
    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, bool):
            raise Bad(f"{where} is {_type_name(value)}, not a boolean")
        return value


@dataclass(frozen=True)
class ListOf(Model):
    item: Model

    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, _Pairs) or not isinstance(value, list):
            raise Bad(f"{where} is {_type_name(value)}, not a list")
        return [self.item.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class StrSlice(Model):
    """Docker's strslice: a string or a list of strings (Cmd, Entrypoint)."""

    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return Str().decode(value, where)
        return ListOf(Str()).decode(value, where)


@dataclass(frozen=True)
class MapOf(Model):
    """An object whose keys are data (Labels, PortBindings): exact, not folded (Go's maps
    keep keys as written), and a duplicate is refused (Go would keep the last)."""

    value: Model

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, _Pairs):
            raise Bad(f"{where} is {_type_name(value)}, not an object")
        out: dict[str, Any] = {}
        for key, item in value:
            if key in out:
                raise Bad(f"{where} has the key {key[:60]!r} twice")
            Str().decode(key, f"{where} key")
            out[key] = self.value.decode(item, f"{where}[{key!r}]")
        return out


@dataclass(frozen=True)
class Opaque(Model):
    """Any JSON the guard passes on without reading it (still strict: no duplicate keys)."""

    def decode(self, value: Any, where: str) -> Any:
        if isinstance(value, _Pairs):
            return MapOf(Opaque()).decode(value, where)
        if isinstance(value, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            return Str().decode(value, where)
        return value


class Struct(Model):
    """A Go struct: keys matched to its fields as Go matches them (exact, else folded);
    two keys matching one field, or a key matching none that is set, are refused.
    ``decode`` returns a dict with each field's canonical name (fields left null or
    absent are left out)."""

    def __init__(self, fields: dict[str, Model], *, name: str = "") -> None:
        self.fields = fields
        self.name = name
        self._folded = {go_fold(k): k for k in fields}

    def decode(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, _Pairs):
            raise Bad(f"{where or 'the body'} is {_type_name(value)}, not an object")
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}  # canonical field -> the key that named it
        for key, item in value:
            canonical = key if key in self.fields else self._folded.get(go_fold(key))
            here = f"{where}.{canonical or key}" if where else (canonical or key)
            if canonical is None:
                if _empty(item):
                    continue
                raise Bad(f"{here[:120]} is not a field the guard knows")
            if canonical in seen:
                raise Bad(
                    f"{here} is given twice ({seen[canonical]!r} and {key!r}): Docker's "
                    "decoder takes keys that differ only in case as one"
                )
            seen[canonical] = key
            if item is None:
                continue
            out[canonical] = self.fields[canonical].decode(item, here)
        return out


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [])


def decode_json(raw: bytes, model: Model, where: str = "") -> Any:
    """`raw` parsed strictly and decoded by `model` (Bad when it cannot be)."""
    return model.decode(loads_pairs(raw, where or "the body"), where)


def dumps(value: Any) -> bytes:
    """A canonical body: compact, ASCII only (no encoding left to disagree on)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()

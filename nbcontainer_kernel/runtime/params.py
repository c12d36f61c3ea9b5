"""Parameters of a run, encoded and decoded in one place.

The host encodes them one way per platform: NBCONTAINER_PARAMS (a JSON object:
:func:`params_env`), SageMaker's hyperparameters (each value its JSON, or one
document in the parameters channel when the set passes SageMaker's limits:
:func:`hyperparameters_for`), and a Batch sweep's table of rows (a JSON list:
:func:`sweep_table`). The runner decodes them here, first found wins: -p
arguments, NBCONTAINER_PARAMS, hyperparameters.json (see training.py for the
channel)."""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PARAMS_ENV",
    "checked",
    "decode",
    "encode",
    "hyperparameters_for",
    "params_env",
    "resolve_params",
    "sweep_table",
]

#: The environment variable a run's parameters travel in (local runs, Batch).
PARAMS_ENV = "NBCONTAINER_PARAMS"
#: SageMaker's limits on hyperparameters (one entry is kept for the channel's digest).
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_KEY = 256
MAX_HYPERPARAMETER_VALUE = 2500


def encode(value: Any) -> str:
    """A value as its JSON (which round-trips types exactly: str(v) would turn '7' into 7);
    what JSON cannot say travels as its str()."""
    return json.dumps(value, default=str)


def params_env(params: Mapping[str, Any]) -> dict[str, str]:
    """The environment that carries `params` ({} for none)."""
    return {PARAMS_ENV: encode(dict(params))} if params else {}


def sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A sweep's rows, one parameter object each (a child picks its row: sweep.py)."""
    return encode([dict(r) for r in rows])


def hyperparameters_for(params: Mapping[str, Any]) -> tuple[dict[str, str], bytes | None]:
    """(HyperParameters, channel bytes): each value as its JSON; a set beyond SageMaker's
    limits goes as one JSON document for the parameters channel, and the hyperparameters
    carry its SHA-256."""
    import hashlib

    from .training import PARAMS_SHA256

    encoded = {str(k): encode(v) for k, v in params.items()}
    fits = len(encoded) <= MAX_HYPERPARAMETERS - 1 and all(
        len(k) <= MAX_HYPERPARAMETER_KEY and len(v) <= MAX_HYPERPARAMETER_VALUE
        for k, v in encoded.items()
    )
    if fits:
        return encoded, None
    document = json.dumps(dict(params), default=str, sort_keys=True).encode()
    return {PARAMS_SHA256: hashlib.sha256(document).hexdigest()}, document


def decode(value: Any) -> Any:
    """A string becomes the JSON value it spells (0.5, true, [1,2]); else stays a string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def checked(params: dict[str, Any], source: str) -> dict[str, Any]:
    # Names become variables (and, in notebook mode, code in the injected cell).
    bad = [
        k
        for k in params
        if not (isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k))
    ]
    if bad:
        raise ValueError(
            f"parameter names from {source} must be Python identifiers, not {bad[0]!r}"
        )
    return params


def resolve_params(
    pairs: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    hyperparameters: Path,
    text_pairs: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, Any], str]:
    """(parameters, where they came from). Names that are not identifiers are refused.

    The environment's (or SageMaker's hyperparameters) come first; arguments override
    them by name: ``-p NAME VALUE`` decoded as JSON where it parses, ``-P NAME VALUE``
    kept as text (what a trigger passes: an S3 key that looks like a number stays text)."""
    base, where = _base_params(env, hyperparameters)
    given = {name: decode(value) for name, value in pairs}
    given.update({name: value for name, value in text_pairs})
    if not given:
        return base, where
    merged = {**base, **checked(given, "arguments")}
    return merged, "arguments" if where == "none" else f"{where} and arguments"


def _base_params(env: Mapping[str, str], hyperparameters: Path) -> tuple[dict[str, Any], str]:
    if env.get(PARAMS_ENV):
        data = json.loads(env[PARAMS_ENV])
        if not isinstance(data, dict):
            raise ValueError(f"{PARAMS_ENV} must be a JSON object")
        return checked(data, PARAMS_ENV), PARAMS_ENV
    if hyperparameters.is_file():
        data = json.loads(hyperparameters.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{hyperparameters} must hold a JSON object")
        from .training import PARAMS_CHANNEL, channel_params

        channel = channel_params(data, hyperparameters.parents[2])
        if channel is not None:
            where = f"the {PARAMS_CHANNEL} channel"
            return checked(channel, where), where
        return checked({k: decode(v) for k, v in data.items()}, str(hyperparameters)), str(
            hyperparameters
        )
    return {}, "none"

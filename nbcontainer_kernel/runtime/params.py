"""Parameters of a run: first found wins among -p arguments, NBCONTAINER_PARAMS
(JSON) and SageMaker's hyperparameters.json (string values, decoded as JSON
where they parse; or, for a parameter set too large for SageMaker's limits, the
parameters channel those hyperparameters point at: see training.py)."""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["checked", "decode", "resolve_params"]


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
    pairs: Sequence[tuple[str, str]], env: Mapping[str, str], hyperparameters: Path
) -> tuple[dict[str, Any], str]:
    """(parameters, where they came from). Names that are not identifiers are refused."""
    if pairs:
        return checked({name: decode(value) for name, value in pairs}, "arguments"), "arguments"
    if env.get("NBCONTAINER_PARAMS"):
        data = json.loads(env["NBCONTAINER_PARAMS"])
        if not isinstance(data, dict):
            raise ValueError("NBCONTAINER_PARAMS must be a JSON object")
        return checked(data, "NBCONTAINER_PARAMS"), "NBCONTAINER_PARAMS"
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

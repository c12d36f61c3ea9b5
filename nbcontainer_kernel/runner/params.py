"""Parameters of a run: first found wins among -p arguments, NBCONTAINER_PARAMS
(JSON) and SageMaker's hyperparameters.json (string values, decoded as JSON
where they parse)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["decode", "resolve_params"]


def decode(value: Any) -> Any:
    """A string becomes the JSON value it spells (0.5, true, [1,2]); else stays a string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def resolve_params(pairs: Sequence[tuple[str, str]], env: Mapping[str, str],
                   hyperparameters: Path) -> tuple[dict[str, Any], str]:
    """(parameters, where they came from)."""
    if pairs:
        return {name: decode(value) for name, value in pairs}, "arguments"
    if env.get("NBCONTAINER_PARAMS"):
        data = json.loads(env["NBCONTAINER_PARAMS"])
        if not isinstance(data, dict):
            raise ValueError("NBCONTAINER_PARAMS must be a JSON object")
        return data, "NBCONTAINER_PARAMS"
    if hyperparameters.is_file():
        data = json.loads(hyperparameters.read_text())
        return {k: decode(v) for k, v in data.items()}, str(hyperparameters)
    return {}, "none"


def env_view() -> dict[str, str]:
    return dict(os.environ)

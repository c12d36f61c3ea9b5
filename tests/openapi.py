"""The runs API's OpenAPI document (docs/openapi.yaml), and a check of an answer against
the schema it documents for that path, method and status."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")


@functools.cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return loaded


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        here: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            here = here[part]
        node = here
    return node


def documented_routes() -> set[tuple[str, str]]:
    """(path, method) of every operation the document names."""
    return {
        (path, method)
        for path, item in spec()["paths"].items()
        for method in item
        if method in METHODS
    }


def route_of(pattern: str, prefix: str = "/nbcontainer/api") -> str:
    """A tornado route as the document writes it: (?P<run_id>...) -> {run_id}."""
    path = pattern.removeprefix(prefix)
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


def check(path: str, method: str, status: int, body: Any, media: str = "application/json") -> None:
    """`body` fits the schema documented for this answer (AssertionError says where)."""
    operation = spec()["paths"][path][method]
    answers = operation["responses"]
    assert str(status) in answers, f"{method.upper()} {path} answered {status}, undocumented"
    answer = _resolve(answers[str(status)])
    schema = answer["content"][media]["schema"]
    # The components ride along, so that "#/components/..." resolves inside the schema.
    root = {**schema, "components": spec()["components"]}
    errors = sorted(
        jsonschema.Draft202012Validator(root).iter_errors(body), key=lambda e: list(e.path)
    )
    assert not errors, f"{method.upper()} {path} {status}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5]
    )

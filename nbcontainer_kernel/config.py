"""Settings, and the environment variables behind them, in one place.

A setting's value, highest precedence first:

1. a flag of the magic or the command (``%%remote_run --memory 4g``);
2. explicit configuration: ``%config RemoteRun.memory = '4g'``, or
   ``c.RemoteRun.memory`` / ``c.DockerProvisioner.memory`` in an IPython or
   Jupyter config file (server-wide defaults for every kernel);
3. its environment variable (``NBCONTAINER_MEMORY``), named in the trait's help;
4. the ``[tool.nbcontainer]`` table of the nearest ``pyproject.toml`` (``memory =
   "4g"``; dashes or underscores), read once per directory and session;
5. the built-in default.

Values from 3 and 4 are validated like any trait value; a bad one is refused
with :class:`InvalidOption` naming where it came from (:class:`EnvDefaults`).
Host side only: nothing in images reads these settings.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any

from traitlets.config import Configurable

from .runtime.errors import InvalidOption

__all__ = [
    "ENVIRONMENT",
    "EnvDefaults",
    "environment_variables",
    "settings_table",
    "trait_default",
    "pyproject_table",
    "in_container_kernel",
    "kernel_id",
    "docker_host",
    "runs_db",
    "base_image",
    "max_context_bytes",
    "max_result_bytes",
]

#: The environment variables the host side reads that are not a setting's (a setting names
#: its own in its trait's metadata, ``env``: :func:`environment_variables` lists them all).
ENVIRONMENT = {
    "NBCONTAINER_RUNS_DB": "the run ledger's SQLite file (RemoteRun.ledger_path overrides it)",
    "NBCONTAINER_BASE_IMAGE": "the base of run images built outside a containerized kernel",
    "NBCONTAINER_MAX_CONTEXT_BYTES": "cap on a build context (default 16 GiB)",
    "NBCONTAINER_MAX_RESULT_BYTES": "cap on the outputs unpacked from one run (default 16 GiB)",
    "DOCKER_HOST": "the Docker daemon (docker-py's own variable)",
}
#: Classes whose settings read the environment (EnvDefaults subclasses, as they are made).
_SETTINGS_CLASSES: list[type[Any]] = []
_GIB = 1024**3


def _env(name: str) -> str | None:
    assert name in ENVIRONMENT, f"undocumented environment variable {name}"
    return _set(name)


def _set(name: str) -> str | None:
    """The variable's value; unset and empty are one."""
    value = os.environ.get(name)
    return value if value not in (None, "") else None


# ------------------------------------------------------------------ pyproject
@functools.lru_cache(maxsize=32)
def _table_of(directory: str) -> tuple[str | None, dict[str, Any]]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: tomli when it is there, else no table
        try:
            import tomli as tomllib
        except ImportError:
            return None, {}
    here = Path(directory)
    for d in (here, *here.parents):
        f = d / "pyproject.toml"
        if f.is_file():
            with open(f, "rb") as fh:
                table = tomllib.load(fh).get("tool", {}).get("nbcontainer", {})
            return str(f), {k.replace("-", "_"): v for k, v in table.items()}
    return None, {}


def pyproject_table(start: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """(the pyproject.toml's path, its [tool.nbcontainer] table with dashes made underscores)."""
    return _table_of(str((start or Path.cwd()).resolve()))


# ---------------------------------------------------------------- trait defaults
def trait_default(obj: Any, name: str) -> Any:
    """The default of trait `name` of `obj`: its environment variable (metadata ``env``),
    else the pyproject table, else the trait's own default; validated either way."""
    from traitlets import TraitError

    trait = obj.traits()[name]
    env_name = trait.metadata.get("env")
    key = trait.metadata.get("setting", name)  # its name in [tool.nbcontainer]
    raw: Any = None
    source = ""
    value = _set(env_name) if env_name else None
    if value is not None:
        source = f"environment variable {env_name}"
        try:
            raw = trait.from_string(value)
        except (TraitError, ValueError) as exc:
            raise InvalidOption(source, value, str(exc).splitlines()[0]) from None
    else:
        path, table = pyproject_table()
        if key in table:
            source, raw = f"{path} [tool.nbcontainer] {key.replace('_', '-')}", table[key]
    if not source:
        return trait.default_value
    try:
        return trait.validate(obj, raw)
    except TraitError as exc:
        raise InvalidOption(source, raw, str(exc).splitlines()[0]) from None


class EnvDefaults(Configurable):
    """A Configurable whose settings (its ``config=True`` traits) default to the
    environment variable named in their metadata (``env``), then to the
    ``[tool.nbcontainer]`` table (under the trait's name, or the ``setting`` its metadata
    names), then to the trait's own default: :func:`trait_default`, for every setting,
    with no ``@default`` method each."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SETTINGS_CLASSES.append(cls)

    def setup_instance(*args: Any, **kwargs: Any) -> None:
        self = args[0]
        super(EnvDefaults, self).setup_instance(*args[1:], **kwargs)
        # traitlets fills plain defaults before any generator runs: take them back out.
        for name in self.trait_names(config=True):
            self._trait_values.pop(name, None)

    def _get_trait_default_generator(self, name: str) -> Any:
        if self.traits()[name].metadata.get("config"):
            return lambda obj: trait_default(obj, name)
        return super()._get_trait_default_generator(name)


def environment_variables() -> dict[str, str]:
    """Every environment variable the host side reads -> what it sets: the settings' own
    (``Class.setting: help``) and the others (:data:`ENVIRONMENT`)."""
    found = dict(ENVIRONMENT)
    for cls in _SETTINGS_CLASSES:
        for name, trait in cls.class_own_traits(config=True).items():
            env = trait.metadata.get("env")
            if env:
                found.setdefault(env, f"{cls.__name__}.{name}: {trait.help.split('(')[0].strip()}")
    return found


def settings_table(classes: list[type[Any]]) -> str:
    """The settings of `classes` as a Markdown table (setting, default, environment
    variable, what it is): the README's list is this, and a test keeps it so."""
    rows = ["| setting | default | environment | what it is |", "| --- | --- | --- | --- |"]
    for cls in classes:
        for name, trait in sorted(cls.class_own_traits(config=True).items()):
            env = trait.metadata.get("env", "")
            what = re.sub(r"[;,]?\s*env [A-Z0-9_]+", "", " ".join(trait.help.split()))
            what = re.sub(r"\s*\(\s*\)", "", what).replace("|", "\\|")
            default = trait.default_value
            shown = "" if default in (None, "") else f"`{default!r}`"
            rows.append(
                f"| `{cls.__name__}.{name}` | {shown} | {f'`{env}`' if env else ''} | {what} |"
            )
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------- host-side settings
def in_container_kernel() -> bool:
    """Whether this process is a kernel the nbcontainer-docker provisioner started."""
    return kernel_id() is not None


def kernel_id() -> str | None:
    return os.environ.get("NBCONTAINER_KERNEL_ID") or None


def docker_host() -> str:
    return _env("DOCKER_HOST") or "unix:///var/run/docker.sock"


def runs_db() -> Path | None:
    value = _env("NBCONTAINER_RUNS_DB")
    return Path(value) if value else None


def base_image() -> str | None:
    return _env("NBCONTAINER_BASE_IMAGE")


def _bytes(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidOption(
            f"environment variable {name}", value, "expected a number of bytes"
        ) from None


def max_context_bytes() -> int:
    """Cap on a build context (NBCONTAINER_MAX_CONTEXT_BYTES, default 16 GiB)."""
    return _bytes("NBCONTAINER_MAX_CONTEXT_BYTES", 16 * _GIB)


def max_result_bytes() -> int:
    """Cap on the outputs unpacked from one run (NBCONTAINER_MAX_RESULT_BYTES, default 16 GiB)."""
    return _bytes("NBCONTAINER_MAX_RESULT_BYTES", 16 * _GIB)

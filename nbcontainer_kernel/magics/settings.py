"""The backends' settings in a shell: ``%config BatchBackend.queue = ...`` and its help.

Each backend is a Configurable (backends.base.Backend); the shell's ``%config``
reaches those it knows, so the extension registers every available backend with
it, configured from the shell's config. Settings that earlier releases read as
``RemoteRun.<name>`` (``RemoteRun.batch_queue``) still work, with a warning
naming where they are now.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from traitlets.config import Config

from ..backends.base import Backend
from ..backends.registry import available, get_backend

__all__ = ["backend_classes", "legacy_names", "register_backends", "translate_legacy"]

log = logging.getLogger(__name__)


def backend_classes() -> list[type[Any]]:
    """The settings classes of the backends this package ships, in the README's order."""
    from ..backends.aws import AWSBackend
    from ..backends.batch import BatchBackend
    from ..backends.local import LocalBackend
    from ..backends.sagemaker import SageMakerBackend

    return [LocalBackend, AWSBackend, BatchBackend, SageMakerBackend]


def legacy_names() -> dict[str, tuple[str, str]]:
    """``RemoteRun.<name>`` of earlier releases -> (the class that has it now, its name)."""
    found: dict[str, tuple[str, str]] = {}
    for cls in backend_classes():
        for name, trait in cls.class_own_traits(config=True).items():
            found[trait.metadata.get("setting", name)] = (cls.__name__, name)
    return found


def translate_legacy(cfg: Config) -> Config:
    """The ``RemoteRun.<name>`` backend settings in `cfg`, as their classes' now (each
    said once, as a DeprecationWarning naming the new name)."""
    out = Config()
    if "RemoteRun" not in cfg:
        return out
    legacy = legacy_names()
    for old, value in cfg["RemoteRun"].items():
        if old in legacy:
            cls, name = legacy[old]
            out[cls][name] = value
            warnings.warn(
                f"RemoteRun.{old} is {cls}.{name} now: set that instead",
                DeprecationWarning,
                stacklevel=2,
            )
    return out


def register_backends(shell: Any) -> list[Backend]:
    """Every available backend, configured from the shell's config and known to its
    ``%config`` (once each). A backend that cannot be loaded is left out (said in the
    log): a run asking for it says why."""
    config = translate_legacy(shell.config)
    config.merge(shell.config)  # the new names win over the old
    found = []
    for name in available():
        try:
            backend = get_backend(name)
        except Exception as exc:
            log.warning("backend %s cannot be loaded: %s: %s", name, type(exc).__name__, exc)
            continue
        if backend not in shell.configurables:
            backend.update_config(config)
            shell.configurables.append(backend)
        found.append(backend)
    return found

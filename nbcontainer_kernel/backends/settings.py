"""The settings classes of the backends this package ships, and the names earlier
releases gave their settings (``RemoteRun.batch_queue``): platform names stay in
backends/."""

from __future__ import annotations

import warnings
from typing import Any

from traitlets.config import Config

__all__ = ["backend_classes", "legacy_names", "translate_legacy"]


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

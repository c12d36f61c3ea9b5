"""The backends' settings in a shell: ``%config BatchBackend.queue = ...`` and its help.

Each backend is a Configurable (backends.base.Backend); the shell's ``%config``
reaches those it knows, so the extension registers every available backend with
it, configured from the shell's config. Settings that earlier releases read as
``RemoteRun.<name>`` (``RemoteRun.batch_queue``) still work, with a warning
naming where they are now.
"""

from __future__ import annotations

import logging
from typing import Any

from ..backends.base import Backend
from ..backends.registry import available, get_backend
from ..backends.settings import translate_legacy

__all__ = ["register_backends"]

log = logging.getLogger(__name__)


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

"""Backends by name: registered explicitly with :func:`register`, or found through the
``nbcontainer_kernel.backends`` entry points (papermill's engines do both).

Entry points are read through :func:`_entry_points`, a tiny wrapper that tests
may replace; a registered backend wins over an entry point of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from ..runtime.errors import UnknownBackend
from .base import Backend

__all__ = ["GROUP", "available", "get_backend", "register", "unregister", "UnknownBackend"]

GROUP = "nbcontainer_kernel.backends"
_registered: dict[str, Callable[[], Backend]] = {}
_instances: dict[str, Backend] = {}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def register(name: str, factory: Callable[[], Backend] | Backend) -> None:
    """Make a backend available by name (a class or factory, or an instance to share).

    Called by code that ships a backend without packaging it, and by tests.
    """
    _instances.pop(name, None)
    if isinstance(factory, Backend):
        instance = factory
        _registered[name] = lambda: instance
    else:
        _registered[name] = factory


def unregister(name: str) -> None:
    _registered.pop(name, None)
    _instances.pop(name, None)


def available() -> list[str]:
    """Names of every backend: registered ones and entry points."""
    return sorted(set(_registered) | set(_entry_points()))


def get_backend(name: str) -> Backend:
    """The backend registered under `name` (one instance per process)."""
    if name not in _instances:
        if name in _registered:
            _instances[name] = _registered[name]()
        else:
            eps = _entry_points()
            if name not in eps:
                raise UnknownBackend(name, available())
            _instances[name] = eps[name].load()()
    return _instances[name]

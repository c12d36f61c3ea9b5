"""Backends by name, through the ``nbcontainer_kernel.backends`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import NbcontainerError
from .base import Backend

__all__ = ["GROUP", "available", "get_backend", "UnknownBackend"]

GROUP = "nbcontainer_kernel.backends"
_instances: dict[str, Backend] = {}


class UnknownBackend(NbcontainerError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"No backend named {name!r}; available: {', '.join(known) or 'none'}.")


def available() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def get_backend(name: str) -> Backend:
    """The backend registered under `name` (one instance per process)."""
    if name not in _instances:
        eps = available()
        if name not in eps:
            raise UnknownBackend(name, sorted(eps))
        cls = eps[name].load()  # type: ignore[attr-defined]
        _instances[name] = cls()
    return _instances[name]

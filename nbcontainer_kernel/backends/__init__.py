"""Where run images run: the Backend seam, its phases, and the backends."""

from .base import Backend, Hooks, Job, Phase, RunDriver, RunSpec
from .registry import UnknownBackend, available, get_backend

__all__ = [
    "Backend",
    "Hooks",
    "Job",
    "Phase",
    "RunDriver",
    "RunSpec",
    "UnknownBackend",
    "available",
    "get_backend",
]

"""Pure capture of a kernel's state: namespace, env, dependencies, sources, notebook."""

from ..runtime.names import names_assigned, names_read
from .capture import MANIFEST, SNAPSHOT_DIR, Snapshot, VariableRecord, snapshot
from .env import filter_env, is_secret

__all__ = [
    "Snapshot",
    "VariableRecord",
    "snapshot",
    "names_read",
    "names_assigned",
    "filter_env",
    "is_secret",
    "SNAPSHOT_DIR",
    "MANIFEST",
]

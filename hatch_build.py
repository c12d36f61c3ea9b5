"""A wheel carries the prebuilt JupyterLab extension: building one without it fails,
saying how to build it (an editable install for development does without)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class LabextensionBuilt(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        built = Path(self.root) / "nbcontainer_kernel" / "labextension" / "package.json"
        if not built.is_file():
            raise RuntimeError(
                "the JupyterLab extension is not built: run scripts/labextension.sh (it needs "
                "Node.js and npm, and JupyterLab in .venv), then build the wheel again"
            )

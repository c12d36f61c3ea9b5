"""The Jupyter server extension: runs over REST (``/nbcontainer/api/``), the runs page
(``/nbcontainer/runs``), and what the JupyterLab sidebar talks to.

Enabled on install (``jupyter server extension list`` shows it); it adds handlers to
the server that already runs the kernels, behind that server's own authentication.
"""

from __future__ import annotations

from typing import Any

__all__ = ["_load_jupyter_server_extension"]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by the Jupyter server once, at start: the routes and their shared state."""
    from .handlers import ServerState, handlers

    web_app = serverapp.web_app
    web_app.settings["nbcontainer"] = ServerState(serverapp.root_dir)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("nbcontainer: runs at %snbcontainer/runs", web_app.settings["base_url"])


# The name older servers look for.
load_jupyter_server_extension = _load_jupyter_server_extension

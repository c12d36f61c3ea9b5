"""Progress listeners: the ipywidgets panel and its plain-text twin."""

from typing import Any

from .text import TextProgress

__all__ = ["TextProgress", "RunPanel"]


def __getattr__(name: str) -> Any:
    if name == "RunPanel":  # ipywidgets only when a panel is asked for
        from .panel import RunPanel

        return RunPanel
    raise AttributeError(name)

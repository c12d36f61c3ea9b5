"""nbcontainer-kernel: Jupyter kernels in Docker containers.

Importing the package stays cheap and needs nothing but the standard
library: the same package is the in-container runtime of kernel images,
where docker-py is not installed.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

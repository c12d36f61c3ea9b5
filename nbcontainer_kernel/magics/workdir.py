"""%nbcontainer_pull: a remote kernel's files, brought to the notebook's machine."""

from __future__ import annotations

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

__all__ = ["WorkdirMagics"]


@magics_class
class WorkdirMagics(Magics):
    """Magics of a kernel on a remote Docker host (kernelspec option docker_host)."""

    @magic_arguments()
    @argument("path", help="A file or folder under the kernel's working directory.")
    @argument("--timeout", type=float, default=600.0, help="Seconds to wait for the copy (600).")
    @line_magic
    def nbcontainer_pull(self, line: str) -> None:
        """%nbcontainer_pull PATH: copy PATH from this remote kernel's working directory to
        the same place in the notebook's directory (overwriting what is there)."""
        from ..kernel.remote_host import request_pull

        args = parse_argstring(self.nbcontainer_pull, line)
        answer = request_pull(args.path, args.timeout)
        print(f"pulled {args.path} ({answer['bytes']:,} bytes) to {answer['to']}")
        if answer.get("skipped"):
            print(f"left out (links are never followed): {', '.join(answer['skipped'])}")

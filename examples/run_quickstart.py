"""The demo: execute examples/quickstart.ipynb with a containerized kernel (nbclient).

Prints where the code ran (container id, image, Python version) and where the
executed notebook was saved.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def _remove_demo_images() -> None:
    """The demo's run image and the kernel commit under it: the demo leaves no images."""
    from nbcontainer_kernel.docker.engine import Engine
    from nbcontainer_kernel.docker.orphans import remove_commits_of_gone_containers
    from nbcontainer_kernel.remote.ledger import Ledger

    engine = Engine.connect()
    for row in Ledger().find(name="quickstart"):
        if row["image"]:
            engine.remove_image(row["image"], force=True)
    remove_commits_of_gone_containers(engine)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="py311-docker", help="kernelspec name")
    p.add_argument("--notebook", default=str(HERE / "quickstart.ipynb"))
    p.add_argument("--output", default=str(HERE / "output" / "quickstart.executed.ipynb"))
    args = p.parse_args()

    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=args.kernel,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(HERE)}},
    )
    print(f"executing {args.notebook} with kernel {args.kernel} ...", flush=True)
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"a cell failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    elapsed = time.perf_counter() - t0
    _remove_demo_images()

    where = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.get("name") == "stdout")
    print("\nwhere the code ran:")
    print(where.rstrip())
    print(
        "\nsum of squares computed in the container: "
        f"{nb.cells[3].outputs[0]['data']['text/plain']}"
    )
    remote = "".join(
        o.get("text", "")
        for o in nb.cells[5].outputs + nb.cells[6].outputs
        if o.get("name") == "stdout"
    )
    print("\n%%remote_run (a run image made from the kernel's state):")
    print("\n".join(f"  {line}" for line in remote.rstrip().splitlines()))
    print(f"executed in {elapsed:.1f} s; executed notebook saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Set up the benchmark's peer: gateway_provisioners' DockerProvisioner.

Builds an image FROM the same base as our kernel image, with ipykernel and
gateway_provisioners installed (wheels resolved on the host, like ours) and
`jupyter-image-bootstrap install` run in it, then installs a kernelspec for it
with `jupyter-docker-spec install`. Remove it with --remove.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from nbcontainer_kernel.docker.archives import build_context
from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.images.kernel import probe_python
from nbcontainer_kernel.images.wheels import pinned, resolve_wheels

DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/gp && /opt/gp/bin/pip install -q --no-index --find-links /tmp/wheels \\
      {reqs} && rm -rf /tmp/wheels \\
 && /opt/gp/bin/jupyter-image-bootstrap install --languages python \\
 && chmod -R a+rX /usr/local/bin /opt/gp && chmod a+x /usr/local/bin/bootstrap-kernel.sh
ENV PATH=/opt/gp/bin:$PATH
CMD ["/usr/local/bin/bootstrap-kernel.sh"]
LABEL io.nbcontainer.role=bench-peer
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    p.add_argument("--tag", default="nbcontainer-bench/gateway-peer:latest")
    p.add_argument("--kernel-name", default="gp-docker-py")
    p.add_argument("--remove", action="store_true", help="remove the peer's kernelspec and image")
    args = p.parse_args()
    engine = Engine.connect()
    bindir = Path(sys.executable).parent
    if args.remove:
        subprocess.run(
            [bindir / "jupyter", "kernelspec", "remove", "-y", args.kernel_name], check=False
        )
        engine.remove_image(args.tag, force=True)
        return 0

    target = probe_python(engine, args.base)
    reqs = pinned(["ipykernel", "gateway_provisioners"])
    with tempfile.TemporaryDirectory() as tmp:
        resolve_wheels(reqs, target, Path(tmp) / "wheels", print)
        dockerfile = DOCKERFILE.format(base=args.base, reqs=" ".join(f"'{r}'" for r in reqs))
        engine.build(
            build_context(dockerfile, {"wheels": Path(tmp) / "wheels"}), args.tag, on_line=print
        )
    subprocess.run(
        [
            bindir / "jupyter-docker-spec",
            "install",
            "--user",
            "--replace",
            f"--image-name={args.tag}",
            f"--kernel-name={args.kernel_name}",
            "--display-name=Python (gateway_provisioners Docker)",
        ],
        check=True,
    )
    print(f"peer kernelspec {args.kernel_name} uses {args.tag}; set KERNEL_USERNAME to run it")
    return 0


if __name__ == "__main__":
    sys.exit(main())

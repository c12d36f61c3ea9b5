"""What nbcontainer's Docker guard costs per request: the same docker-py calls through the
daemon's own socket and through a guard in this process, interleaved, medians.

The guard is told that this process is a granted kernel's container (its identity check
is replaced: this process is not in one), so what is measured is the proxy itself:
parsing, the policy, the extra hop and the body and answer streams.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time

import docker

from nbcontainer_kernel.config import docker_host
from nbcontainer_kernel.guard import DockerGuard, Grant

IMAGE = "nbcontainer/base:bookworm"
KERNEL = "f" * 64


def _archive(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("payload")
        info.size = size
        tar.addfile(info, io.BytesIO(b"\0" * size))
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    socket_path = docker_host().removeprefix("unix://")
    guard = DockerGuard(socket_path, identify=lambda _: KERNEL)
    guard.grant(Grant(kernel_id="bench", container_id=KERNEL))
    clients = {
        "raw": docker.APIClient(base_url=f"unix://{socket_path}", version="1.41"),
        "guarded": docker.APIClient(base_url=f"unix://{guard.path}", version="1.41"),
    }
    archive = _archive(10 << 20)
    made = {k: c.create_container(IMAGE, ["sleep", "600"])["Id"] for k, c in clients.items()}
    for k, c in clients.items():
        c.start(made[k])

    def ping(c: docker.APIClient, cid: str) -> None:
        for _ in range(50):
            c.ping()

    def inspect(c: docker.APIClient, cid: str) -> None:
        for _ in range(50):
            c.inspect_container(cid)

    def put(c: docker.APIClient, cid: str) -> None:
        c.put_archive(cid, "/tmp", archive)

    def get(c: docker.APIClient, cid: str) -> None:
        stream, _ = c.get_archive(cid, "/tmp/payload")
        assert sum(len(chunk) for chunk in stream) > 10 << 20  # the file, in its tar

    def lifecycle(c: docker.APIClient, cid: str) -> None:
        one = c.create_container(IMAGE, ["true"])["Id"]
        c.start(one)
        c.wait(one)
        c.logs(one)
        c.remove_container(one)

    cases = {
        "50 x _ping": ping,
        "50 x inspect": inspect,
        "put_archive 10 MiB": put,
        "get_archive 10 MiB": get,
        "create, start, wait, logs, remove": lifecycle,
    }
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for i in range(args.runs + 1):
            for case, fn in cases.items():
                order = list(clients.items()) if i % 2 else list(clients.items())[::-1]
                for access, c in order:
                    t = time.perf_counter()
                    fn(c, made[access])
                    if i:
                        samples.setdefault((case, access), []).append(time.perf_counter() - t)
            print(f"  round {i}/{args.runs}", file=sys.stderr, flush=True)
    finally:
        for k, c in clients.items():
            c.remove_container(made[k], force=True)
            c.close()
        guard.close()
    print(f"docker-py through the guard vs the daemon's socket; median of {args.runs}:")
    for case in cases:
        raw = statistics.median(samples[(case, "raw")]) * 1000
        guarded = statistics.median(samples[(case, "guarded")]) * 1000
        print(f"  {case:>34}: raw {raw:8.2f} ms, guarded {guarded:8.2f} ms, {guarded / raw:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

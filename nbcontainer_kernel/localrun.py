"""Run a run image on this machine's Docker engine and collect what it leaves.

Outputs come out of the container through the Docker API (get_archive), never
a host bind mount, so this works from inside a containerized kernel and
against a remote DOCKER_HOST. The container is removed whatever happens.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker.errors

from . import labels as L
from .engine import Engine, get_engine, translate_errors
from .options import parse_bytes
from .results import RunResult

__all__ = ["run_image", "ROLE_RUN_CONTAINER"]

ROLE_RUN_CONTAINER = "run"


def _extract(engine: Engine, container_id: str, src: str, dest: Path) -> None:
    """Copy a directory out of a (stopped) container into dest."""
    try:
        stream, _ = engine.api.get_archive(container_id, src)
    except docker.errors.NotFound:
        return
    buf = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)


def run_image(
    image: str,
    *,
    params: Mapping[str, Any] | None = None,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    output_dir: Path | str | None = None,
    timeout: float | None = None,
    on_log: Callable[[str], None] | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    labels: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    engine: Engine | None = None,
) -> RunResult:
    """Run `image` (its entrypoint is the runner) and return what it left.

    `params` travel as NBCONTAINER_PARAMS (JSON, types kept); `env` is given
    at `docker run` time only (e.g. credentials: never in the image). The
    outputs (/opt/ml/model, /opt/ml/output) are copied to `output_dir`.
    A timeout or a set `cancel` event stops the container.
    """
    engine = engine or get_engine()
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="nbcontainer-run-"))
    out.mkdir(parents=True, exist_ok=True)
    run_env = dict(env or {})
    if params:
        run_env["NBCONTAINER_PARAMS"] = json.dumps(dict(params), default=str)
    kwargs: dict[str, Any] = {
        "command": list(args or []),
        "environment": run_env,
        "labels": {**L.container_labels(ROLE_RUN_CONTAINER, image=image), **(labels or {})},
        "detach": True,
        "init": True,
    }
    if cpus:
        kwargs["nano_cpus"] = int(cpus * 1e9)
    if memory:
        kwargs["mem_limit"] = kwargs["memswap_limit"] = parse_bytes("memory", memory)
    container = engine.create_container(image, **kwargs)
    logs: list[str] = []
    result = RunResult(image=image, exit_code=None, output_dir=out, logs=logs, container=container.name)
    t0 = time.monotonic()
    try:
        engine.start(container)
        reader = threading.Thread(target=_follow, args=(container, logs, on_log), daemon=True)
        reader.start()
        deadline = None if timeout is None else t0 + timeout
        while True:
            info = engine.inspect(container.id)
            state = (info or {}).get("State") or {}
            if not state.get("Running"):
                result.exit_code = state.get("ExitCode")
                break
            if deadline is not None and time.monotonic() > deadline:
                result.timed_out = True
                engine.signal(container.id, "SIGKILL")
            elif cancel is not None and cancel.is_set():
                result.cancelled = True
                engine.signal(container.id, "SIGKILL")
            time.sleep(0.05)
        reader.join(timeout=10)
        result.duration = time.monotonic() - t0
        with translate_errors("copy the run's outputs"):
            _extract(engine, container.id, "/opt/ml/model", out)
            _extract(engine, container.id, "/opt/ml/output", out)
        (out / "logs.txt").write_text("\n".join(logs) + ("\n" if logs else ""))
        return result
    finally:
        engine.remove(container.id)


def _follow(container: Any, logs: list[str], on_log: Callable[[str], None] | None) -> None:
    """Stream the container's stdout/stderr as it is written, line by line."""
    pending = b""
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                logs.append(line)
                if on_log:
                    on_log(line)
    except Exception:  # the container was removed under us: the log ends here
        pass
    if pending:
        line = pending.decode("utf-8", "replace")
        logs.append(line)
        if on_log:
            on_log(line)

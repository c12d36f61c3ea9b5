"""Run a run image on this machine and wait for it: the local backend, driven to the end."""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..backends.base import Hooks, HooksProgress, Phase, RunDriver, RunSpec
from ..backends.local import LocalBackend
from ..docker.engine import Engine
from ..runtime.trust import KEY_ENV, RunOutputs, Verdict, new_key
from .results import RunResult

__all__ = ["run_image"]


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
    trust: str = "signed",
) -> RunResult:
    """Run `image` (its entrypoint is the runner) in Docker here and return what it left.

    `params` travel as NBCONTAINER_PARAMS (JSON, types kept) and `args` as the
    runner's arguments (``-p NAME VALUE``); `env` is given at run time only
    (e.g. credentials: never in the image). Outputs are copied to `output_dir`
    through the Docker API. A timeout or a set `cancel` event stops the run.
    The run's outputs are signed with a key made here and read under `trust`
    (see :mod:`nbcontainer_kernel.runtime.trust`).
    """
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="nbcontainer-run-"))
    out.mkdir(parents=True, exist_ok=True)
    run_id = f"adhoc-{secrets.token_hex(4)}"
    key = new_key()  # signs this run's outputs; given to the container at run time only
    logs: list[str] = []

    def keep(_run_id: str, line: str) -> None:
        logs.append(line)
        if on_log:
            on_log(line)

    hooks = Hooks(on_log=[keep])

    def verify(dest: Path) -> tuple[Verdict, str, RunOutputs]:
        outputs = RunOutputs(dest, key, trust)
        return (*outputs.check(), outputs)

    driver = RunDriver(
        LocalBackend(engine), HooksProgress(run_id, hooks), verify=verify, cancel=cancel
    )
    spec = RunSpec(
        run_id,
        image,
        params=dict(params or {}),
        command=list(args or []),
        env={**dict(env or {}), KEY_ENV: key},
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        labels=dict(labels or {}),
    )
    t0 = time.monotonic()
    job = driver.backend.submit(spec)
    outcome = driver.wait(job, spec, out)
    if outcome.error is not None:
        raise outcome.error
    return RunResult(
        image=image,
        exit_code=outcome.exit_code,
        output_dir=out,
        logs=logs,
        duration=time.monotonic() - t0,
        timed_out=outcome.timed_out,
        cancelled=outcome.phase == Phase.CANCELLED,
        container=job.handle["container_name"],
        key=key,
        trust=trust,
        reason=outcome.reason,
        checked_outputs=outcome.outputs,
        verdict=outcome.verdict,
        status=outcome.phase.value,
    )

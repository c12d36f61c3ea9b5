"""Settings, and the environment variables behind them, in one place.

A setting's value, highest precedence first:

1. a flag of the magic or the command (``%%remote_run --memory 4g``);
2. explicit configuration: ``%config RemoteRun.memory = '4g'``, or
   ``c.RemoteRun.memory`` / ``c.DockerProvisioner.memory`` in an IPython or
   Jupyter config file (server-wide defaults for every kernel);
3. its environment variable (``NBCONTAINER_MEMORY``), named in the trait's help;
4. the ``[tool.nbcontainer]`` table of the nearest ``pyproject.toml`` (``memory =
   "4g"``; dashes or underscores), read once per directory and session;
5. the built-in default.

Values from 3 and 4 are validated like any trait value; a bad one is refused
with :class:`InvalidOption` naming where it came from. Standard library only
at import time (this module is also imported inside images).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from .runtime.errors import InvalidOption

__all__ = [
    "ENVIRONMENT",
    "trait_default",
    "pyproject_table",
    "in_container_kernel",
    "kernel_id",
    "docker_host",
    "runs_db",
    "base_image",
    "max_context_bytes",
    "max_result_bytes",
]

#: Every environment variable the host side reads, and what it sets. (The in-container
#: contract's variables, NBCONTAINER_PARAMS and friends, are the runner's: runner/.)
ENVIRONMENT = {
    "NBCONTAINER_REGISTRY": "RemoteRun.registry: host[:port]/repository run images are pushed to",
    "NBCONTAINER_S3_PREFIX": "RemoteRun.s3_prefix: s3://bucket/prefix where remote results go",
    "NBCONTAINER_BATCH_QUEUE": "RemoteRun.batch_queue: the AWS Batch job queue",
    "NBCONTAINER_BATCH_JOB_ROLE": "RemoteRun.batch_job_role: the IAM role Batch jobs run as",
    "NBCONTAINER_BATCH_RETRIES": "RemoteRun.batch_retries: attempts after a failed one",
    "NBCONTAINER_BATCH_PLATFORM": "RemoteRun.batch_platform: EC2 or FARGATE",
    "NBCONTAINER_BATCH_EXECUTION_ROLE": "RemoteRun.batch_execution_role: Fargate's role",
    "NBCONTAINER_SAGEMAKER_ROLE": "RemoteRun.sagemaker_role: the SageMaker execution role's ARN",
    "NBCONTAINER_INSTANCE_TYPE": "RemoteRun.instance_type: SageMaker instance type (ml.m5.large)",
    "NBCONTAINER_VOLUME_SIZE": "RemoteRun.volume_size: GB of storage of a SageMaker instance",
    "NBCONTAINER_SPOT": "RemoteRun.spot: SageMaker managed spot training (true/false)",
    "NBCONTAINER_KMS_KEY": "RemoteRun.kms_key: KMS key of a remote run's signing key at rest",
    "NBCONTAINER_RUN_POOL_SIZE": "RemoteRun.run_pool_size: --local runner containers kept "
    "waiting (0: a run image per run)",
    "NBCONTAINER_RESOLVE_TIMEOUT": "RemoteRun.resolve_timeout: seconds a dependency layer's "
    "wheel resolution may take before it fails",
    "NBCONTAINER_BACKEND": "RemoteRun.backend: where runs go by default (local, batch, sagemaker)",
    "NBCONTAINER_MAX_PARALLEL": "RemoteRun.max_parallel: children of a sweep running at once",
    "NBCONTAINER_TIMEOUT": "RemoteRun.timeout: seconds before a run is stopped",
    "NBCONTAINER_MEMORY": "RemoteRun.memory: memory limit of runs, e.g. 4g",
    "NBCONTAINER_CPUS": "RemoteRun.cpus: CPU limit of runs",
    "NBCONTAINER_INTERRUPT": "RemoteRun.interrupt: cancel or detach on a kernel interrupt",
    "NBCONTAINER_PROGRESS": "RemoteRun.progress: auto, widget or text",
    "NBCONTAINER_TRUST": "RemoteRun.trust: signed, always or never",
    "NBCONTAINER_RUNS_DB": "RemoteRun.ledger_path: the run ledger's SQLite file",
    "NBCONTAINER_BASE_IMAGE": "the base of run images built outside a containerized kernel",
    "NBCONTAINER_MAX_CONTEXT_BYTES": "cap on a build context (default 16 GiB)",
    "NBCONTAINER_MAX_RESULT_BYTES": "cap on the outputs unpacked from one run (default 16 GiB)",
    "DOCKER_HOST": "the Docker daemon (docker-py's own variable)",
}
_GIB = 1024**3


def _env(name: str) -> str | None:
    assert name in ENVIRONMENT, f"undocumented environment variable {name}"
    value = os.environ.get(name)
    return value if value not in (None, "") else None


# ------------------------------------------------------------------ pyproject
@functools.lru_cache(maxsize=32)
def _table_of(directory: str) -> tuple[str | None, dict[str, Any]]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: tomli when it is there, else no table
        try:
            import tomli as tomllib
        except ImportError:
            return None, {}
    here = Path(directory)
    for d in (here, *here.parents):
        f = d / "pyproject.toml"
        if f.is_file():
            with open(f, "rb") as fh:
                table = tomllib.load(fh).get("tool", {}).get("nbcontainer", {})
            return str(f), {k.replace("-", "_"): v for k, v in table.items()}
    return None, {}


def pyproject_table(start: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """(the pyproject.toml's path, its [tool.nbcontainer] table with dashes made underscores)."""
    return _table_of(str((start or Path.cwd()).resolve()))


# ---------------------------------------------------------------- trait defaults
def trait_default(obj: Any, name: str) -> Any:
    """The default of trait `name` of `obj`: its environment variable (metadata ``env``),
    else the pyproject table, else the trait's own default; validated either way."""
    from traitlets import TraitError

    trait = obj.traits()[name]
    env_name = trait.metadata.get("env")
    raw: Any = None
    source = ""
    if env_name and _env(env_name) is not None:
        source = f"environment variable {env_name}"
        try:
            raw = trait.from_string(_env(env_name))
        except (TraitError, ValueError) as exc:
            raise InvalidOption(source, _env(env_name), str(exc).splitlines()[0]) from None
    else:
        path, table = pyproject_table()
        if name in table:
            source, raw = f"{path} [tool.nbcontainer] {name.replace('_', '-')}", table[name]
    if not source:
        return trait.default_value
    try:
        return trait.validate(obj, raw)
    except TraitError as exc:
        raise InvalidOption(source, raw, str(exc).splitlines()[0]) from None


# ----------------------------------------------------------- host-side settings
def in_container_kernel() -> bool:
    """Whether this process is a kernel the nbcontainer-docker provisioner started."""
    return kernel_id() is not None


def kernel_id() -> str | None:
    return os.environ.get("NBCONTAINER_KERNEL_ID") or None


def docker_host() -> str:
    return _env("DOCKER_HOST") or "unix:///var/run/docker.sock"


def runs_db() -> Path | None:
    value = _env("NBCONTAINER_RUNS_DB")
    return Path(value) if value else None


def base_image() -> str | None:
    return _env("NBCONTAINER_BASE_IMAGE")


def _bytes(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidOption(
            f"environment variable {name}", value, "expected a number of bytes"
        ) from None


def max_context_bytes() -> int:
    """Cap on a build context (NBCONTAINER_MAX_CONTEXT_BYTES, default 16 GiB)."""
    return _bytes("NBCONTAINER_MAX_CONTEXT_BYTES", 16 * _GIB)


def max_result_bytes() -> int:
    """Cap on the outputs unpacked from one run (NBCONTAINER_MAX_RESULT_BYTES, default 16 GiB)."""
    return _bytes("NBCONTAINER_MAX_RESULT_BYTES", 16 * _GIB)

"""What a run image does differently when SageMaker runs it as a training job.

The SageMaker backends say so with ``NBCONTAINER_PLATFORM=sagemaker``:

* Parameters arrive as SageMaker hyperparameters (``hyperparameters.json``,
  string values, each the JSON of the run's value); a parameter set too large
  for SageMaker's limits arrives instead as an input channel
  (``/opt/ml/input/data/nbcontainer-params/params.json``) whose SHA-256 the
  hyperparameters carry, so an object changed in S3 is refused.
* SageMaker uploads only ``/opt/ml/model`` (model.tar.gz) and
  ``/opt/ml/output/data`` (output.tar.gz), and keeps ``/opt/ml/output/failure``
  to itself as the job's FailureReason. So after sealing, the runner carries the
  signed files the platform would not return (the failure text, the pickled
  exception, and after a failure the whole of model/, which SageMaker may not
  upload for a failed job) inside ``output/data/.nbcontainer/``; the host puts
  them back where they were sealed (:func:`restore_carried`) before verifying.

Runs inside run images: standard library only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import contract
from .paths import Paths

__all__ = [
    "CARRIED_DIR",
    "PARAMS_CHANNEL",
    "PARAMS_SHA256",
    "PLATFORM_ENV",
    "carry_unreturned",
    "channel_params",
    "on_sagemaker",
    "restore_carried",
]

PLATFORM_ENV = contract.PLATFORM_ENV
#: The input channel of a parameter set too large for hyperparameters.
PARAMS_CHANNEL = "nbcontainer-params"
PARAMS_FILE = "params.json"
#: The hyperparameter that carries the channel's SHA-256.
PARAMS_SHA256 = "nbcontainer_params_sha256"
#: Under output/data: the sealed files SageMaker would not return.
CARRIED_DIR = ".nbcontainer"


def on_sagemaker(env: Mapping[str, str]) -> bool:
    return env.get(PLATFORM_ENV) == "sagemaker"


def channel_params(hyperparameters: dict[str, Any], ml_root: Path) -> dict[str, Any] | None:
    """The parameters from the params channel when the hyperparameters point at it (checked
    against their SHA-256), else None."""
    want = hyperparameters.get(PARAMS_SHA256)
    if want is None:
        return None
    path = ml_root / "input" / "data" / PARAMS_CHANNEL / PARAMS_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"the parameters channel {path} cannot be read: {exc}") from None
    if hashlib.sha256(raw).hexdigest() != str(want):
        raise ValueError(
            f"the parameters at {path} are not the ones submitted (their SHA-256 differs): "
            "refusing to run with them"
        )
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def carry_unreturned(paths: Paths, failed: bool) -> list[str]:
    """Copy the sealed files SageMaker does not upload into output/data/.nbcontainer/
    (after seal: the copies are transport, not outputs). Returns what was carried."""
    carried_root = paths.output_data / CARRIED_DIR
    carried = []
    for src in (paths.failure, paths.exception):
        if src.is_file():
            carried_root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, carried_root / src.name)
            carried.append(f"output/{src.name}")
    if failed and paths.model.is_dir():
        shutil.copytree(paths.model, carried_root / "model", dirs_exist_ok=True)
        carried.append("model/")
    return carried


def restore_carried(dest: Path) -> None:
    """On the host, after unpacking model.tar.gz into dest/model and output.tar.gz into
    dest/output/data: put carried files back where the runner sealed them. A model/ that
    SageMaker uploaded wins over the carried copy; the copies are then removed, so the
    directory holds exactly what the manifest lists (or verification says what differs)."""
    carried_root = dest / "output" / "data" / CARRIED_DIR
    if not carried_root.is_dir() or carried_root.is_symlink():
        return
    for name in ("failure", "exception.pkl"):
        src = carried_root / name
        target = dest / "output" / name
        if src.is_file() and not src.is_symlink() and not target.exists():
            src.replace(target)
    model = carried_root / "model"
    nothing_there = not (dest / "model").is_dir() or not any((dest / "model").iterdir())
    if model.is_dir() and not model.is_symlink() and nothing_there:
        shutil.rmtree(dest / "model", ignore_errors=True)
        model.replace(dest / "model")
    shutil.rmtree(carried_root)

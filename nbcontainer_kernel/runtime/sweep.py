"""Which row of a sweep this container runs, when one job runs a whole sweep.

A backend that submits a sweep as one array job (AWS Batch) gives every child the
same environment: the sweep's table of parameter rows (``NBCONTAINER_SWEEP``, a
JSON list of objects; or, when large, ``NBCONTAINER_SWEEP_URI`` with its SHA-256
in ``NBCONTAINER_SWEEP_SHA256``, so an object changed in S3 is refused), and
the platform tells each child its index: ``AWS_BATCH_JOB_ARRAY_INDEX``, or else
the ``:N`` suffix of ``AWS_BATCH_JOB_ID`` (how Batch names array children).

Runs inside run images: standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "SWEEP_ENV",
    "SWEEP_URI_ENV",
    "SWEEP_URL_ENV",
    "SWEEP_SHA256_ENV",
    "array_index",
    "sweep_row",
]

SWEEP_ENV = "NBCONTAINER_SWEEP"
SWEEP_URI_ENV = "NBCONTAINER_SWEEP_URI"
SWEEP_SHA256_ENV = "NBCONTAINER_SWEEP_SHA256"
#: A presigned GET of the same object: a job whose container holds no credentials (a
#: job role the platform has not handed over yet, a test bed) still reads its row. The
#: SHA-256 check stands either way.
SWEEP_URL_ENV = "NBCONTAINER_SWEEP_URL"


def array_index(env: Mapping[str, str]) -> int | None:
    """This child's index in its array job, or None outside one."""
    if env.get("AWS_BATCH_JOB_ARRAY_INDEX", "").isdigit():
        return int(env["AWS_BATCH_JOB_ARRAY_INDEX"])
    _, sep, suffix = env.get("AWS_BATCH_JOB_ID", "").rpartition(":")
    if sep and suffix.isdigit():
        return int(suffix)
    return None


def sweep_row(
    env: Mapping[str, str], fetch: Callable[[str], bytes]
) -> tuple[int, dict[str, Any]] | None:
    """(index, parameters) of this child, or None when this run is not part of an array.

    `fetch` reads an s3:// object (only called for NBCONTAINER_SWEEP_URI; it is given the
    presigned URL of NBCONTAINER_SWEEP_URL when there is one, and tries it first)."""
    if env.get(SWEEP_ENV):
        raw = env[SWEEP_ENV].encode()
    elif env.get(SWEEP_URI_ENV):
        raw = fetch(env[SWEEP_URI_ENV])
        want = env.get(SWEEP_SHA256_ENV, "")
        if hashlib.sha256(raw).hexdigest() != want:
            raise ValueError(
                f"the sweep table at {env[SWEEP_URI_ENV]} is not the one submitted "
                "(its SHA-256 differs): refusing to run with it"
            )
    else:
        return None
    rows = json.loads(raw)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("the sweep table must be a JSON list of objects")
    index = array_index(env)
    if index is None:
        if len(rows) == 1:
            return 0, rows[0]
        raise ValueError(
            "a sweep of several rows needs AWS_BATCH_JOB_ARRAY_INDEX (or an AWS_BATCH_JOB_ID "
            "ending in :N) to pick this child's row"
        )
    if not 0 <= index < len(rows):
        raise ValueError(f"array index {index} is outside the sweep's {len(rows)} rows")
    return index, rows[index]

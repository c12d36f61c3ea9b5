"""`nbcontainer-run [train] [-p NAME VALUE ...]`: the run image's entry point.

SageMaker starts a training image as ``docker run IMAGE train``; `train` is
accepted as the first argument and also installed on PATH as a script, for a
platform that overrides the entrypoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contract import OUTPUT_PER_JOB_ENV as PER_JOB_ENV
from .contract import OUTPUT_URI_ENV
from .paths import Paths

__all__ = ["main", "train"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WAIT_FLAG]:  # a warm pool's container: the run arrives later
        argv = wait_for_claim(argv[1])
        from .contract import EXIT_MARK_ENV

        mark = os.environ.pop(EXIT_MARK_ENV, None)
        code = _main(argv)
        if mark:
            # Sealed (and uploaded) already: say so, and skip the interpreter's teardown
            # (IPython's, a tenth of a second) that nobody waits for.
            sys.stderr.flush()
            print(f"[nbcontainer] exit {code} {mark}", flush=True)
            os._exit(code)
        return code
    return _main(argv)


def _main(argv: list[str]) -> int:
    # The signing key first, before any code of the snapshot's runs: out of os.environ
    # (the key, or its reference on AWS), so neither the cell, nor its subprocesses, nor a
    # printed environment see it.
    from .run_key import RunKeyError, load_run_key

    key_error: RunKeyError | None = None
    try:
        key = load_run_key(os.environ, Paths.from_env().ml)
    except RunKeyError as exc:
        key, key_error = None, exc
    if argv[:1] == ["train"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(
        prog="nbcontainer-run", description="Run the snapshot in this image."
    )
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument(
        "-P", "--text-param", nargs=2, action="append", default=[], metavar=("NAME", "TEXT")
    )
    args = p.parse_args(argv)

    paths = Paths.from_env()
    paths.make()
    index: dict[str, Any] = {"variables": {}, "skipped": {}, "last_value": None, "displays": []}
    code = 2  # what an error out of _run leaves (the runner's own failure)
    try:
        if key_error is not None:
            # Unsigned outputs would be refused by the host: say why, run nothing.
            from .cell import write_failure

            write_failure(key_error, paths, context="the run could not read its signing key")
            print(f"[nbcontainer] cannot start: {key_error}", file=sys.stderr, flush=True)
            code = 2
        else:
            code = _run(args.param, paths, index, args.text_param)
    finally:
        # Whatever happened (a failing cell, a runner error), the outputs are sealed.
        from .training import carry_unreturned, on_sagemaker
        from .trust import prune_special_files, seal

        for removed in prune_special_files(paths.ml):
            print(f"[nbcontainer] not kept: {removed} (only regular files travel)", file=sys.stderr)
        seal(paths.ml, key, index)
        if on_sagemaker(os.environ):  # SageMaker returns model/ and output/data/ only
            carry_unreturned(paths, failed=code != 0)
        code = _upload(paths, code)
    return code


WAIT_FLAG = "--wait-for-claim"
# What a run imports on its way, done while the container waits (the cell's own imports,
# numpy's included, stay the cell's).
_PRELOAD = (
    "nbcontainer_kernel.runtime.cell",
    "nbcontainer_kernel.runtime.trust",
    "IPython.core.interactiveshell",
    "cloudpickle",
)


def wait_for_claim(claim_file: str) -> list[str]:
    """In a warm pool's container: import what every run needs, say so, and wait for the
    claim (the snapshot beside it). Returns the runner's arguments; the claim's environment
    (the signing key, the parameters) is put in os.environ and the file removed."""
    import contextlib
    import importlib
    import json
    import signal

    from .contract import POOL_READY_MARK

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):  # imported (and reported) where a run needs it
            importlib.import_module(name)
    from .cell import shell

    shell()  # IPython's shell, made once: the run's cell runs in it
    print(POOL_READY_MARK, flush=True)
    while not os.path.exists(claim_file):
        signal.sigtimedwait({signal.SIGWINCH}, 1.0)  # a lost signal costs a second
    with open(claim_file) as f:
        claim = json.load(f)
    os.unlink(claim_file)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGWINCH})
    os.environ.update(claim.get("env") or {})
    return [str(a) for a in claim.get("argv") or []]


def _upload(paths: Paths, code: int) -> int:
    """Put the sealed outputs where NBCONTAINER_OUTPUT_URI says (Batch), also after a
    failure; a run whose outputs could not be put there fails, saying why."""
    from .sweep import SWEEP_ENV, SWEEP_URI_ENV, array_index

    if not os.environ.get(OUTPUT_URI_ENV):
        return code  # a local run: nothing to put anywhere (and no HTTP client to import)
    from .upload import URI_ENV, UploadError, upload_outputs

    env = dict(os.environ)
    index = array_index(env)
    if env.get(URI_ENV) and index is not None and (env.get(SWEEP_ENV) or env.get(SWEEP_URI_ENV)):
        env[URI_ENV] = f"{env[URI_ENV].rstrip('/')}/{index}/"  # one prefix per array child
    elif env.get(URI_ENV) and env.get(PER_JOB_ENV) and env.get("AWS_BATCH_JOB_ID"):
        # A schedule's or trigger's jobs share one definition: a prefix per job id.
        env[URI_ENV] = f"{env[URI_ENV].rstrip('/')}/{env['AWS_BATCH_JOB_ID']}/"
    try:
        where = upload_outputs(paths.ml, env)
    except UploadError as exc:
        print(f"[nbcontainer] outputs not uploaded: {exc}", file=sys.stderr, flush=True)
        return code or 3
    if where:
        print(f"[nbcontainer] outputs uploaded to {where}", flush=True)
    return code


def _run(
    param_args: list[list[str]],
    paths: Paths,
    index: dict[str, Any],
    text_args: list[list[str]] | None = None,
) -> int:
    from .cell import write_failure
    from .params import checked, resolve_params
    from .snapshot import Snapshot
    from .sweep import sweep_row

    def get_object(uri: str, env: Any) -> bytes:  # only a sweep of an array job reads S3
        from .sweep import SWEEP_URL_ENV
        from .upload import UploadError, get_url
        from .upload import get_object as get

        if env.get(SWEEP_URL_ENV):
            try:
                return get_url(env[SWEEP_URL_ENV])
            except UploadError as exc:  # expired, say: the job's own credentials next
                print(f"[nbcontainer] presigned sweep table: {exc}", file=sys.stderr)
        return get(uri, env)

    t0 = time.monotonic()
    try:
        snap = Snapshot.load(paths.snapshot)
        params, source = resolve_params(
            [(n, v) for n, v in param_args],
            os.environ,
            paths.hyperparameters,
            [(n, v) for n, v in text_args or []],
        )
        row = sweep_row(os.environ, lambda uri: get_object(uri, os.environ))
        if row is not None:  # one child of a sweep submitted as one array job
            params = {**params, **checked(row[1], f"row {row[0]} of the sweep")}
            source = f"{source} and row {row[0]} of the sweep"
    except Exception as exc:  # a broken image or bad parameters: still leave the failure file
        write_failure(exc, paths, context="the run could not start")
        print(f"[nbcontainer] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    index["parameters"] = params
    print(
        f"[nbcontainer] {snap.mode} run of snapshot {snap.digest[:12]}"
        + (f", parameters from {source}: {params}" if params else ""),
        flush=True,
    )
    if snap.mode == "notebook" and snap.pipeline:
        from .notebook import run_pipeline

        steps = [
            (paths.snapshot / "pipeline" / f"{i:02d}.ipynb", stem)
            for i, stem in enumerate(snap.pipeline)
        ]
        code = run_pipeline(steps, params, paths, index, workdir=paths.snapshot / "src" / "code")
    elif snap.mode == "notebook":
        from .notebook import run_notebook

        code = run_notebook(
            paths.snapshot / "notebook.ipynb",
            params,
            paths,
            index,
            workdir=paths.snapshot / "src" / "code",
            stem=Path(snap.notebook).stem if snap.notebook else "output",
        )
    else:
        from .cell import run_cell

        code = run_cell(snap, params, paths, index)
    status = "succeeded" if code == 0 else "failed"
    print(f"[nbcontainer] {status} in {time.monotonic() - t0:.1f} s", flush=True)
    return code


def train() -> int:
    """The `train` script: SageMaker's entry, same as `nbcontainer-run`."""
    return main(sys.argv[1:])


def console() -> None:
    sys.exit(main())


def console_train() -> None:
    sys.exit(train())


if __name__ == "__main__":
    console()

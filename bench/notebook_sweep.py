"""A notebook swept over a 1,000-row `--sweep-file` on AWS Batch, on the AWS test bed
(scripts/aws_testbed.py: moto in server mode runs every child in Docker, Debian's
docker-registry), against `nbcontainer run --backend local` of one child, in one run:

* SubmitJob calls (one array job) and seconds from the run's start to the submit's
  answer (snapshot, build and push included, then the submit alone), for --rows;
* per-child wall time of a whole sweep against one local run of the same notebook
  (the baseline, measured in the same run after a warm-up);
* every child's recorded value back as one DataFrame (checked, row by row).

moto starts every child of an array job at once, with no compute capacity to queue
them: a thousand kernels at once on a small machine time Docker's API out. So the
1,000-row sweep is held in SUBMITTED (moto's state manager: its jobs never advance) to
measure the submit side, and a sweep of --run-rows children (what this machine runs at
once) runs to its end for the per-child figures and the values.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NOTEBOOK_CELLS = [
    ("i = 0\nx = 1.0", ["parameters"]),
    ("import nbcontainer_kernel as nbk\nnbk.record('y', x * 2)\nnbk.record('i', i)", []),
]


def _notebook(path: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = []
    for source, tags in NOTEBOOK_CELLS:
        cell = new_code_cell(source)
        cell.metadata["tags"] = tags
        cells.append(cell)
    nbformat.write(new_notebook(cells=cells), path)
    return path


def _cli(*argv: str, quiet: bool = False) -> tuple[int, str, float]:
    """`nbcontainer ARGV` in this process: (status, stdout, seconds); a failure's stderr
    is shown unless `quiet`."""
    from nbcontainer_kernel.cli import main as cli

    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(list(argv))
    took = time.perf_counter() - t
    if code != 0 and not quiet:
        print(err.getvalue()[-3000:], file=sys.stderr)
    return code, out.getvalue(), took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000, help="rows of the submitted sweep")
    p.add_argument("--run-rows", type=int, default=RUN_ROWS, help="children run to the end")
    p.add_argument("--base", default="nbcontainer/base:bookworm")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-nbsweep-"))
    from _shell import testbed

    os.environ["NBCONTAINER_RUNS_DB"] = str(tmp / "runs.db")
    with testbed(tmp, args.base):
        try:
            return _bench(args.rows, args.run_rows, tmp)
        finally:
            from nbcontainer_kernel.images.runs import remove_run_images_of
            from nbcontainer_kernel.remote.ledger import Ledger

            remove_run_images_of(Ledger(tmp / "runs.db").find())


def _bench(rows: int, run_rows: int, tmp: Path) -> int:
    import pandas as pd

    from nbcontainer_kernel.backends.registry import get_backend
    from nbcontainer_kernel.remote.ledger import Ledger

    nb = _notebook(tmp / "small.ipynb")
    table = pd.DataFrame({"i": range(rows), "x": [i / 10 for i in range(rows)]})
    table.to_csv(tmp / "rows.csv", index=False)

    # The baseline: one child on this machine (a warm-up first builds the runtime image).
    _cli("run", str(nb), "-p", "i", "0", "--name", "warmup", "-q")
    code, _, local_one = _cli("run", str(nb), "-p", "i", "1", "--name", "local", "-q")
    assert code == 0, "the local baseline failed"

    backend: Any = get_backend("batch")
    backend._clients.refresh()
    counts: collections.Counter[str] = collections.Counter()
    marks: dict[str, float] = {}
    batch = backend._client("batch")
    batch.meta.events.register(
        "before-call.batch", lambda model, **_: counts.update([f"batch.{model.name}"])
    )

    def mark(name: str) -> Any:
        def at(**_: Any) -> None:  # None: botocore takes a value as the call's answer
            marks.setdefault(name, time.perf_counter())

        return at

    batch.meta.events.register("before-call.batch.SubmitJob", mark("submit"))
    batch.meta.events.register("after-call.batch.SubmitJob", mark("answer"))

    # 1. A sweep this machine runs at once, to its end.
    run_rows = min(rows, run_rows)
    table.head(run_rows).to_csv(tmp / "run_rows.csv", index=False)
    code, out, whole = _cli(
        "run",
        str(nb),
        "--backend",
        "batch",
        "--sweep-file",
        "run_rows.csv",
        "--name",
        "sweep",
        "--json",
        "-q",
    )
    doc = json.loads(out)
    children = Ledger(tmp / "runs.db").find(parent=doc["run"])
    frame = pd.DataFrame(doc["recorded"])
    ok = (
        len(frame) == run_rows
        and sorted(frame["i"].tolist()) == list(range(run_rows))
        and all(abs(r["y"] - r["x"] * 2) < 1e-9 for r in doc["recorded"])
    )
    ran = {
        "rows": run_rows,
        "status": doc["status"],
        "children_succeeded": sum(c["status"] == "SUCCEEDED" for c in children),
        "submit_job_calls": counts["batch.SubmitJob"],
        "api_calls": dict(counts),
        "sweep_wall_s": round(whole, 1),
        "per_child_wall_s": round(whole / run_rows, 3),
        "local_one_child_s": round(local_one, 2),
        "per_child_over_local_one": round((whole / run_rows) / local_one, 3),
        "all_values_back_as_one_frame": ok,
    }

    # 2. The submit side of a --rows sweep, its jobs held in SUBMITTED (never let go: the
    # test bed stops with them, and the run waiting on them with this process).
    _moto_transition({"progression": "manual", "times": 10**9})
    counts.clear()
    marks.clear()
    t0 = time.perf_counter()
    waiting = threading.Thread(
        target=_cli,
        args=("run", str(nb), "--backend", "batch", "--sweep-file", "rows.csv", "--name", "big"),
        kwargs={"quiet": True},  # it ends when the test bed stops under it
        daemon=True,
    )
    waiting.start()
    while "answer" not in marks and waiting.is_alive():
        time.sleep(0.05)
    big = {
        "rows": rows,
        "submit_job_calls": counts["batch.SubmitJob"],
        "array_size": len(Ledger(tmp / "runs.db").find(parent="big-1")),
        "seconds_to_submit_answer": round(marks["answer"] - t0, 2),
        "seconds_in_submit_job": round(marks["answer"] - marks["submit"], 3),
    }

    # (The waiting run's thread holds sys.stdout redirected: the figures go to the real one.)
    print(json.dumps({"run": ran, "submit": big}, indent=1), file=sys.__stdout__, flush=True)
    return 0 if ok and ran["submit_job_calls"] == 1 and big["submit_job_calls"] == 1 else 1


RUN_ROWS = 60


def _moto_transition(transition: dict[str, Any] | None) -> None:
    """Hold moto's Batch jobs where they are (None: let them advance again)."""
    import urllib.request

    url = os.environ["AWS_ENDPOINT_URL"] + "/moto-api/state-manager/"
    body: dict[str, Any] = {"model_name": "batch::job"}
    if transition is not None:
        body["transition"] = transition
    request = urllib.request.Request(
        url + ("set-transition" if transition else "unset-transition"),
        data=json.dumps(body).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()


if __name__ == "__main__":
    sys.exit(main())

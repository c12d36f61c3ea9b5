"""`make demo-aws`: a cell and a sweep on AWS Batch, then a notebook sweep and an S3
trigger, against the test bed (scripts/aws-testbed.sh start has set the environment:
AWS_ENDPOINT_URL, the queue, the registry, the S3 prefix). Prints what ran where and what
came back."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> int:
    from IPython.testing import globalipapp

    tmp = Path(tempfile.mkdtemp(prefix="nbcontainer-demo-aws-"))
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcontainer_kernel")
    ip.run_line_magic("config", f"RemoteRun.ledger_path = {str(tmp / 'runs.db')!r}")
    ip.run_line_magic("config", "RemoteRun.progress = 'text'")
    ip.run_cell(
        "import pandas as pd\n"
        "docs = pd.DataFrame({'w': [0.5, 1.5, 2.5]}, index=pd.Index(list('abc'), name='doc'))"
    )
    steps = [
        "%%remote_run --backend batch --name demo -p topics=3\n"
        "import os, platform\n"
        "scores = docs.assign(score=docs.w * topics)\n"
        "where = (platform.node(), os.environ.get('AWS_BATCH_JOB_ID'))",
        "print(scores); print('ran on', where)",
        "%%remote_run --backend batch --name demo-sweep --sweep topics=1,2 --sweep scale=1,10\n"
        "best = float((docs.w * topics * scale).max())",
        "print(best)",
        "runs = %remote_runs\n"
        "print(runs.filter(regex='^(id|backend|status|param[.].*)$').to_string())",
    ]
    for cell in steps:
        result = ip.run_cell(cell)
        if result.error_in_exec is not None:
            return 1
    from nbcontainer_kernel.images.runs import remove_run_images_of
    from nbcontainer_kernel.remote.ledger import Ledger

    try:
        return notebooks_in_production(tmp)
    finally:
        remove_run_images_of(Ledger(tmp / "runs.db").find())  # the run images made here go


def _notebook(path: Path, params: str, code: str) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[cell, new_code_cell(code)]), path)
    return str(path)


def notebooks_in_production(tmp: Path) -> int:
    """`nbcontainer run` of a notebook swept on Batch (one array job), its table of
    recorded values; then an S3 trigger: an object lands, the notebook runs with its key."""
    import os
    import time

    import boto3

    from nbcontainer_kernel.cli import main as nbcontainer

    os.environ["NBCONTAINER_RUNS_DB"] = str(tmp / "runs.db")
    # The test bed has one role: the scheduler's stands in for it here.
    os.environ.setdefault("NBCONTAINER_SCHEDULE_ROLE", os.environ["NBCONTAINER_BATCH_JOB_ROLE"])
    study = _notebook(
        tmp / "study.ipynb",
        "alpha = 0.5",
        "import nbcontainer_kernel as nbk\nnbk.record('score', round(1 / (1 + alpha), 3))",
    )
    print("\n$ nbcontainer run study.ipynb --backend batch --sweep alpha=0.5,1,2", flush=True)
    if nbcontainer(["run", study, "--backend", "batch", "--sweep", "alpha=0.5,1,2", "-q"]):
        return 1
    ingest = _notebook(
        tmp / "ingest.ipynb",
        "input_bucket = ''\ninput_key = ''",
        "import nbcontainer_kernel as nbk\nprint('ingesting', input_key)\n"
        "nbk.record('key', input_key)",
    )
    bucket = os.environ["NBCONTAINER_S3_PREFIX"].split("/")[2]
    print(f"\n$ nbcontainer schedule create landing ingest.ipynb --on-s3 s3://{bucket}/incoming/")
    if nbcontainer(
        ["schedule", "create", "landing", ingest, "--on-s3", f"s3://{bucket}/incoming/"]
    ):
        return 1
    try:
        key = "incoming/sales-2026-12-05.csv"
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"store,sales\n1,10\n")
        # moto's EventBridge calls no Batch: run-now submits what the rule's target would.
        print(f"\n$ nbcontainer schedule run-now landing --bucket {bucket} --key {key}")
        nbcontainer(["schedule", "run-now", "landing", "--bucket", bucket, "--key", key])
        from nbcontainer_kernel.remote.ledger import Ledger
        from nbcontainer_kernel.remote.notebook_runs import bring_in_runs

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ledger = Ledger(tmp / "runs.db")
            bring_in_runs("landing", ledger)  # what `nbcontainer runs --schedule` does
            rows = ledger.find(schedule="landing")
            if rows and rows[-1]["status"] in ("SUCCEEDED", "FAILED"):
                break
            time.sleep(3)
        print("\n$ nbcontainer logs landing")
        nbcontainer(["logs", "landing"])
        print("\n$ nbcontainer runs --kind notebook")
        nbcontainer(["runs", "--kind", "notebook"])
        return 0 if rows and rows[-1]["recorded"].get("key") == key else 1
    finally:
        nbcontainer(["schedule", "delete", "landing"])


if __name__ == "__main__":
    sys.exit(main())

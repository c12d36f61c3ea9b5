"""`make demo-aws`: a cell and a sweep on AWS Batch, against the test bed
(scripts/aws-testbed.sh start has set the environment: AWS_ENDPOINT_URL, the queue,
the registry, the S3 prefix). Prints what ran where and what came back."""

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

    remove_run_images_of(Ledger(tmp / "runs.db").find())  # the run images made here go
    return 0


if __name__ == "__main__":
    sys.exit(main())

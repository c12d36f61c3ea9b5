"""Many notebooks at once (issue 25), on a real daemon: several processes make `--local`
runs with metrics and sweeps against one ledger while another reads the run table in a
loop; then four containerized kernels of one Jupyter server run sweeps at once.

Every cell must succeed, every run must be in the ledger with its terminal status and
all its metric points, and the reader must never see a run that ended without them.
``NBCONTAINER_STRESS_ROUNDS`` repeats the first workload (2 by default: 2 x 40 runs).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.remote.ledger import Ledger
from tests.integration.conftest import BASE_IMAGE

PROCESSES = 8
STEPS = 10

WORKER = textwrap.dedent(
    """
    import json, sys
    from IPython.testing import globalipapp
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "nbcontainer_kernel")
    ip.run_line_magic("config", "RemoteRun.ledger_path = " + repr(sys.argv[1]))
    ip.run_line_magic("config", "RemoteRun.progress = 'text'")
    ip.run_cell("base = 3")
    who, steps = sys.argv[2], int(sys.argv[3])
    cell = (
        "from nbcontainer_kernel import log_metric\\n"
        f"for s in range({steps}):\\n"
        "    log_metric('loss', 1.0 / (s + 1 + k), step=s)\\n"
        "y = base * k"
    )
    failed = 0
    for i in range(2):
        ip.user_ns["k"] = i
        r = ip.run_cell(f"%%remote_run --local --name p{who}\\n{cell}")
        failed += r.error_in_exec is not None
    sweep = f"%%remote_run --local --name s{who} --sweep k=1,2 --max-parallel 2\\n"
    r = ip.run_cell(sweep + cell)
    failed += r.error_in_exec is not None
    print(json.dumps({"failed": failed}))
    """
)

READER = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    from nbcontainer_kernel.remote.ledger import Ledger
    from nbcontainer_kernel.remote.tables import runs_frame
    path, stop, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reads = torn = 0
    errors = []
    import os
    while not os.path.exists(stop):
        try:
            runs_frame(Ledger(path))
            db = sqlite3.connect(path, timeout=30)
            db.execute("BEGIN")
            done = [r[0] for r in db.execute(
                "SELECT id FROM runs WHERE status = 'SUCCEEDED' AND params NOT LIKE '%[%' "
                "AND name != 'warmup'")]
            counts = dict(db.execute(
                "SELECT run_id, COUNT(*) FROM metric_points GROUP BY run_id"))
            db.execute("COMMIT")
            db.close()
            torn += sum(1 for r in done if counts.get(r) != steps)
            reads += 1
        except Exception as exc:
            errors.append(repr(exc)[:200])
        time.sleep(0.05)
    print(json.dumps({"reads": reads, "torn": torn, "errors": errors}))
    """
)


def _round(ledger_path: Path, round_no: int) -> None:
    env = {**os.environ, "NBCONTAINER_BASE_IMAGE": BASE_IMAGE}
    stop = ledger_path.parent / f"stop-{round_no}"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(ledger_path), str(stop), str(STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ledger_path), f"{round_no}x{w}", str(STEPS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(PROCESSES)
    ]
    outs = [w.communicate(timeout=900) for w in workers]
    stop.touch()
    read_out, read_err = reader.communicate(timeout=120)
    for (out, err), w in zip(outs, workers, strict=True):
        assert w.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["failed"] == 0, (out[-3000:], err[-3000:])
    seen = json.loads(read_out.strip().splitlines()[-1])
    assert seen["errors"] == [] and seen["torn"] == 0 and seen["reads"] > 0, (seen, read_err)


def test_eight_processes_make_runs_on_one_ledger_while_a_reader_reads_it(
    engine: Engine, ip, ledger: Ledger, new_images
) -> None:
    # The runtime image, made once here (as a user's first run makes it).
    first = ip.run_cell("%%remote_run --local --name warmup\nz = 1")
    assert first.error_in_exec is None, first.error_in_exec
    rounds = int(os.environ.get("NBCONTAINER_STRESS_ROUNDS", "2"))
    for round_no in range(rounds):
        _round(ledger.path, round_no)
    rows = [r for r in ledger.find() if not r["name"].startswith("warmup")]
    per_round = PROCESSES * (2 + 1 + 2)  # two runs, a sweep's parent and its two children
    assert len(rows) == rounds * per_round
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    counted = sqlite3.connect(ledger.path).execute(
        "SELECT run_id, COUNT(*) FROM metric_points GROUP BY run_id"
    )
    points = dict(counted)
    leaves = [r for r in rows if not any(c["parent"] == r["id"] for c in rows)]
    assert len(leaves) == rounds * PROCESSES * 4
    assert all(points.get(r["id"]) == STEPS for r in leaves), {
        r["id"]: points.get(r["id"]) for r in leaves if points.get(r["id"]) != STEPS
    }


SWEEP_CELL = (
    "%%remote_run --local --name {name} --sweep k=1,2,3 --max-parallel 3\n"
    "from nbcontainer_kernel import log_metric\n"
    "for s in range(5):\n"
    "    log_metric('acc', s * k, step=s)\n"
    "y = k * 2"
)


def test_four_containerized_kernels_of_one_server_run_sweeps_at_once(
    engine: Engine, make_kernelspec, ledger: Ledger, new_images, tmp_path: Path
) -> None:
    from tests.lab import Lab

    name = make_kernelspec("nbc-many")
    lab = Lab(tmp_path)
    try:
        kernels = [
            lab.post("/api/kernels", {"name": name, "path": ""}).json()["id"] for _ in range(4)
        ]
        outs: dict[int, str] = {}

        def run(i: int) -> None:
            import asyncio

            asyncio.set_event_loop(asyncio.new_event_loop())  # each thread its own loop
            outs[i] = lab.execute(kernels[i], SWEEP_CELL.format(name=f"many{i}"), 600)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        took = time.monotonic() - start
        for i in range(4):
            shown = lab.execute(kernels[i], "print(sorted(y['y']))")
            assert shown.strip() == "[2, 4, 6]", (i, outs.get(i, "")[-2000:], shown)
    finally:
        lab.stop()
    for i in range(4):
        children = ledger.find(parent=f"many{i}-1")
        assert len(children) == 3 and {c["status"] for c in children} == {"SUCCEEDED"}
        assert all(len(ledger.metric_points([c["id"]])) == 5 for c in children)
    print(f"four kernels, three-child sweeps at once: {took:.1f} s")

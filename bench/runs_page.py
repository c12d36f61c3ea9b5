"""The runs page and its API over a ledger of 10,000 runs: the API's first page (over
HTTP, from a real Jupyter server) and the page's first render (Chromium, from navigation
to the first rows drawn), each as a ratio to reading the rows from the ledger directly in
this process, measured in the same run.

Two direct reads are the baselines: the whole ledger (`Ledger.find()`, what a table of
every run costs without paging, and what shipping the ledger to a browser would start
from), and the first page's rows alone (`Ledger.page(limit=50)`, the floor: no HTTP, no
JSON, no browser).

    python bench/runs_page.py [--runs 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from nbcontainer_kernel.remote.ledger import Ledger

CHROMIUM = "/usr/bin/chromium"


def fill(ledger: Ledger, runs: int, seed: int = 7) -> None:
    """`runs` runs as the runner records them (params, metrics, phases, a sweep's
    children under every tenth), in one transaction."""
    rnd = random.Random(seed)
    rows = []
    now = time.time() - runs
    parent = None
    for i in range(runs):
        name = rnd.choice(["fit", "grid", "forecast", "etl"])
        status = rnd.choice(["SUCCEEDED"] * 6 + ["FAILED", "CANCELLED"])
        created = now + i
        phases = [[p, created + k] for k, p in enumerate(["SNAPSHOT", "BUILD", "RUNNING", status])]
        if i % 10 == 0:
            parent = f"{name}-{i}"
        child = parent if i % 10 else None
        rows.append(
            (
                f"{name}-{i}" if not child else f"{parent}-c{i}",
                name,
                i,
                rnd.choice(["local", "batch", "sagemaker"]),
                json.dumps({"alpha": rnd.random(), "layers": rnd.randint(1, 8)}),
                json.dumps({"loss": rnd.random(), "acc": rnd.random()}),
                json.dumps(phases),
                status,
                child,
                rnd.choice(["cell", "notebook"]),
                json.dumps({"mae": rnd.random()}),
                created,
                created + 4,
            )
        )
    sql = (
        "INSERT INTO runs (id, name, seq, backend, params, metrics, phases, status, parent, "
        "kind, recorded, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    ledger._write("fill the bench's ledger", lambda db: db.executemany(sql, rows))


def _median(fn: Any, repeat: int) -> float:
    took = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(root: Path, db: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port, token = _free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            *(["--allow-root"] if os.getuid() == 0 else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NBCONTAINER_RUNS_DB": str(db)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _get(url, token, "/api/status")
            return proc, url, token
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the Jupyter server did not start")


def _get(url: str, token: str, path: str) -> bytes:
    req = urllib.request.Request(url + path, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def first_render(url: str, token: str, repeat: int) -> float:
    """Seconds from navigation to the runs table's first rows drawn (median)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/lab?token={token}")  # logs in (the cookie)
            took = []
            for _ in range(repeat + 1):
                page.goto(f"{url}/nbcontainer/runs")
                page.wait_for_selector("#runs tbody tr")
                took.append(page.evaluate("performance.now()") / 1000)
            return statistics.median(took[1:])  # the first warms the browser's caches
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbc-bench-runs-") as tmp:
        db = Path(tmp) / "ledger" / "runs.db"
        ledger = Ledger(db)
        print(f"filling a ledger with {args.runs:,} runs", file=sys.stderr)
        fill(ledger, args.runs)
        whole = _median(lambda: ledger.find(), args.repeat)
        rows = _median(lambda: ledger.page(top_only=True, limit=51), args.repeat)
        proc, url, token = _server(Path(tmp), db)
        try:
            path = "/nbcontainer/api/runs?parent=none&limit=50"
            page = json.loads(_get(url, token, path))
            assert len(page["runs"]) == 50 and page["next"], "a first page of 50, more after"
            api = _median(lambda: _get(url, token, path), args.repeat)
            render = first_render(url, token, args.repeat) if Path(CHROMIUM).exists() else None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"runs page over a ledger of {args.runs:,} runs; medians of {args.repeat}:")
    print(f"  baseline: the whole ledger read directly (Ledger.find)    {whole * 1e3:8.1f} ms")
    print(f"  floor:    the first page's rows read directly (51 rows)   {rows * 1e3:8.1f} ms")
    print(
        f"  the API's first page over HTTP                          {api * 1e3:8.1f} ms"
        f"   {api / whole:5.2f}x the whole read, {api / rows:6.1f}x the rows alone"
    )
    if render is not None:
        print(
            f"  the page's first render in Chromium                     {render * 1e3:8.1f} ms"
            f"   {render / whole:5.2f}x the whole read, {render / rows:6.1f}x the rows alone"
        )
    else:
        print("  the page's first render: no Chromium (scripts/setup.sh --browser installs it)")


if __name__ == "__main__":
    main()

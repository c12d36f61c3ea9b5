"""Snapshot and restore throughput of a ~1 GiB namespace vs one plain file, in one run.

The namespace holds numpy arrays and a DataFrame. "snapshot" is
nbcontainer_kernel.snapshot() of those variables (serialize + manifest +
digest) into a directory; "restore" reads every variable back. The baseline
writes the same number of bytes as one file and reads it back, in the same
directory. Each write starts after os.sync(), so that neither waits on the other's
writeback. Throughputs are reported as ratios (targets: snapshot >= 0.8 of a plain write,
restore >= 1.0 of a plain read). Restore memory-maps arrays' buffers: pages are read as
they are touched, so "restore" is what a run pays before its cell starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nbcontainer_kernel.runtime.cell import restore_namespace
from nbcontainer_kernel.snapshots import snapshot


def make_namespace(total_mib: int) -> dict:
    rng = np.random.default_rng(0)
    quarter = total_mib * 1024 * 1024 // 4
    n = quarter // 8
    return {
        "weights": rng.standard_normal(n),
        "embeddings": rng.standard_normal((n // 64, 64)).astype(np.float64),
        "counts": rng.integers(0, 1 << 30, n, dtype=np.int64),
        "frame": pd.DataFrame(
            {"a": rng.standard_normal(n // 2), "b": rng.integers(0, 100, n // 2)}
        ),
    }


def touch_page_by_page(values: dict) -> None:
    """Read one byte of every 4 KiB page of every array (what a cell that uses all its
    data makes a memory-mapped restore read)."""
    for v in values.values():
        arrays = [v] if isinstance(v, np.ndarray) else [v[c].to_numpy() for c in v.columns]
        for a in arrays:
            flat = a.reshape(-1).view(np.uint8)
            int(flat[::4096].sum())


def plain_file(path: Path, nbytes: int) -> tuple[float, float]:
    block = os.urandom(64 * 1024 * 1024)
    os.sync()  # both writes start with no dirty pages waiting (no writeback throttling)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        written = 0
        while written < nbytes:
            fh.write(block[: min(len(block), nbytes - written)])
            written += len(block)
        # No fsync: the snapshot does not fsync either; both land in the page cache.
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    buf = bytearray(os.path.getsize(path))
    with open(path, "rb", buffering=0) as fh:
        fh.readinto(buf)
    read = time.perf_counter() - t0
    path.unlink()
    return write, read


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = p.parse_args()
    ns = make_namespace(args.mib)
    root = Path(tempfile.mkdtemp(prefix="nbcontainer-bench-", dir=args.dir))
    rows = []
    try:
        for _ in range(args.repeat):
            os.sync()
            t0 = time.perf_counter()
            snap = snapshot(
                ns,
                "",
                variables=list(ns),
                env={},
                include_dependencies=False,
                include_sources=False,
                dest=root / "snap",
            )
            snap_s = time.perf_counter() - t0
            nbytes = sum(f.stat().st_size for f in (root / "snap" / "vars").iterdir())
            t0 = time.perf_counter()
            back = restore_namespace(snap)
            restore_s = time.perf_counter() - t0
            touch_page_by_page(back)
            touched_s = time.perf_counter() - t0
            assert set(back) == set(ns)
            del back
            shutil.rmtree(root / "snap")
            write_s, read_s = plain_file(root / "plain.bin", nbytes)
            rows.append((nbytes, snap_s, restore_s, write_s, read_s, touched_s))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    nbytes = rows[0][0]
    med = [statistics.median(r[i] for r in rows) for i in range(1, 6)]
    mb = nbytes / 1e6
    print(f"namespace: {nbytes / 2**30:.2f} GiB in 4 variables; median of {args.repeat}")
    print(
        f"  snapshot  {mb / med[0]:8.0f} MB/s   plain write {mb / med[2]:8.0f} MB/s   ratio "
        f"{med[2] / med[0]:.2f}"
    )
    print(
        f"  restore   {mb / med[1]:8.0f} MB/s   plain read  {mb / med[3]:8.0f} MB/s   ratio "
        f"{med[3] / med[1]:.2f}"
    )
    print(
        f"  restore, then every page touched once {mb / med[4]:8.0f} MB/s   ratio "
        f"{med[3] / med[4]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The snapshot and results format's speed-minded parts: arrays restored through a
copy-on-write memory map (writable, the file untouched, checked when read from a run),
Arrow IPC compressed only when outputs cross a network, and the snapshot digest hashed
in chunks on worker threads while the snapshot is written."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.remote.results import load_results
from nbcontainer_kernel.runtime import snapshot as snapshot_format
from nbcontainer_kernel.runtime.contract import OUTPUT_URI_ENV, PLATFORM_ENV
from nbcontainer_kernel.runtime.errors import UntrustedResults
from nbcontainer_kernel.runtime.paths import Paths
from nbcontainer_kernel.runtime.serialize import deserialize, serialize_value
from nbcontainer_kernel.runtime.trust import RunOutputs, new_key, seal
from nbcontainer_kernel.snapshots import Snapshot, snapshot
from tests.helpers import examples


def _storage(arr: np.ndarray) -> object:
    """What an array's memory finally belongs to."""
    base: object = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return getattr(base, "obj", base)


def test_a_restored_array_is_mapped_writable_and_leaves_its_file_alone(tmp_path: Path) -> None:
    arr = np.arange(1 << 16, dtype=np.int64)
    entry = serialize_value("arr", arr, tmp_path)
    back = deserialize(entry, tmp_path)
    assert isinstance(_storage(back), mmap.mmap) and back.flags.writeable
    np.testing.assert_array_equal(back, arr)
    back[:10] = -1  # copy-on-write: the file keeps what was written
    again = deserialize(entry, tmp_path)
    np.testing.assert_array_equal(again, arr)


def _sealed_run(tmp_path: Path, values: dict) -> tuple[Path, str]:
    ml, key = tmp_path / "ml", new_key()
    paths = Paths(snapshot=tmp_path / "unused", ml=ml)
    from nbcontainer_kernel.runtime.cell import write_results

    index = write_results(dict(values), list(values), None, [], {}, paths)
    seal(ml, key, index)
    return ml, key


def test_a_runs_array_is_checked_through_its_map_and_a_changed_one_refused(
    tmp_path: Path,
) -> None:
    ml, key = _sealed_run(tmp_path, {"arr": np.arange(50_000, dtype=np.float64)})
    got = load_results(RunOutputs(ml, key, "signed"), ["arr"])["arr"]
    assert got[-1] == 49_999.0
    buffers = sorted((ml / "model").glob("arr.buf*"))
    data = bytearray(buffers[0].read_bytes())
    data[100] ^= 0xFF
    buffers[0].write_bytes(bytes(data))
    with pytest.raises(UntrustedResults, match="differs from the signed digest"):
        load_results(RunOutputs(ml, key, "signed"), ["arr"])


@pytest.mark.parametrize(
    ("env", "compressed"),
    [({}, False), ({OUTPUT_URI_ENV: "s3://b/p/"}, True), ({PLATFORM_ENV: "sagemaker"}, True)],
    ids=["stays here", "uploaded from Batch", "returned by SageMaker"],
)
def test_arrow_files_are_compressed_only_when_outputs_cross_a_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], compressed: bool
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    frame = pd.DataFrame({"a": np.zeros(20_000), "b": pd.Categorical(["x", "y"] * 10_000)})
    entry = serialize_value("frame", frame, tmp_path)
    raw = frame.memory_usage(deep=False).sum()
    size = (tmp_path / entry.files[0]).stat().st_size
    assert bool(size < raw / 10) is compressed
    with ipc.open_file(str(tmp_path / entry.files[0])) as reader:
        assert reader.num_record_batches >= 1
    pd.testing.assert_frame_equal(deserialize(entry, tmp_path), frame)


# ---------------------------------------------------------------- digest
def test_a_digest_hashed_while_writing_equals_one_hashed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_format, "_CHUNK", 1 << 16)  # many chunks from small arrays
    ns = {"a": np.arange(100_000), "b": np.ones((300, 300)), "c": [1, 2]}
    snap = snapshot(ns, "y = a", dest=tmp_path / "s", include_dependencies=False)
    assert snap.verify(snap.digest)  # recomputed from scratch, file by file
    fresh = Snapshot.load(tmp_path / "s")
    assert fresh._compute_digest() == snap.digest


@settings(max_examples=examples(25), deadline=None)
@given(position=st.integers(min_value=0, max_value=(3 << 16) - 1))
def test_one_changed_byte_anywhere_changes_the_digest(position: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        orig = snapshot_format._CHUNK
        snapshot_format._CHUNK = 1 << 16
        try:
            snap = snapshot(
                {"a": np.zeros(3 << 13)}, "y = a", dest=Path(tmp) / "s", include_dependencies=False
            )
            buf = next((Path(tmp) / "s" / "vars").glob("a.buf*"))
            data = bytearray(buf.read_bytes())
            data[position % len(data)] ^= 1
            buf.write_bytes(bytes(data))
            assert not snap.verify(snap.digest)
        finally:
            snapshot_format._CHUNK = orig


def test_a_file_changed_after_it_was_queued_is_hashed_again(tmp_path: Path) -> None:
    snap = snapshot({"a": np.zeros(1000)}, "y = a", dest=tmp_path / "s", include_dependencies=False)
    extra = tmp_path / "s" / "vars" / "extra.bin"
    extra.write_bytes(b"first")
    snap.hash_later(extra)
    extra.write_bytes(b"second, longer")
    snap.write_manifest()
    assert snap.verify(snap.digest)

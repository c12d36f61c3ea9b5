"""How one value becomes files and back: the serializer of snapshots and results.

* pandas DataFrames and Series go to Arrow IPC files, which keep every Arrow
  type (categoricals of any category type, nullable and pyarrow dtypes,
  timezones, durations) and the index; a frame that Arrow cannot store
  exactly (object columns of mixed types, ...) is pickled instead, and the
  entry's ``note`` says why.
* Small values made only of JSON types (int, float, str, bool, None, lists
  and str-keyed dicts of them) go to JSON: readable without a pickle.
* Everything else goes through cloudpickle with protocol 5 and out-of-band
  buffers, so large numpy arrays are written and read as raw buffers.
  Functions and classes defined in ``__main__`` travel by value.

Files are read through a :class:`FileSource`: a plain directory for a
snapshot inside its own image, or a verified view of a run's outputs on the
host (:mod:`nbcontainer_kernel.runtime.trust`), which checks each file's digest as
it reads it.

This module runs on both sides (host kernel and run container) and imports
pandas, pyarrow and cloudpickle only when a value needs them.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import pickle
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import SerializationError

__all__ = [
    "Serialized",
    "serialize_value",
    "deserialize",
    "SerializationError",
    "type_name",
    "FileSource",
    "DirectorySource",
    "ARROW",
    "PARQUET",
    "JSON",
    "CLOUDPICKLE",
    "IMPORT",
    "DATA_SERIALIZERS",
    "PICKLE_SERIALIZERS",
]

ARROW = "arrow"
PARQUET = "parquet"  # read only: what runs made before Arrow IPC wrote
JSON = "json"
CLOUDPICKLE = "cloudpickle"
IMPORT = "import"  # snapshots only: a module travels as its name
#: Serializers whose files are data: reading them runs no code of the writer's.
DATA_SERIALIZERS = frozenset({ARROW, PARQUET, JSON})
PICKLE_SERIALIZERS = frozenset({CLOUDPICKLE})

_META_FREQ = b"nbcontainer.index_freq"
_META_KIND = b"nbcontainer.kind"  # b"series" or b"series-unnamed" for a Series
_JSON_MAX_BYTES = 64 * 1024  # larger values are pickled: JSON is slow for big lists


@dataclass
class Serialized:
    """Where a serialized value's files are (relative to its directory) and how to read them."""

    name: str
    type: str
    serializer: str
    files: list[str] = field(default_factory=list)
    size: int = 0
    module: str | None = None  # for serializer == "import"
    note: str | None = None  # why a DataFrame was pickled instead of stored as Arrow

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Serialized:
        fields: dict[str, Any] = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)


class FileSource(Protocol):
    """Where deserialize reads a value's files (names are plain file names)."""

    def read_bytes(self, name: str) -> bytes: ...

    def read_buffer(self, name: str) -> bytearray | mmap.mmap: ...


class DirectorySource:
    """A directory whose files are trusted as they are (a snapshot in its own image)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise SerializationError(f"{name!r} is not a plain file name")
        return self.root / name

    def read_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def read_buffer(self, name: str) -> bytearray | mmap.mmap:
        return map_file(self._path(name))


def type_name(obj: Any) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def _pandas_kind(obj: Any) -> str | None:
    if not type(obj).__module__.startswith("pandas"):
        return None
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return "frame"
    if isinstance(obj, pd.Series):
        return "series"
    return None


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "_"


def _json_exact(obj: Any, depth: int = 0) -> bool:
    """True when JSON gives back exactly this value (types included)."""
    if depth > 20:
        return False
    t = type(obj)
    if t in (int, str, bool, type(None)):
        return True
    if t is float:
        return True  # json writes NaN/Infinity and reads them back
    if t is list:
        return all(_json_exact(v, depth + 1) for v in obj)
    if t is dict:
        return all(type(k) is str and _json_exact(v, depth + 1) for k, v in obj.items())
    return False


def serialize_value(name: str, obj: Any, dest: Path, prefix: str = "") -> Serialized:
    """Write `obj` under dest (file names start with prefix + name); returns the entry.

    Raises SerializationError with the reason when the value cannot travel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = prefix + _safe_filename(name)
    tname = type_name(obj)
    if isinstance(obj, types.ModuleType):
        return Serialized(name, tname, IMPORT, module=obj.__name__)
    if isinstance(obj, io.IOBase):
        # cloudpickle would copy a readable file's content and lose its position: refuse.
        raise SerializationError(
            f"open file {getattr(obj, 'name', '')!r} ({tname}): pass its path "
            "and open it in the cell instead"
        )
    note = None
    kind = _pandas_kind(obj)
    if kind:
        try:
            return _write_arrow(name, tname, obj, kind, dest, base)
        except _NotExact as exc:
            note = f"pickled: Arrow would not keep it exactly ({exc})"
        (dest / f"{base}.arrow").unlink(missing_ok=True)
    elif _json_exact(obj):
        text = json.dumps(obj)
        if len(text) <= _JSON_MAX_BYTES:
            path = dest / f"{base}.json"
            path.write_text(text)
            return Serialized(name, tname, JSON, [path.name], len(text))
    entry = _write_pickle(name, tname, obj, dest, base)
    entry.note = note
    return entry


class _NotExact(Exception):
    """Arrow would change this frame; the message says how."""


def _frame_of(obj: Any, kind: str) -> tuple[Any, bytes | None]:
    if kind == "series":
        return obj.to_frame(), (b"series-unnamed" if obj.name is None else b"series")
    return obj, None


def _check_exact(frame: Any, table: Any) -> None:
    """Raise _NotExact unless Arrow gives the frame back as it is.

    Types are checked on an empty slice (cheap whatever the size); values only
    for object columns, where one Arrow type stands for many Python types.
    """
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(
            table.slice(0, 0).to_pandas(),
            frame.iloc[0:0],
            check_exact=True,
            check_dtype=True,
            check_index_type=True,
            check_column_type=True,
            check_categorical=True,
            check_freq=False,
            check_flags=True,
        )
        has_object = any(str(t) == "object" for t in frame.dtypes) or any(
            str(level.dtype) == "object" for level in getattr(frame.index, "levels", [frame.index])
        )
        if has_object:
            pd.testing.assert_frame_equal(
                table.to_pandas(),
                frame,
                check_exact=True,
                check_dtype=True,
                check_index_type=True,
                check_column_type=True,
                check_categorical=True,
                check_freq=False,
            )
    except AssertionError as exc:
        raise _NotExact(" ".join(str(exc).split())[:200]) from None


def _write_arrow(name: str, tname: str, obj: Any, kind: str, dest: Path, base: str) -> Serialized:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    frame, series_kind = _frame_of(obj, kind)
    if frame.columns.has_duplicates:
        raise _NotExact("duplicate column names")
    try:
        table = pa.Table.from_pandas(frame, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise _NotExact(f"{type(exc).__name__}: {exc}") from None
    _check_exact(frame, table)
    meta = dict(table.schema.metadata or {})
    freq = getattr(frame.index, "freqstr", None)
    if freq:  # Arrow keeps a DatetimeIndex but not its frequency
        meta[_META_FREQ] = freq.encode()
    if series_kind:
        meta[_META_KIND] = series_kind
    table = table.replace_schema_metadata(meta)
    path = dest / f"{base}.arrow"
    # Uncompressed when the file stays on this machine (a snapshot, a --local run's
    # results): written at disk speed and memory-mapped on read. Zstandard when a run's
    # outputs cross a network (uploaded to S3 from Batch, returned by SageMaker).
    options = ipc.IpcWriteOptions(compression="zstd" if _outputs_travel() else None)
    with ipc.new_file(str(path), table.schema, options=options) as writer:
        if table.num_rows:
            writer.write_table(table)
        else:  # an explicit empty batch: without one, categoricals lose their categories
            writer.write_batch(
                pa.RecordBatch.from_arrays(
                    [c.combine_chunks() for c in table.columns], schema=table.schema
                )
            )
    return Serialized(name, tname, ARROW, [path.name], path.stat().st_size)


def _outputs_travel() -> bool:
    """Whether this process is a run whose outputs go over a network (see above)."""
    from .contract import OUTPUT_URI_ENV, PLATFORM_ENV

    return bool(os.environ.get(OUTPUT_URI_ENV)) or os.environ.get(PLATFORM_ENV) == "sagemaker"


def _write_pickle(name: str, tname: str, obj: Any, dest: Path, base: str) -> Serialized:
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(f"{type(exc).__name__}: {exc}") from exc
    files = [f"{base}.pkl"]
    (dest / files[0]).write_bytes(data)
    size = len(data)
    for i, buf in enumerate(buffers):
        fname = f"{base}.buf{i}"
        raw = buf.raw()
        with open(dest / fname, "wb") as fh:
            fh.write(raw)
        size += raw.nbytes
        files.append(fname)
    return Serialized(name, tname, CLOUDPICKLE, files, size)


def deserialize(
    entry: Serialized | dict[str, Any], src: Path | FileSource, *, allow_pickle: bool = True
) -> Any:
    """Read a value written by serialize_value from `src` (a directory or a FileSource).

    allow_pickle=False refuses pickled values (SerializationError), so only data
    (Arrow, Parquet, JSON) is read.
    """
    if isinstance(entry, dict):
        entry = Serialized.from_dict(entry)
    source: FileSource = DirectorySource(src) if isinstance(src, (str, os.PathLike)) else src
    if entry.serializer == IMPORT:
        import importlib

        return importlib.import_module(entry.module or entry.name)
    if not entry.files:
        raise SerializationError(f"no files listed for {entry.name}")
    if entry.serializer == ARROW:  # read through a memory map: one copy, into pandas
        return _read_arrow(source.read_buffer(entry.files[0]))
    if entry.serializer == JSON:
        return json.loads(source.read_bytes(entry.files[0]))
    if entry.serializer == PARQUET:
        return _read_parquet(source.read_bytes(entry.files[0]), entry.note == "series")
    if entry.serializer == CLOUDPICKLE:
        if not allow_pickle:
            raise SerializationError(f"{entry.name} is a pickle, and pickles are not loaded here")
        import cloudpickle  # noqa: F401 - needed to load values pickled by value

        data = source.read_bytes(entry.files[0])
        buffers = [source.read_buffer(f) for f in entry.files[1:]]
        return pickle.loads(data, buffers=buffers)
    raise SerializationError(f"unknown serializer {entry.serializer!r} for {entry.name}")


def _read_arrow(data: bytes | bytearray | mmap.mmap) -> Any:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = ipc.open_file(pa.py_buffer(data)).read_all()
    meta = table.schema.metadata or {}
    frame = table.to_pandas()
    freq = meta.get(_META_FREQ)
    if freq and isinstance(frame.index, pd.DatetimeIndex):
        frame.index = pd.DatetimeIndex(frame.index, freq=freq.decode())
    kind = meta.get(_META_KIND)
    if kind in (b"series", b"series-unnamed"):
        series = frame.iloc[:, 0]
        return series.rename(None) if kind == b"series-unnamed" else series
    return frame


def _read_parquet(data: bytes, series: bool) -> Any:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    frame = table.to_pandas()
    freq = (table.schema.metadata or {}).get(_META_FREQ)
    if freq and isinstance(frame.index, pd.DatetimeIndex):
        frame.index = pd.DatetimeIndex(frame.index, freq=freq.decode())
    if series:
        col = frame.iloc[:, 0]
        return col.rename(None) if col.name == "__series__" else col
    return frame


def map_file(path: Path) -> bytearray | mmap.mmap:
    """A file's bytes, memory-mapped copy-on-write: arrays restored on it are writable, no
    byte is copied until it is written, and pages are read as they are touched (zero-copy
    restore). An empty file gives an empty bytearray (nothing to map)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return bytearray()
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception, or a stand-in carrying its type, message and traceback."""
    import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(data)
        return data
    except Exception:
        stand_in: bytes = cloudpickle.dumps(
            RuntimeError(f"{type(exc).__name__}: {exc}"), protocol=5
        )
        return stand_in

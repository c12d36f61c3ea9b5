"""How one value becomes files and back: the serializer of snapshots and results.

pandas DataFrames and Series go to Parquet (pyarrow), keeping dtypes,
categoricals and the index; everything else goes through cloudpickle with
protocol 5 and out-of-band buffers, so large numpy arrays are written and
read as raw buffers without extra copies. Functions and classes defined in
``__main__`` travel by value (cloudpickle's default for ``__main__``).

This module runs on both sides (host kernel and run container) and imports
pandas, pyarrow and cloudpickle only when a value needs them.
"""

from __future__ import annotations

import io
import os
import pickle
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Serialized", "serialize_value", "deserialize", "SerializationError", "type_name"]

PARQUET = "parquet"
CLOUDPICKLE = "cloudpickle"
IMPORT = "import"
_FREQ_KEY = b"nbcontainer.index_freq"


class SerializationError(Exception):
    """A value cannot be serialized; the message is the reason shown to the user."""


@dataclass
class Serialized:
    """Where a serialized value's files are (relative to its directory) and how to read them."""

    name: str
    type: str
    serializer: str
    files: list[str] = field(default_factory=list)
    size: int = 0
    module: str | None = None  # for serializer == "import"
    note: str | None = None  # e.g. why a DataFrame fell back to cloudpickle

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Serialized":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def type_name(obj: Any) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def _is_pandas(obj: Any) -> str | None:
    mod = type(obj).__module__
    if not mod.startswith("pandas"):
        return None
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return "frame"
    if isinstance(obj, pd.Series):
        return "series"
    return None


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "_"


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
        raise SerializationError(f"open file {getattr(obj, 'name', '')!r} ({tname}): pass its path "
                                 "and open it in the cell instead")
    note = None
    kind = _is_pandas(obj)
    if kind:
        try:
            return _write_parquet(name, tname, obj, kind, dest, base)
        except Exception as exc:  # mixed object columns and the like: pickle instead
            note = f"Parquet failed ({type(exc).__name__}: {exc}); pickled instead"
            for f in dest.glob(base + ".parquet"):
                f.unlink()
    entry = _write_pickle(name, tname, obj, dest, base)
    entry.note = note
    return entry


def _write_parquet(name: str, tname: str, obj: Any, kind: str, dest: Path, base: str) -> Serialized:
    frame = obj.to_frame(name="__series__" if obj.name is None else obj.name) if kind == "series" else obj
    if kind == "frame" and not all(isinstance(c, str) for c in frame.columns):
        raise SerializationError("non-string column names")
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = dest / f"{base}.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=True)
    freq = getattr(frame.index, "freqstr", None)
    if freq:  # Parquet keeps a DatetimeIndex but not its frequency
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _FREQ_KEY: freq.encode()})
    # No compression: snapshots and results stay local or cross a fast link, and
    # writing at disk speed matters more than a smaller file.
    pq.write_table(table, path, compression="none")
    return Serialized(name, tname, PARQUET, [path.name], path.stat().st_size,
                      note="series" if kind == "series" else None)


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


def deserialize(entry: Serialized | dict[str, Any], src: Path) -> Any:
    """Read a value written by serialize_value from directory src."""
    if isinstance(entry, dict):
        entry = Serialized.from_dict(entry)
    if entry.serializer == IMPORT:
        import importlib

        return importlib.import_module(entry.module or entry.name)
    if entry.serializer == PARQUET:
        import pandas as pd

        import pyarrow.parquet as pq

        table = pq.read_table(src / entry.files[0])
        frame = table.to_pandas()
        freq = (table.schema.metadata or {}).get(_FREQ_KEY)
        if freq and isinstance(frame.index, pd.DatetimeIndex):
            frame.index = pd.DatetimeIndex(frame.index, freq=freq.decode())
        if entry.note == "series":
            series = frame.iloc[:, 0]
            return series.rename(None) if series.name == "__series__" else series
        return frame
    if entry.serializer == CLOUDPICKLE:
        import cloudpickle  # noqa: F401 - needed to load values pickled by value

        data = (src / entry.files[0]).read_bytes()
        buffers = [_read_buffer(src / f) for f in entry.files[1:]]
        return pickle.loads(data, buffers=buffers)
    raise SerializationError(f"unknown serializer {entry.serializer!r} for {entry.name}")


def _read_buffer(path: Path) -> bytearray:
    # A bytearray, so arrays restored on top of it are writable, read without a copy.
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as fh:
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = fh.readinto(view[pos:])
            if not n:
                break
            pos += n
    return buf


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception, or a stand-in carrying its type, message and traceback."""
    import cloudpickle

    try:
        data = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(data)
        return data
    except Exception:
        return cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"), protocol=5)

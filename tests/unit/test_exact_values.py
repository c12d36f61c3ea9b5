"""Every value comes back exactly: DataFrames and Series of every dtype and index kind,
through the snapshot round trip (capture -> restore in the runner) and the results round
trip (the runner's write -> seal -> the host's verified read). Property-based (hypothesis)."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcontainer_kernel.remote.results import RunResult
from nbcontainer_kernel.runtime.cell import restore_namespace, write_results
from nbcontainer_kernel.runtime.paths import Paths
from nbcontainer_kernel.runtime.trust import new_key, seal
from nbcontainer_kernel.snapshots import snapshot
from tests.helpers import examples

EXACT = {
    "check_exact": True,
    "check_dtype": True,
    "check_index_type": True,
    "check_categorical": True,
    "check_freq": True,
}

_INT = st.integers(-(2**40), 2**40)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_TS = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1))


def _column(kind: str, n: int) -> st.SearchStrategy[Any]:
    """A strategy for one column of `n` values of a given kind."""
    lists = lambda elems: st.lists(elems, min_size=n, max_size=n)  # noqa: E731
    makers = {
        "int64": lambda: lists(_INT).map(lambda v: pd.Series(v, dtype="int64")),
        "int32": lambda: lists(st.integers(-(2**31), 2**31 - 1)).map(
            lambda v: pd.Series(v, dtype="int32")
        ),
        "uint8": lambda: lists(st.integers(0, 255)).map(lambda v: pd.Series(v, dtype="uint8")),
        "float64": lambda: lists(_FLOAT).map(lambda v: pd.Series(v, dtype="float64")),
        "float32": lambda: lists(st.floats(width=32)).map(lambda v: pd.Series(v, dtype="float32")),
        "bool": lambda: lists(st.booleans()).map(lambda v: pd.Series(v, dtype="bool")),
        "str": lambda: lists(st.one_of(_TEXT, st.none())).map(lambda v: pd.Series(v, dtype="str")),
        "object-str": lambda: lists(_TEXT).map(lambda v: pd.Series(v, dtype=object)),
        "string[python]": lambda: lists(st.one_of(_TEXT, st.none())).map(
            lambda v: pd.Series(v, dtype="string[python]")
        ),
        "string[pyarrow]": lambda: lists(st.one_of(_TEXT, st.none())).map(
            lambda v: pd.Series(v, dtype="string[pyarrow]")
        ),
        "Int64": lambda: lists(st.one_of(_INT, st.none())).map(
            lambda v: pd.Series(v, dtype="Int64")
        ),
        "boolean": lambda: lists(st.one_of(st.booleans(), st.none())).map(
            lambda v: pd.Series(v, dtype="boolean")
        ),
        "Float64": lambda: lists(st.one_of(st.floats(allow_nan=False), st.none())).map(
            lambda v: pd.Series(v, dtype="Float64")
        ),
        "category-int": lambda: st.tuples(lists(st.integers(0, 3)), st.booleans()).map(
            lambda t: pd.Series(pd.Categorical(t[0], categories=[0, 1, 2, 3], ordered=t[1]))
        ),
        "category-str": lambda: lists(st.sampled_from(["a", "b", "c"])).map(
            lambda v: pd.Series(pd.Categorical(v, categories=["c", "b", "a"]))
        ),
        "datetime": lambda: lists(_TS).map(lambda v: pd.Series(pd.to_datetime(v))),
        "datetime-tz": lambda: st.tuples(
            lists(_TS), st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo"])
        ).map(
            lambda t: pd.Series(pd.to_datetime(t[0])).dt.tz_localize(
                t[1], ambiguous="NaT", nonexistent="NaT"
            )
        ),
        "datetime-s": lambda: lists(_TS).map(
            lambda v: pd.Series(pd.to_datetime(v)).astype("datetime64[s]")
        ),
        "timedelta": lambda: lists(st.integers(-(10**12), 10**12)).map(
            lambda v: pd.Series(pd.to_timedelta(v, unit="us"))
        ),
        "object-mixed": lambda: lists(
            st.one_of(_INT, _TEXT, st.none(), st.floats(allow_nan=False))
        ).map(lambda v: pd.Series(v, dtype=object)),
    }
    return makers[kind]()


KINDS = [
    "int64",
    "int32",
    "uint8",
    "float64",
    "float32",
    "bool",
    "str",
    "object-str",
    "string[python]",
    "string[pyarrow]",
    "Int64",
    "boolean",
    "Float64",
    "category-int",
    "category-str",
    "datetime",
    "datetime-tz",
    "datetime-s",
    "timedelta",
    "object-mixed",
]


@st.composite
def indexes(draw: st.DrawFn, n: int) -> pd.Index:
    kind = draw(
        st.sampled_from(["range", "range-step", "datetime-freq", "multi", "named-int", "named-str"])
    )
    name = draw(st.sampled_from([None, "idx", "when"]))
    if kind == "range":
        return pd.RangeIndex(n, name=name)
    if kind == "range-step":
        start, step = draw(st.integers(-5, 5)), draw(st.integers(1, 4))
        return pd.RangeIndex(start, start + n * step, step, name=name)
    if kind == "datetime-freq":
        freq = draw(st.sampled_from(["D", "h", "min", "W-SUN", "MS"]))
        return pd.date_range("2024-01-01", periods=n, freq=freq, name=name)
    if kind == "multi":
        a = draw(st.lists(st.sampled_from(["x", "y"]), min_size=n, max_size=n))
        return pd.MultiIndex.from_arrays([a, list(range(n))], names=["k", name])
    if kind == "named-int":
        return pd.Index(
            draw(st.lists(_INT, min_size=n, max_size=n)), dtype="int64", name=name or "i"
        )
    return pd.Index(draw(st.lists(_TEXT, min_size=n, max_size=n)), dtype="str", name=name or "s")


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 5))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=0, max_size=4))
    data = {f"c{i}_{kind}": draw(_column(kind, n)).array for i, kind in enumerate(kinds)}
    index = draw(indexes(n))
    if not kinds:
        return pd.DataFrame(index=index)
    return pd.DataFrame(data, index=index)


@st.composite
def series(draw: st.DrawFn) -> pd.Series:
    n = draw(st.integers(0, 5))
    values = draw(_column(draw(st.sampled_from(KINDS)), n))
    return pd.Series(
        values.array, index=draw(indexes(n)), name=draw(st.sampled_from([None, "v", 0, "c1"]))
    )


def _snapshot_round_trip(value: Any, tmp: Path) -> Any:
    with snapshot(
        {"value": value},
        "value",
        dest=tmp / "snap",
        cwd=tmp,
        include_dependencies=False,
        include_sources=False,
    ) as snap:
        return restore_namespace(snap)["value"]


def _result_round_trip(value: Any, tmp: Path) -> tuple[Any, dict[str, Any]]:
    paths = Paths(snapshot=tmp / "snap", ml=tmp / "ml")
    index = write_results({"value": value}, ["value"], None, [], {}, paths)
    key = new_key()
    seal(paths.ml, key, index)
    result = RunResult(image="i", exit_code=0, output_dir=paths.ml, key=key)
    assert result.verify() == "signed"
    return result.results["value"], result.index["variables"]["value"]


_SETTINGS = settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(frames())
def test_dataframes_come_back_exactly(df: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pd.testing.assert_frame_equal(_snapshot_round_trip(df, tmp), df, **EXACT)
        back, entry = _result_round_trip(df, tmp)
        pd.testing.assert_frame_equal(back, df, **EXACT)
        # What Arrow cannot keep is pickled, and the manifest says so.
        assert entry["serializer"] == "arrow" or entry["note"].startswith(
            "pickled: Arrow would not keep it"
        )


@_SETTINGS
@given(series())
def test_series_come_back_exactly(s: pd.Series) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pd.testing.assert_series_equal(_snapshot_round_trip(s, tmp), s, **EXACT)
        back, _ = _result_round_trip(s, tmp)
        pd.testing.assert_series_equal(back, s, **EXACT)


def test_dtypes_arrow_keeps_are_not_pickled(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "ci": pd.Categorical([1, 2, 1]),
            "tz": pd.date_range("2024", periods=3, tz="UTC"),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
            "s": pd.array(["a", None, "c"], dtype="string[pyarrow]"),
        },
        index=pd.date_range("2024-01-01", periods=3, freq="D", name="day"),
    )
    back, entry = _result_round_trip(df, tmp_path)
    assert entry["serializer"] == "arrow"
    pd.testing.assert_frame_equal(back, df, **EXACT)


def test_mixed_object_columns_are_pickled_and_say_why(tmp_path: Path) -> None:
    df = pd.DataFrame({"o": pd.Series([1, "a", 2.5], dtype=object)})
    back, entry = _result_round_trip(df, tmp_path)
    assert entry["serializer"] == "cloudpickle" and "Arrow would not keep it" in entry["note"]
    pd.testing.assert_frame_equal(back, df, **EXACT)


def test_large_numeric_arrays_still_travel_out_of_band(tmp_path: Path) -> None:
    arr = np.arange(100_000, dtype="float64")
    back, entry = _result_round_trip(arr, tmp_path)
    np.testing.assert_array_equal(back, arr)
    assert entry["serializer"] == "cloudpickle" and len(entry["files"]) == 2

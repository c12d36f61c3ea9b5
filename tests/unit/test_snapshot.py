"""Capture without Docker: names, variables, skips, secrets, dependencies, sources."""

from __future__ import annotations

import io
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbcontainer_kernel.runtime.names import names_imported
from nbcontainer_kernel.runtime.serialize import deserialize, serialize_value
from nbcontainer_kernel.snapshots import filter_env, names_assigned, names_read, snapshot
from nbcontainer_kernel.snapshots.sources import SourcesTooLarge, collect_sources


def test_names_read_tolerates_ipython_syntax() -> None:
    cell = (
        "%time model = train(docs, topics)\n!echo {out_dir}\n"
        "score = evaluate(model) + In[0]\n%matplotlib inline"
    )
    read = names_read(cell)
    assert {"train", "docs", "topics", "evaluate", "model"} <= read
    assert "In" not in read


def test_names_assigned_in_order_and_imports_apart() -> None:
    cell = (
        "import numpy as np\nfrom os import path\nx = 1\nfor i in range(2):\n    y = i\n"
        "with open('f') as fh:\n    pass\ndef f(): pass\nclass C: pass\nx += 1\n(z := 3)\n_hidden "
        "= 1\n_5 = 2"
    )
    assert names_assigned(cell) == ["x", "i", "y", "fh", "f", "C", "z", "_hidden"]
    assert names_imported(cell) == {"np", "path"}


def test_unserializable_values_are_skipped_and_reported(tmp_path: Path) -> None:
    fh = open(tmp_path / "f.txt", "w")  # noqa: SIM115 - an open file is the value under test
    sock = socket.socket()
    ns = {
        "fh": fh,
        "sock": sock,
        "lock": threading.Lock(),
        "gen": (i for i in range(3)),
        "ok": [1, 2],
        "np": np,
        "In": [],
        "_": 1,
    }
    try:
        with snapshot(
            ns,
            "fh; sock; lock; gen; ok; np; In; _; missing_name",
            cwd=tmp_path,
            include_dependencies=False,
        ) as snap:
            kinds = {v.name: (v.kind, v.skipped) for v in snap.variables}
            assert kinds["ok"] == ("value", None)
            assert kinds["np"] == ("module", None)
            for name, word in [
                ("fh", "open file"),
                ("sock", "socket"),
                ("lock", "lock"),
                ("gen", "generator"),
            ]:
                assert kinds[name][0] == "skipped" and word in kinds[name][1], kinds[name]
            assert "In" not in kinds and "_" not in kinds
            preview = snap.preview()
            assert list(preview.columns) == [
                "name",
                "kind",
                "type",
                "size",
                "serializer",
                "skipped",
            ]
            assert preview.set_index("name").loc["lock", "skipped"].startswith("TypeError")
            explicit = snapshot(
                ns, "", variables=["ok", "nope"], cwd=tmp_path, include_dependencies=False
            )
            assert [(v.name, v.kind) for v in explicit.variables] == [
                ("nope", "skipped"),
                ("ok", "value"),
            ]
            explicit.cleanup()
    finally:
        fh.close()
        sock.close()


def test_secret_env_values_are_nowhere_in_the_snapshot(tmp_path: Path) -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value-1",
        "MY_API_TOKEN": "token-value-2",
        "DB_URL": "postgres://user:pw-value-3@db/x",
        "PLAIN_SETTING": "keep-me",
        "PATH": "/bin",
    }
    kept, secrets, machine = filter_env(env)
    assert kept == {"PLAIN_SETTING": "keep-me"}
    assert secrets == ["AWS_SECRET_ACCESS_KEY", "DB_URL", "MY_API_TOKEN"] and machine == ["PATH"]
    with snapshot({"x": 1}, "x", env=env, cwd=tmp_path) as snap:
        blob = b"".join(p.read_bytes() for p in snap.directory.rglob("*") if p.is_file())
        for value in ("aws-secret-value-1", "token-value-2", "pw-value-3"):
            assert value.encode() not in blob
        assert b"keep-me" in blob
        assert snap.env_secrets_dropped == ["AWS_SECRET_ACCESS_KEY", "DB_URL", "MY_API_TOKEN"]


def test_dependencies_lock_and_python(tmp_path: Path) -> None:
    import importlib.metadata as md
    import sys

    with snapshot({}, "", cwd=tmp_path) as snap:
        assert snap.packages["pandas"] == md.version("pandas")
        assert "nbcontainer-kernel" not in snap.packages and "pip" not in snap.packages
        assert snap.python == ".".join(map(str, sys.version_info[:3]))
        lock = (snap.directory / "requirements.lock").read_text()
        assert f"pandas=={md.version('pandas')}" in lock.splitlines()


def test_local_code_with_ignore_file_and_cap(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("X = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "data.json").write_text("{}")
    (tmp_path / "secret_stuff.py").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "not_a_package.py").write_text("")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.py").write_text("")
    (tmp_path / ".nbcontainerignore").write_text("# comment\nsecret_*\n")
    tree = collect_sources(tmp_path, path=[str(tmp_path / "src")])
    assert [p.as_posix() for p in tree.files] == [
        "helpers.py",
        "pkg/__init__.py",
        "pkg/data.json",
        "src/lib.py",
    ]
    assert tree.path_entries == ["src"]
    (tmp_path / "big.py").write_bytes(b"#" * 3000)
    with pytest.raises(SourcesTooLarge, match="big.py"):
        collect_sources(tmp_path, max_bytes=1000, path=[])


def test_notebook_is_found_from_the_session(tmp_path: Path) -> None:
    nb = tmp_path / "analysis.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with snapshot({"__session__": str(nb)}, "", cwd=tmp_path, include_dependencies=False) as snap:
        assert snap.notebook == str(nb)
        assert (snap.directory / "notebook.ipynb").exists()
        assert (snap.directory / "cell.py").read_text() == ""


def test_serializers_round_trip_on_the_host(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.5, None, 2.0],
            "s": ["a", "b", None],
            "c": pd.Categorical(["x", "y", "x"]),
            "b": [True, False, True],
        },
        index=pd.date_range("2024-01-01", periods=3, freq="D", name="day"),
    )
    values = {
        "n": 3,
        "s": "text",
        "d": {"a": [1, {"b": (2, 3)}]},
        "arr": np.arange(12.0).reshape(3, 4),
        "df": df,
        "series": pd.Series([1, 2], name="v"),
        "lam": lambda v: v * 2,
    }
    for name, value in values.items():
        entry = serialize_value(name, value, tmp_path)
        back = deserialize(entry.to_dict(), tmp_path)
        if name == "df":
            assert entry.serializer == "arrow"
            pd.testing.assert_frame_equal(back, df)
            assert back.index.freq is None or back.index.freq == df.index.freq
        elif name == "series":
            pd.testing.assert_series_equal(back, values["series"])
        elif name == "arr":
            np.testing.assert_array_equal(back, value)
            assert back.flags.writeable and len(entry.files) == 2  # pickle + one out-of-band buffer
        elif name == "lam":
            assert back(21) == 42
        else:
            assert back == value


def test_mixed_object_column_falls_back_to_pickle(tmp_path: Path) -> None:
    df = pd.DataFrame({"mixed": [1, "a", 2.5]})
    entry = serialize_value("mixed", df, tmp_path)
    assert entry.serializer == "cloudpickle" and entry.note.startswith(
        "pickled: Arrow would not keep it exactly"
    )
    pd.testing.assert_frame_equal(deserialize(entry.to_dict(), tmp_path), df)


def test_preview_is_a_dataframe_without_io() -> None:
    buf = io.StringIO()
    with snapshot(
        {"buf": buf}, "buf", cwd="/", include_dependencies=False, include_sources=False
    ) as snap:
        assert snap.preview().loc[0, "name"] == "buf"

"""Run images through a real Docker engine: round trips, secrets, layer reuse,
failures, SageMaker's start, and notebook mode."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbcontainer_kernel.docker.engine import Engine
from nbcontainer_kernel.images.runs import RunImage, build_run_image
from nbcontainer_kernel.remote.local_run import run_image
from nbcontainer_kernel.remote.notebooks import containerize
from nbcontainer_kernel.remote.results import RunResult
from nbcontainer_kernel.runtime.trust import new_key
from nbcontainer_kernel.snapshots import snapshot

from .conftest import BASE_IMAGE

MAIN_CODE = """
def double(x):
    return 2 * x

class Counter:
    def __init__(self, start):
        self.n = start
    def bump(self):
        self.n += 1
        return self.n

square = lambda v: v * v

def make_adder(k):
    def add(v):
        return v + k
    return add

add_five = make_adder(5)
"""


@pytest.fixture
def images(engine: Engine) -> Iterator[list[str]]:
    """Run images a test makes; removed afterwards (dependency layers stay cached)."""
    made: list[str] = []
    yield made
    for tag in made:
        engine.remove_image(tag, force=True)


@pytest.fixture
def build_and_run(
    engine: Engine, images: list[str], tmp_path: Path
) -> Callable[..., tuple[RunImage, RunResult]]:
    def go(
        ns: dict, cell: str, params: dict | None = None, env: dict | None = None, **snap_kw
    ) -> tuple[RunImage, RunResult]:
        snap = snapshot(
            ns,
            cell,
            cwd=snap_kw.pop("cwd", tmp_path),
            env=env if env is not None else {},
            **snap_kw,
        )
        try:
            image = build_run_image(snap, base=BASE_IMAGE, engine=engine)
        finally:
            snap.cleanup()
        images.append(image.tag)
        result = run_image(
            image.tag, params=params, output_dir=tmp_path / f"out-{len(images)}", engine=engine
        )
        return image, result

    return go


def _main_namespace() -> dict:
    ns: dict = {"__name__": "__main__"}
    exec(MAIN_CODE, ns)  # defined "in __main__": travels by value
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def test_round_trip_through_a_run_image(build_and_run) -> None:
    df = pd.DataFrame(
        {
            "i": np.arange(4),
            "f": [0.5, None, 2.0, 3.5],
            "s": ["a", "b", None, "d"],
            "cat": pd.Categorical(["x", "y", "x", "z"]),
            "flag": [True, False, True, True],
        },
        index=pd.date_range("2024-01-01", periods=4, freq="D", name="day"),
    )
    ns = {
        "n": 7,
        "text": "héllo",
        "nested": {"a": [1, {"b": (2, 3)}], "c": None},
        "arr": np.arange(12.0).reshape(3, 4),
        "df": df,
        **_main_namespace(),
    }
    cell = (
        "n2 = double(n)\nc = Counter(n2)\nc.bump()\nsq = square(3)\nplus = add_five(1)\n"
        "arr2 = arr * 2\ndf2 = df.assign(g=df.i * 2)\ntext2 = text.upper()\n"
        "nested2 = {**nested, 'd': n2}\nprint('remote says', n2)"
    )
    image, res = build_and_run(ns, cell)
    assert res.exit_code == 0, res.failure or res.logs
    assert "remote says 14" in res.logs
    out = res.results
    assert out["n2"] == 14 and out["sq"] == 9 and out["plus"] == 6 and out["text2"] == "HÉLLO"
    assert out["c"].n == 15 and type(out["c"]).__name__ == "Counter"
    assert out["nested2"] == {"a": [1, {"b": (2, 3)}], "c": None, "d": 14}
    np.testing.assert_array_equal(out["arr2"], ns["arr"] * 2)
    expected = df.assign(g=df.i * 2)
    pd.testing.assert_frame_equal(out["df2"], expected)
    assert out["df2"].index.freqstr == "D" and str(out["df2"]["cat"].dtype) == "category"


def test_unserializable_values_are_skipped_and_the_run_works(build_and_run, tmp_path: Path) -> None:
    import socket
    import threading

    fh = open(tmp_path / "f.txt", "w")  # noqa: SIM115 - an open file is the value under test
    sock = socket.socket()
    try:
        ns = {
            "fh": fh,
            "sock": sock,
            "lock": threading.Lock(),
            "gen": (i for i in range(2)),
            "x": 20,
        }
        snap = snapshot(ns, "fh; sock; lock; gen\ny = x + 1", cwd=tmp_path, env={})
        assert sorted(v.name for v in snap.skipped) == ["fh", "gen", "lock", "sock"]
        snap.cleanup()
        _, res = build_and_run(
            ns, "try:\n    lock\nexcept NameError:\n    missing = True\ny = x + 1"
        )
        assert res.exit_code == 0, res.failure
        assert res.results == {"missing": True, "y": 21}
    finally:
        fh.close()
        sock.close()


def test_secret_env_values_are_in_no_layer(engine: Engine, build_and_run) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret-42",
        "MY_API_TOKEN": "tok-9f8e7d6c5b4a",
    }
    image, res = build_and_run(
        {"v": 1},
        f"import os\nseen = {{k: os.environ.get(k) for k in {list(secrets)!r}}}\n"
        "kept = os.environ.get('PLAIN')",
        env={**secrets, "PLAIN": "plain-value"},
    )
    assert res.exit_code == 0, res.failure
    assert res.results["seen"] == {k: None for k in secrets}
    assert res.results["kept"] == "plain-value"
    raw = b"".join(engine.get_image(image.tag).save(named=True))
    blobs = [raw]
    with tarfile.open(fileobj=io.BytesIO(raw)) as outer:
        for member in outer.getmembers():
            if member.isfile():
                blobs.append(outer.extractfile(member).read())
    assert any(b"plain-value" in b for b in blobs), "the search must see the snapshot layer"
    for value in secrets.values():
        assert not any(value.encode() in b for b in blobs), f"{value} is in the image"


def test_second_build_reuses_the_dependency_layer(
    engine: Engine, images: list[str], tmp_path: Path
) -> None:
    def build(ns: dict, packages: dict | None = None) -> RunImage:
        snap = snapshot(ns, "y = x", cwd=tmp_path, env={})
        if packages is not None:
            snap.packages = packages
            snap.write_manifest()
        try:
            image = build_run_image(snap, base=BASE_IMAGE, engine=engine)
        finally:
            snap.cleanup()
        images.append(image.tag)
        return image

    first = build({"x": 1})
    second = build({"x": 2})
    assert second.deps_reused and second.deps_image == first.deps_image
    deps_layers = engine.get_image(first.deps_image).attrs["RootFS"]["Layers"]
    layers1 = engine.get_image(first.tag).attrs["RootFS"]["Layers"]
    layers2 = engine.get_image(second.tag).attrs["RootFS"]["Layers"]
    assert layers1[: len(deps_layers)] == layers2[: len(deps_layers)] == deps_layers
    # Above the dependencies: this package's runtime (shared, from Docker's cache), then
    # the snapshot: the only new layer.
    assert len(layers2) == len(deps_layers) + 2
    assert layers1[-2] == layers2[-2] and layers1[-1] != layers2[-1]
    assert first.tag != second.tag

    snap = snapshot({"x": 3}, "y = x", cwd=tmp_path, env={})
    changed = dict(snap.packages)
    snap.cleanup()
    changed["six"] = "1.16.0" if changed.get("six") != "1.16.0" else "1.17.0"
    third = build({"x": 3}, changed)
    assert not third.deps_reused and third.deps_image != first.deps_image
    engine.remove_image(third.deps_image, force=True)  # a one-off lock: do not keep it


def test_failing_cell_is_reraised_with_the_remote_traceback(build_and_run) -> None:
    from nbcontainer_kernel.runtime.errors import RemoteExecutionError

    _, res = build_and_run({"d": {"a": 1}}, "before = 1\nvalue = d['missing']")
    assert res.exit_code not in (0, None)
    assert "KeyError: 'missing'" in res.failure and "Traceback" in res.failure
    assert res.results == {"before": 1}
    with pytest.raises(RemoteExecutionError) as err:
        res.raise_for_status()
    cause = err.value.__cause__
    assert isinstance(cause, KeyError)
    assert "d['missing']" in cause.__cause__.text


def test_started_as_sagemaker_starts_it(engine: Engine, images: list[str], tmp_path: Path) -> None:
    snap = snapshot({"alpha": 0.1}, "result = alpha * 10", cwd=tmp_path, env={})
    try:
        image = build_run_image(snap, base=BASE_IMAGE, engine=engine)
    finally:
        snap.cleanup()
    images.append(image.tag)
    config = tmp_path / "config"
    config.mkdir()
    (config / "hyperparameters.json").write_text(json.dumps({"alpha": "0.5"}))
    name = f"nbc-sagemaker-{os.getpid()}"
    key = new_key()  # as a platform passes it: in the job's environment
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--name",
            name,
            "-v",
            f"{config}:/opt/ml/input/config:ro",
            "-e",
            f"NBCONTAINER_RUN_KEY={key}",
            "--label",
            "io.nbcontainer.role=test",
            image.tag,
            "train",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "parameters from /opt/ml/input/config/hyperparameters.json" in proc.stdout
        stream, _ = engine.api.get_archive(name, "/opt/ml/model")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            tar.extractall(tmp_path / "sm")
    finally:
        engine.remove(name)
    res = RunResult(image=image.tag, exit_code=0, output_dir=tmp_path / "sm", key=key)
    assert res.results == {"result": 5.0}


def test_notebook_mode_with_parameters_and_failure(
    engine: Engine, images: list[str], tmp_path: Path
) -> None:
    params = new_code_cell("alpha = 0.1\nlabel = 'default'")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[
            params,
            new_code_cell(
                "from nbcontainer_kernel import log_metric\n"
                "print(f'{label}: {alpha}')\nlog_metric('alpha', alpha)"
            ),
            new_code_cell("assert alpha < 1, 'alpha too large'"),
        ]
    )
    path = tmp_path / "study.ipynb"
    nbformat.write(nb, path)
    image = containerize(
        path, f"nbcontainer-test/study:{os.getpid()}", base=BASE_IMAGE, engine=engine
    )
    images.append(image.tag)
    labels = engine.get_image(image.tag).labels
    assert json.loads(labels["io.nbcontainer.parameters"]) == [
        {"name": "alpha", "type": "float", "default": 0.1},
        {"name": "label", "type": "str", "default": "default"},
    ]
    assert labels["io.nbcontainer.source-notebook"] == str(path)
    assert labels["org.opencontainers.image.created"]

    ok = run_image(
        image.tag,
        args=["-p", "alpha", "0.5", "-p", "label", "tuned"],
        output_dir=tmp_path / "ok",
        engine=engine,
    )
    assert ok.exit_code == 0, ok.failure
    executed = nbformat.read(ok.data_dir / "study.ipynb", as_version=4)
    printed = [
        o["text"] for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
    ]
    assert printed[0].startswith("tuned: 0.5")
    assert (ok.data_dir / "study.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert ok.metrics == {"alpha": 0.5}

    # The CLI, with a failing parameter value: non-zero exit, the failing cell printed.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbcontainer_kernel.cli",
            "run",
            image.tag,
            "-p",
            "alpha",
            "2",
            "-o",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NBCONTAINER_RUNS_DB": str(tmp_path / "ledger" / "runs.db")},
    )
    assert proc.returncode == 1
    assert "notebook failed in cell 3: AssertionError: alpha too large" in proc.stderr
    assert "assert alpha < 1" in proc.stderr
    assert (tmp_path / "bad" / "output" / "data" / "study.ipynb").exists()
    assert (tmp_path / "bad" / "output" / "data" / "study.html").exists()

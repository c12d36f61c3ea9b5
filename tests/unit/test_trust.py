"""Signed run outputs: a real run's outputs (the runner on the host), then tampered with
every way the issue lists. Each is refused, names the file and why, and runs nothing:
a marker file that a loaded payload would create must never appear."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from nbcontainer_kernel.remote.results import RunResult, load_results
from nbcontainer_kernel.runtime.errors import UntrustedResults
from nbcontainer_kernel.runtime.trust import RunOutputs, new_key, seal, sign
from tests.helpers import run_runner

CELL = (
    "import pandas as pd\n"
    "df = pd.DataFrame({'a': [1, 2, 3], 'c': pd.Categorical([1, 2, 1])})\n"
    "obj = {1, 2, 3}\n"
    "score = 0.5\n"
    "score * 2"
)


class _Payload:
    """Unpickling this creates the marker: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run's outputs, made once; each test tampers with its own copy."""
    tmp = tmp_path_factory.mktemp("sealed")
    key = new_key()
    proc, res = run_runner(tmp, {}, CELL, key=key)
    assert proc.returncode == 0, proc.stderr
    return res.output_dir, key


@pytest.fixture
def run(sealed: tuple[Path, str], tmp_path: Path) -> tuple[Path, str, Path]:
    src, key = sealed
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out, key, tmp_path / "MARKER"


def _manifest(out: Path) -> dict:
    return json.loads((out / "model" / "results.json").read_text())


def _write_manifest(out: Path, doc: dict, key: str | None) -> None:
    """Rewrite results.json; signed with `key` (a crafted run that holds the key) or not."""
    doc = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"] = {"scheme": "hmac-sha256", "value": sign(doc, key)} if key else None
    (out / "model" / "results.json").write_text(json.dumps(doc))


# ------------------------------------------------------------------ tamperings
def tampered_pickle(out: Path, key: str, marker: Path) -> None:
    (out / "model" / "obj.pkl").write_bytes(pickle.dumps(_Payload(marker)))


def tampered_arrow(out: Path, key: str, marker: Path) -> None:
    data = bytearray((out / "model" / "df.arrow").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model" / "df.arrow").write_bytes(bytes(data))


def tampered_parquet(out: Path, key: str, marker: Path) -> None:
    # A run made by an older runner: Parquet. Its bytes changed after the run.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), out / "model" / "old.parquet")
    doc = _manifest(out)
    doc["variables"]["old"] = {
        "name": "old",
        "type": "pandas.DataFrame",
        "serializer": "parquet",
        "files": ["old.parquet"],
    }
    doc["files"] = {**doc["files"], "model/old.parquet": "0" * 64}
    _write_manifest(out, doc, key)


def extra_file(out: Path, key: str, marker: Path) -> None:
    (out / "model" / "extra.pkl").write_bytes(pickle.dumps(_Payload(marker)))


def renamed_file(out: Path, key: str, marker: Path) -> None:
    (out / "model" / "obj.pkl").rename(out / "model" / "obj2.pkl")


def traversal_in_files(out: Path, key: str, marker: Path) -> None:
    (out.parent / "host-secret.json").write_text('"host secret"')
    doc = _manifest(out)
    doc["variables"]["score"]["files"] = ["../../host-secret.json"]
    _write_manifest(out, doc, key)  # even signed by the key: never a path


def traversal_in_digests(out: Path, key: str, marker: Path) -> None:
    doc = _manifest(out)
    doc["files"]["model/../../host-secret.json"] = "0" * 64
    _write_manifest(out, doc, key)


def import_entry(out: Path, key: str, marker: Path) -> None:
    (out.parent / "nbc_evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    sys.path.insert(0, str(out.parent))
    doc = _manifest(out)
    doc["variables"]["evil"] = {
        "name": "evil",
        "type": "module",
        "serializer": "import",
        "module": "nbc_evil_module",
        "files": ["obj.pkl"],
    }
    _write_manifest(out, doc, key)


def missing_signature(out: Path, key: str, marker: Path) -> None:
    _write_manifest(out, _manifest(out), None)


def another_key(out: Path, key: str, marker: Path) -> None:
    _write_manifest(out, _manifest(out), new_key())


def edited_manifest(out: Path, key: str, marker: Path) -> None:
    doc = _manifest(out)
    doc["variables"]["score"]["files"] = ["obj.pkl"]  # not re-signed
    (out / "model" / "results.json").write_text(json.dumps(doc))


def symlink_to_host_file(out: Path, key: str, marker: Path) -> None:
    (out.parent / "host-file").write_text("secret")
    (out / "model" / "df.arrow").unlink()
    (out / "model" / "df.arrow").symlink_to(out.parent / "host-file")


def no_manifest(out: Path, key: str, marker: Path) -> None:
    (out / "model" / "results.json").unlink()


TAMPERINGS: list[tuple[Callable[[Path, str, Path], None], str, str]] = [
    (tampered_pickle, "model/obj.pkl", "differs from the signed digest"),
    (tampered_arrow, "model/df.arrow", "differs from the signed digest"),
    (tampered_parquet, "model/old.parquet", "differs from the signed digest"),
    (extra_file, "model/extra.pkl", "not in the signed manifest"),
    (renamed_file, "model/obj2.pkl", "not in the signed manifest"),
    (traversal_in_files, "../../host-secret.json", "not a plain file name"),
    (traversal_in_digests, "model/../../host-secret.json", "not a plain path"),
    (import_entry, "model/results.json", "serializer 'import', which runs never write"),
    (missing_signature, "model/results.json", "not signed"),
    (another_key, "model/results.json", "signature does not match"),
    (edited_manifest, "model/results.json", "signature does not match"),
    (symlink_to_host_file, "model/df.arrow", "not a regular file"),
    (no_manifest, "model/results.json", "no results manifest"),
]


@pytest.mark.parametrize(
    ("tamper", "file", "why"), TAMPERINGS, ids=[t[0].__name__ for t in TAMPERINGS]
)
def test_tampered_outputs_are_refused_and_run_nothing(run, tamper, file: str, why: str) -> None:
    out, key, marker = run
    tamper(out, key, marker)
    result = RunResult(image="i", exit_code=0, output_dir=out, key=key)
    with pytest.raises(UntrustedResults) as err:
        result.outputs.verify_all()
    assert err.value.file == file and why in err.value.reason, (err.value.file, err.value.reason)
    assert str(out) in str(err.value) and "Nothing was loaded" in str(err.value)
    assert result.verify() == f"refused: {file}: {err.value.reason}"
    # Everything a caller can ask for is refused, or harmless.
    for read in (
        lambda: result.results,
        result.raise_for_status,
        lambda: RunResult(image="i", exit_code=0, output_dir=out, key=key).results,
    ):
        with pytest.raises(UntrustedResults):
            read()
    assert result.exception() is None
    assert not marker.exists(), "a tampered output ran code on the host"
    assert "nbc_evil_module" not in sys.modules


def test_a_sealed_run_reads_back_with_every_value(run) -> None:
    out, key, _ = run
    result = RunResult(image="i", exit_code=0, output_dir=out, key=key)
    assert result.verify() == "signed"
    values = result.results
    assert values["obj"] == {1, 2, 3} and values["score"] == 0.5
    assert str(values["df"]["c"].dtype) == "category"
    assert result.last_value == 1.0
    entries = result.index["variables"]
    assert (
        entries["df"]["serializer"],
        entries["score"]["serializer"],
        entries["obj"]["serializer"],
    ) == ("arrow", "json", "cloudpickle")


def test_trust_never_loads_data_but_no_pickle(run) -> None:
    out, key, _ = run
    result = RunResult(image="i", exit_code=0, output_dir=out, key=key, trust="never")
    assert sorted(result.results) == ["df", "score"]


def test_trust_always_reads_runs_made_before_signing(run) -> None:
    out, _key, marker = run
    doc = _manifest(out)
    for k in ("files", "signature", "format"):
        doc.pop(k)
    (out / "model" / "results.json").write_text(json.dumps(doc))
    assert RunResult(image="i", exit_code=0, output_dir=out, key=None, trust="always").results[
        "obj"
    ] == {1, 2, 3}
    with pytest.raises(UntrustedResults, match="not signed"):
        RunResult(image="i", exit_code=0, output_dir=out, key=None).results  # noqa: B018
    # Paths and serializers are checked whatever the trust.
    doc["variables"]["score"]["files"] = ["../x"]
    (out / "model" / "results.json").write_text(json.dumps(doc))
    with pytest.raises(UntrustedResults, match="not a plain file name"):
        RunResult(image="i", exit_code=0, output_dir=out, key=None, trust="always").results  # noqa: B018
    assert not marker.exists()


def test_data_of_a_refused_run_is_readable_on_request_and_its_pickles_never(run) -> None:
    out, key, marker = run
    tampered_pickle(out, key, marker)
    import_entry(out, None, marker)  # type: ignore[arg-type]  # an unsigned manifest's entry
    outputs = RunOutputs(out, key)
    values = load_results(outputs, unverified_data=True)
    assert sorted(values) == ["df", "score"]
    pd.testing.assert_frame_equal(
        values["df"], pd.DataFrame({"a": [1, 2, 3], "c": pd.Categorical([1, 2, 1])})
    )
    assert not marker.exists()


def test_a_failed_run_gives_its_exception_only_when_verified(tmp_path: Path) -> None:
    proc, res = run_runner(tmp_path, {}, "raise KeyError('k')")
    assert proc.returncode == 1
    assert isinstance(res.exception(), KeyError)
    (res.output_dir / "output" / "exception.pkl").write_bytes(
        pickle.dumps(_Payload(tmp_path / "MARKER"))
    )
    assert (
        res.__class__(image="i", exit_code=1, output_dir=res.output_dir, key=res.key).exception()
        is None
    )
    with pytest.raises(Exception) as err:
        RunResult(image="i", exit_code=1, output_dir=res.output_dir, key=res.key).raise_for_status()
    assert type(err.value).__name__ == "RemoteExecutionError" and err.value.__cause__ is None
    assert not (tmp_path / "MARKER").exists()


def test_an_exception_pickle_that_is_not_an_exception_is_wrapped(tmp_path: Path) -> None:
    ml = tmp_path / "ml"
    (ml / "output").mkdir(parents=True)
    (ml / "output" / "exception.pkl").write_bytes(pickle.dumps({"not": "an exception"}))
    (ml / "output" / "failure").write_text("the cell raised: X\n\ntraceback")
    key = new_key()
    seal(ml, key, {"variables": {}})
    exc = RunResult(image="i", exit_code=1, output_dir=ml, key=key).exception()
    assert isinstance(exc, RuntimeError) and "stand-in: dict" in str(exc)
    assert exc.__cause__.text == "traceback"


def test_the_runner_keeps_the_key_from_the_cell(tmp_path: Path) -> None:
    key = new_key()
    proc, res = run_runner(
        tmp_path,
        {},
        "import os, subprocess\n"
        "seen = os.environ.get('NBCONTAINER_RUN_KEY')\n"
        "child = subprocess.run(['env'], capture_output=True, text=True).stdout",
        key=key,
    )
    assert proc.returncode == 0, proc.stderr
    assert res.results["seen"] is None and key not in res.results["child"]
    assert key not in proc.stdout + proc.stderr


def test_special_files_left_by_a_cell_do_not_travel(tmp_path: Path) -> None:
    cell = (
        "import os\nml = os.environ['NBCONTAINER_ML_ROOT']\n"
        "os.symlink('/etc/passwd', ml + '/model/link')\nos.mkfifo(ml + '/output/fifo')"
    )
    proc, res = run_runner(tmp_path, {}, cell)
    assert proc.returncode == 0, proc.stderr
    assert "not kept: model/link" in proc.stderr and "not kept: output/fifo" in proc.stderr
    assert res.verify() == "signed"

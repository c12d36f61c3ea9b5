"""One error model: every error is an NbcontainerError and the matching built-in, survives a
pickle with its fields, renders in one short block in IPython; daemon errors are classified
by their HTTP status code, once."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import docker.errors
import pytest

from nbcontainer_kernel.docker.engine import classify, translate_errors
from nbcontainer_kernel.runtime import errors
from nbcontainer_kernel.runtime.errors import (
    CommandNotFound,
    Conflict,
    EngineError,
    ImageNotFound,
    NbcontainerError,
    PortInUse,
    RemoteExecutionError,
    ResourceNotFound,
)
from tests.fakes import api_error
from tests.helpers import ipython_shell, run_runner

# One instance of every error the library raises, with the built-in each also is.
EXAMPLES: list[tuple[NbcontainerError, type[BaseException] | None]] = [
    (errors.DaemonNotAvailable("unix:///x.sock", "FileNotFoundError"), ConnectionError),
    (errors.EngineError("start container c", "boom", 500), RuntimeError),
    (errors.ResourceNotFound("inspect container c", "No such container: c", 404), LookupError),
    (errors.Conflict("remove container c", "removal already in progress", 409), RuntimeError),
    (
        errors.AccessRefused(
            "create container",
            "nbcontainer's Docker guard refused POST /containers/create: "
            "HostConfig.Privileged is true",
        ),
        PermissionError,
    ),
    (errors.PortInUse("start container c", "port is already allocated", 500), RuntimeError),
    (errors.CommandNotFound("start container c", "executable file not found", 400), RuntimeError),
    (errors.ImageNotFound("img:1", "pull access denied"), LookupError),
    (errors.ImageNotUsable("img:1", "it has no python3", "Use another base."), ValueError),
    (errors.ImageBuildError("tag:1", "step 3 failed", ["a", "b"]), RuntimeError),
    (errors.WheelResolutionError(["x==1"], "Python 3.11", "no wheel"), LookupError),
    (
        errors.PackageIndexUnreachable(
            "https://***@index.example/simple", "TLS verification failed", "Give it the CA."
        ),
        ConnectionError,
    ),
    (errors.InvalidOption("memory", "lots", "expected a size"), ValueError),
    (errors.KernelSpecError("No kernelspec named 'k'"), LookupError),
    (errors.KernelDied("c", 137, True, ["MemoryError"]), RuntimeError),
    (errors.WaiterDied("img", ["sh: nbcontainer-run: not found"]), RuntimeError),
    (
        errors.RemoteExecutionError(
            "img", 1, "the cell raised: KeyError", "Traceback...", ["l"], "/o", "r-1", "local"
        ),
        RuntimeError,
    ),
    (
        errors.RunTimeout("img", 137, "timed out after 3 s", "", ["l"], "/o", "r-2", "batch"),
        TimeoutError,
    ),
    (errors.RunCancelled("r-3"), None),
    (errors.SerializationError("open file 'f': pass its path"), TypeError),
    (errors.SourcesTooLarge(60_000_000, 50_000_000, [("big.bin", 59_000_000)]), ValueError),
    (errors.WorkdirTooLarge(3_000_000_000, 2_000_000_000, [("d.bin", 2_900_000_000)]), ValueError),
    (errors.HostUnreachable("ssh://gpu-box", "Connection refused"), ConnectionError),
    (errors.TunnelLost("ssh://gpu-box", "kernel-1", "Connection reset"), ConnectionError),
    (errors.UntrustedResults("/runs/r-4", "model/x.pkl", "digest differs"), ValueError),
    (errors.UnsafeArchive("../x", "its path leaves the destination"), ValueError),
    (errors.UnknownBackend("nowhere", ["local", "batch"]), LookupError),
    (errors.UnknownRun("nope-1"), LookupError),
    (errors.UnknownResult("fit-1", "scores", ["loss"]), KeyError),
    (errors.LedgerError("/x/runs.db", "record run a-1", "OperationalError: disk is full"), OSError),
    (
        errors.SweepFailed("sw-1", {"sw-3": ({"lr": 0.1}, "exit code 1")}, 4, ["scores"]),
        RuntimeError,
    ),
    (errors.RegistryError("127.0.0.1:5000/runs", "connection refused"), ConnectionError),
    (errors.CloudError("batch", "SubmitJob", "ClientException", "no queue q", 400), RuntimeError),
    (
        errors.MissingSetting("BatchBackend.queue", "NBCONTAINER_BATCH_QUEUE", "the queue"),
        LookupError,
    ),
]


def test_every_error_class_has_an_example() -> None:
    exported = {getattr(errors, n) for n in errors.__all__} - {NbcontainerError}
    assert exported == {type(e) for e, _ in EXAMPLES}


@pytest.mark.parametrize(
    ("error", "builtin"), EXAMPLES, ids=[type(e).__name__ for e, _ in EXAMPLES]
)
def test_an_error_survives_a_pickle_with_its_fields(
    error: NbcontainerError, builtin: type[BaseException] | None
) -> None:
    error.add_note("a note")
    error.extra = "kept too"  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert {k: v for k, v in vars(back).items()} == {k: v for k, v in vars(error).items()}
    for field in type(error)._fields:
        assert getattr(back, field) == getattr(error, field)
    assert isinstance(back, NbcontainerError)
    if builtin is not None:
        assert isinstance(back, builtin)


@pytest.mark.parametrize(
    ("error", "builtin"), EXAMPLES, ids=[type(e).__name__ for e, _ in EXAMPLES]
)
def test_an_error_renders_in_one_short_block(error: NbcontainerError, builtin: object) -> None:
    lines = error._render_traceback_()
    assert 1 <= len(lines) <= 12
    assert not any('File "' in line and "nbcontainer_kernel" in line for line in lines)


@pytest.mark.parametrize(
    ("status", "explanation", "image", "expected"),
    [
        (404, "No such container: abc", None, ResourceNotFound),
        (404, "No such image: img:1", "img:1", ImageNotFound),
        (404, "pull access denied for img, repository does not exist", "img", ImageNotFound),
        (409, "You cannot remove a running container", None, Conflict),
        (409, "container abc is not running", None, Conflict),
        (
            500,
            "driver failed programming external connectivity: Bind for 127.0.0.1:40000 failed: "
            "port is already allocated",
            None,
            PortInUse,
        ),
        (
            400,
            'OCI runtime create failed: exec: "python3": executable file not found in $PATH',
            None,
            CommandNotFound,
        ),
        (
            500,
            'OCI runtime create failed: exec: "/x/py": stat /x/py: no such file or directory',
            None,
            CommandNotFound,
        ),
        (500, "devmapper: thin pool is full", None, EngineError),
        (503, "service unavailable", None, EngineError),
    ],
)
def test_daemon_errors_are_classified_by_status(
    status: int, explanation: str, image: str | None, expected: type
) -> None:
    error = classify("do a thing", status, explanation, image)
    assert type(error) is expected
    if isinstance(error, EngineError):
        assert error.status_code == status and error.explanation == explanation
    with pytest.raises(expected) as err, translate_errors("do a thing", image=image):
        raise api_error(status, explanation)
    assert isinstance(err.value.__cause__, docker.errors.APIError)


def _failed_run(tmp_path: Path) -> RemoteExecutionError:
    proc, res = run_runner(tmp_path, {}, "def f(x):\n    return x['missing']\ny = 1\nf({})")
    assert proc.returncode == 1
    res.run_id, res.backend = "lda-3", "local"
    with pytest.raises(RemoteExecutionError) as err:
        res.raise_for_status()
    return err.value


def test_a_failed_remote_cell_reads_in_one_screen(tmp_path: Path) -> None:
    err = _failed_run(tmp_path)
    text = "\n".join(err._render_traceback_())
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert plain.startswith("Remote run lda-3 (local) failed: the cell raised: KeyError: 'missing'")
    assert "exit code 1" in plain and "%remote_logs lda-3" in plain and str(err.output_dir) in plain
    assert "f({})" in plain and "return x['missing']" in plain  # the remote frames
    assert (
        "interactiveshell.py" not in plain and "nbcontainer_kernel" not in plain
    )  # no host frames
    # The full chain stays on the exception.
    assert isinstance(err.__cause__, KeyError) and "f({})" in err.remote_traceback
    assert err.run_id == "lda-3" and err.traceback == err.remote_traceback


def test_ipython_shows_the_short_block_not_the_host_traceback(tmp_path: Path, capsys) -> None:
    err = _failed_run(tmp_path)
    shell = ipython_shell()
    shell.user_ns["err"] = err
    shell.run_cell("raise err")
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "Remote run lda-3 (local) failed" in out and "f({})" in out
    assert "results.py" not in out and "raise_for_status" not in out


def test_library_errors_in_ipython_are_one_line(capsys) -> None:
    shell = ipython_shell()
    shell.user_ns["err"] = errors.DaemonNotAvailable("unix:///nowhere.sock", "FileNotFoundError")
    shell.run_cell("raise err")
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).strip()
    assert out.startswith("DaemonNotAvailable: No Docker daemon answers at unix:///nowhere.sock")
    assert "Traceback" not in out and len(out.splitlines()) == 1


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("OperationalError: database or disk is full", "free space"),
        ("OperationalError: attempt to write a readonly database", "writable"),
        ("DatabaseError: file is not a database", "move it aside"),
        ("OperationalError: database is locked", "run the cell again"),
    ],
)
def test_a_ledger_error_says_which_ledger_what_happened_and_what_to_do(
    reason: str, says: str
) -> None:
    text = str(errors.LedgerError("/data/runs.db", "record run a-1", reason))
    assert "/data/runs.db" in text and "record run a-1" in text and says in text

"""The run lifecycle on a scripted backend (no daemon): every run ends in a terminal phase
with its reason, cleanup always runs and never hides the first error, a sweep stops as a
whole on Ctrl-C, and refused outputs are recorded as such."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbcontainer_kernel.backends.base import Hooks, Phase, StopSignal
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner
from nbcontainer_kernel.runtime.errors import (
    NbcontainerError,
    RemoteExecutionError,
    RunCancelled,
    RunTimeout,
    SweepFailed,
    UntrustedResults,
)
from nbcontainer_kernel.runtime.trust import new_key
from tests.fakes import (
    ArrayScriptedBackend,
    Script,
    fake_image_builder,
    sealed_outputs,
)
from tests.unit.conftest import registered

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@pytest.fixture
def runner(ledger: Ledger) -> RemoteRunner:
    return RemoteRunner(ledger, image_builder=fake_image_builder)


def _req(cell: str = "y = x + 1", **kw: object) -> RemoteRequest:
    return RemoteRequest(cell=cell, backend="scripted", **kw)  # type: ignore[arg-type]


def _phases(ledger: Ledger, run_id: str) -> list[str]:
    return [p for p, _ in ledger.get(run_id)["phases"]]


def test_a_run_goes_through_every_phase_and_its_results_come_back(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 42}), logs=["hello", "world"])}
    ns = {"x": 41}
    logged: list[str] = []
    result = runner.run(_req(name="ok"), ns, Hooks(on_log=[lambda _r, line: logged.append(line)]))
    assert ns["y"] == 42 and result.succeeded
    assert _phases(ledger, "ok-1") == [
        "SNAPSHOT",
        "BUILD",
        "SUBMITTED",
        "QUEUED",
        "RUNNING",
        "COLLECTING",
        "SUCCEEDED",
    ]
    row = ledger.get("ok-1")
    assert (
        row["verified"] == "signed"
        and row["exit_code"] == 0
        and row["image"].startswith("fake/run:")
    )
    assert logged == ["hello", "world"] and backend.cleaned("ok-1")
    # The key reached the run only through its environment, never its image or labels.
    spec = backend.specs["ok-1"]
    assert spec.env["NBCONTAINER_RUN_KEY"] == row["run_key"]
    assert row["run_key"] not in spec.image + repr(spec.labels)


def test_outputs_signed_with_another_key_are_refused_and_recorded(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 42}, key=new_key()))}
    ns = {"x": 41}
    with pytest.raises(UntrustedResults, match="signature does not match"):
        runner.run(_req(name="forged"), ns, Hooks())
    assert "y" not in ns
    row = ledger.get("forged-1")
    assert row["status"] == "FAILED" and row["verified"].startswith("refused: model/results.json")
    assert "refused" in row["failure"] and row["metrics"] == {}


def test_an_error_while_waiting_ends_the_run_with_its_reason(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(fail_on={"status": ConnectionError("daemon restarted")})}
    with pytest.raises(ConnectionError):
        runner.run(_req(name="lost"), {"x": 1}, Hooks())
    row = ledger.get("lost-1")
    assert row["status"] == "FAILED"
    assert row["failure"] == "ConnectionError while waiting: daemon restarted"
    assert backend.cleaned("lost-1")


def test_a_failing_cleanup_is_logged_beside_the_first_error_never_instead(
    runner, ledger, backend
) -> None:
    backend.scripts = {
        "*": Script(
            fail_on={
                "status": ConnectionError("daemon restarted"),
                "cleanup": RuntimeError("cannot remove"),
            }
        )
    }
    logged: list[str] = []
    with pytest.raises(ConnectionError) as err:
        runner.run(
            _req(name="both"), {"x": 1}, Hooks(on_log=[lambda _r, line: logged.append(line)])
        )
    assert any(
        "cleanup of run both-1 failed: RuntimeError: cannot remove" in n
        for n in err.value.__notes__
    )
    assert any("cannot remove" in line for line in logged)
    assert ledger.get("both-1")["failure"] == "ConnectionError while waiting: daemon restarted"


def test_a_submit_that_fails_leaves_a_failed_row(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(fail_on={"submit": RuntimeError("quota exceeded")})}
    with pytest.raises(RuntimeError):
        runner.run(_req(name="sub"), {"x": 1}, Hooks())
    row = ledger.get("sub-1")
    assert (
        row["status"] == "FAILED"
        and row["failure"] == "RuntimeError while submitting: quota exceeded"
    )


def test_a_timeout_cancels_cleans_and_says_so(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(wait_for_cancel=True)}
    with pytest.raises(RunTimeout) as err:
        runner.run(_req(name="slow", timeout=0.3), {"x": 1}, Hooks())
    assert "timed out after 0.3 s" in str(err.value) and isinstance(err.value, TimeoutError)
    assert err.value.run_id == "slow-1" and err.value.backend == "scripted"
    row = ledger.get("slow-1")
    assert row["status"] == "FAILED" and "timed out after 0.3 s" in row["failure"]
    assert ("cancel", "slow-1") in backend.calls and backend.cleaned("slow-1")


def test_cancel_from_another_thread_ends_the_run_cancelled(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(wait_for_cancel=True)}

    def cancel_once_running(rid: str, phase: Phase, _t: dict[str, float]) -> None:
        if phase == Phase.RUNNING:
            threading.Timer(0.1, runner.cancel, args=(rid,)).start()

    hooks = Hooks(on_phase=[cancel_once_running])
    with pytest.raises(RunCancelled, match="stop-1"):
        runner.run(_req(name="stop"), {"x": 1}, hooks)
    assert ledger.get("stop-1")["status"] == "CANCELLED" and backend.cleaned("stop-1")


def test_ctrl_c_in_a_sweep_stops_queued_children_and_ends_every_row(
    runner, ledger, backend
) -> None:
    backend.scripts = {"*": Script(wait_for_cancel=True)}
    fired = threading.Event()

    def interrupt_once(run_id: str, phase: Phase, _t: dict) -> None:
        if phase == Phase.RUNNING and run_id != "sw-1" and not fired.is_set():
            fired.set()
            # Ctrl-C: a real SIGINT to the main thread, which wakes it from its wait.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        runner.run(
            _req(name="sw", sweep=("x", [1, 2, 3]), max_parallel=1),
            {"x": 0},
            Hooks(on_phase=[interrupt_once]),
        )
        time.sleep(5)  # pragma: no cover - the interrupt lands before this
    rows = {r["id"]: r for r in ledger.find(name="sw")}
    assert {r["status"] for r in rows.values()} == {"CANCELLED"}, {
        k: r["status"] for k, r in rows.items()
    }
    submitted = {rid for step, rid in backend.calls if step == "submit"}
    assert submitted == {"sw-2"}, ("queued children must never start", backend.calls)
    assert rows["sw-3"]["failure"] == rows["sw-4"]["failure"] == "cancelled before it started"
    assert rows["sw-1"]["failure"] == "cancelled by a kernel interrupt"
    assert backend.cleaned("sw-2"), backend.calls


def test_a_sweep_with_a_failing_child_keeps_the_others(runner, ledger, backend) -> None:
    def script(spec):  # noqa: ANN001, ANN202
        if spec.params["x"] == 2:
            return Script(
                exit_code=1,
                phases=[Phase.RUNNING, Phase.FAILED],
                outputs=sealed_outputs({}, failure="the cell raised: ValueError: two\n\ntb"),
            )
        return Script(outputs=sealed_outputs({"y": spec.params["x"] * 10}))

    backend.scripts = script
    ns: dict = {"x": 0}
    with pytest.raises(
        SweepFailed, match=r"part-3 \(x=2\): the cell raised: ValueError: two"
    ) as err:
        runner.run(_req(name="part", sweep=("x", [1, 2, 3])), ns, Hooks())
    assert err.value.failures == {"part-3": ({"x": 2}, "the cell raised: ValueError: two")}
    assert isinstance(err.value.__cause__, RemoteExecutionError)
    # The children that succeeded are not lost: their rows are in the namespace.
    assert ns["y"].to_dict("list") == {"x": [1, 3], "y": [10, 30]}
    status = {r["id"]: r["status"] for r in ledger.find(name="part")}
    assert status == {
        "part-1": "FAILED",
        "part-2": "SUCCEEDED",
        "part-3": "FAILED",
        "part-4": "SUCCEEDED",
    }
    assert ledger.get("part-1")["failure"] == "1 of 3 children failed"
    assert runner.result_of("part-4").results == {"y": 30}


def test_attach_collects_a_run_after_a_restart(ledger, backend, tmp_path: Path) -> None:
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 7}))}
    first = RemoteRunner(ledger, image_builder=fake_image_builder)
    started = first.run(_req(name="bg", wait=False), {"x": 1}, Hooks())
    assert started.pending and started.run_id == "bg-1"
    first.join("bg-1", 5)
    # A new kernel (a new runner over the same ledger) attaches and gets the results.
    ns: dict = {}
    RemoteRunner(Ledger(ledger.path)).attach("bg-1", ns, Hooks())
    assert ns == {"y": 7}


def test_attach_of_a_run_that_never_reached_its_backend_says_so(runner, ledger) -> None:
    run_id = ledger.create("dead", "scripted")
    ledger.add_phase(run_id, "BUILD")
    with pytest.raises(NbcontainerError, match="never reached its backend"):
        runner.attach(run_id, {}, Hooks())
    row = ledger.get(run_id)
    assert row["status"] == "FAILED" and "abandoned in BUILD" in row["failure"]


class _InterruptsWhenPickled:
    def __reduce__(self):
        raise KeyboardInterrupt


def _interrupting_builder(snap, **_):  # noqa: ANN001, ANN202
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("where", "last_phase", "job_made"),
    [
        ("snapshot", "SNAPSHOT", False),
        ("build", "BUILD", False),
        ("submit", "SUBMITTED", False),
        ("status", "SUBMITTED", True),
        ("logs", "QUEUED", True),
        ("fetch_results", "COLLECTING", True),
    ],
)
def test_ctrl_c_at_each_phase_ends_the_run_cancelled_and_cleaned(
    ledger, backend, where: str, last_phase: str, job_made: bool
) -> None:
    ns: dict = {"x": 1}
    builder = fake_image_builder
    script = Script(outputs=sealed_outputs({"y": 2}))
    if where == "snapshot":
        ns["x"] = _InterruptsWhenPickled()
    elif where == "build":
        builder = _interrupting_builder
    else:
        script.fail_on[where] = KeyboardInterrupt()
    backend.scripts = {"*": script}
    runner = RemoteRunner(ledger, image_builder=builder)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_req(name="ci"), ns, Hooks())
    row = ledger.get("ci-1")
    phases = _phases(ledger, "ci-1")
    assert (
        row["status"] == "CANCELLED" and phases[-1] == "CANCELLED" and phases[-2] == last_phase
    ), phases
    assert row["failure"] in ("interrupted before it started", "cancelled by a kernel interrupt")
    assert (
        ("cleanup", "ci-1") in backend.calls
        if job_made
        else ("cleanup", "ci-1") not in backend.calls
    )
    assert ("cancel", "ci-1") in backend.calls if job_made else True
    assert "y" not in ns


def test_ctrl_c_with_detach_leaves_the_job_running_for_attach(ledger, backend) -> None:
    backend.scripts = {"*": Script(fail_on={"logs": KeyboardInterrupt()}, wait_for_cancel=True)}
    with pytest.raises(KeyboardInterrupt):
        RemoteRunner(ledger, image_builder=fake_image_builder).run(
            _req(name="det", interrupt="detach"), {"x": 1}, Hooks()
        )
    row = ledger.get("det-1")
    assert row["status"] not in TERMINAL and row["job"] == {"fake_id": "job-det-1"}
    assert ("cancel", "det-1") not in backend.calls and not backend.cleaned("det-1")


def test_the_ledger_records_every_transition_with_its_time(runner, ledger, backend) -> None:
    backend.scripts = {
        "*": Script(
            phases=[
                Phase.QUEUED,
                Phase.QUEUED,
                Phase.STARTING,
                Phase.RUNNING,
                Phase.RUNNING,
                Phase.SUCCEEDED,
            ],
            outputs=sealed_outputs({}),
        )
    }
    seen: list[tuple[str, str]] = []
    hooks = Hooks(
        on_phase=[lambda rid, phase, _t: seen.append((phase.value, ledger.get(rid)["status"]))]
    )
    runner.run(_req(name="tr"), {"x": 1}, hooks)
    # Each phase is in the ledger by the time the listeners hear of it, once, in order.
    assert [p for p, _ in seen] == [
        "SNAPSHOT",
        "BUILD",
        "SUBMITTED",
        "QUEUED",
        "STARTING",
        "RUNNING",
        "COLLECTING",
        "SUCCEEDED",
    ]
    assert all(phase == status for phase, status in seen)
    times = [t for _, t in ledger.get("tr-1")["phases"]]
    assert times == sorted(times)
    assert set(ledger.timings(ledger.get("tr-1"))) == {
        "snapshot",
        "build",
        "submitted",
        "queued",
        "starting",
        "running",
        "collecting",
    }


@pytest.fixture
def array_backend() -> Iterator[ArrayScriptedBackend]:
    yield from registered("scripted-array", ArrayScriptedBackend())


def test_a_timeout_on_a_slow_stopping_platform_stays_a_timeout(runner, ledger, backend) -> None:
    # The platform takes three more polls to stop the job after the cancel: the run is still
    # a timeout (not a cancel), and the cancel is sent once.
    backend.scripts = {"*": Script(wait_for_cancel=True, polls_to_stop=3)}
    with pytest.raises(RunTimeout):
        runner.run(_req(name="slow", timeout=0.3), {"x": 1}, Hooks())
    row = ledger.get("slow-1")
    assert row["status"] == "FAILED" and row["failure"].startswith("the run timed out after 0.3 s")
    assert [step for step, _ in backend.calls].count("cancel") == 1


def test_a_sweep_taken_in_one_step_shares_the_parents_key_and_comes_back_whole(
    runner, ledger, array_backend
) -> None:
    array_backend.scripts = lambda spec: Script(
        outputs=sealed_outputs({"y": spec.params["a"] * 10 + spec.params["b"]})
    )
    ns: dict = {"a": 0, "b": 0}
    rows = [{"a": a, "b": b} for a in (1, 2) for b in (3, 4)]
    result = runner.run(
        RemoteRequest(cell="y = a * 10 + b", backend="scripted-array", name="grid", sweep=rows),
        ns,
        Hooks(),
    )
    combined = result.values
    assert result.status == "SUCCEEDED" and sorted(result.children) == [
        f"grid-{i}" for i in range(2, 6)
    ]
    assert [c for c in array_backend.calls if c[0].startswith("submit")] == [
        ("submit_sweep", "grid-1")
    ]
    assert combined["y"].to_dict("list") == {
        "a": [1, 1, 2, 2],
        "b": [3, 4, 3, 4],
        "y": [13, 14, 23, 24],
    }
    assert ns["y"] is combined["y"]
    parent_key = ledger.get("grid-1")["run_key"]
    children = ledger.find(parent="grid-1")
    assert {c["run_key"] for c in children} == {parent_key}
    assert {c["verified"] for c in children} == {"signed"}
    assert ledger.get("grid-1")["params"] == {"a": [1, 2], "b": [3, 4]}


def test_cancelling_a_sweep_taken_in_one_step_stops_it_on_the_platform(
    runner, ledger, array_backend
) -> None:
    array_backend.scripts = {"*": Script(wait_for_cancel=True)}
    stop = StopSignal()
    threading.Timer(0.5, stop.cancel).start()
    with pytest.raises(RunCancelled):
        runner.run(
            RemoteRequest(
                cell="y = x", backend="scripted-array", name="big", sweep=("x", list(range(40)))
            ),
            {"x": 0},
            Hooks(),
            stop=stop,
        )
    rows = ledger.find(name="big")
    assert {r["status"] for r in rows} == {"CANCELLED"}
    # Children never waited on (more than the collecting threads) were stopped there too.
    cancelled = {rid for step, rid in array_backend.calls if step == "cancel"}
    assert cancelled == {r["id"] for r in rows if r["parent"]}


def test_a_run_the_ledger_cannot_record_is_not_started(
    runner, ledger, backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.runtime.errors import LedgerError

    def full(*_a: object, **_k: object) -> str:
        raise LedgerError(str(ledger.path), "record a new run of nope", "disk is full")

    monkeypatch.setattr(ledger, "create", full)
    built: list[object] = []
    runner.image_builder = lambda *a, **k: built.append(a)
    with pytest.raises(LedgerError, match="free space"):
        runner.run(_req(name="nope"), {"x": 1}, Hooks())
    assert built == [] and backend.specs == {}


def test_a_run_whose_end_cannot_be_recorded_keeps_its_results_and_is_recorded_later(
    runner, ledger, backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.runtime.errors import LedgerError

    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 42}))}
    real_write = ledger._write

    def write(doing: str, step: object) -> object:
        if doing.startswith("record the end"):
            raise LedgerError(str(ledger.path), doing, "OperationalError: database is locked")
        return real_write(doing, step)

    monkeypatch.setattr(ledger, "_write", write)
    logged: list[str] = []
    ns = {"x": 41}
    result = runner.run(_req(name="late"), ns, Hooks(on_log=[lambda _r, line: logged.append(line)]))
    assert ns["y"] == 42 and result.succeeded  # the cell's results are the cell's
    assert any("kept to be recorded later" in line for line in logged)
    assert ledger.get("late-1")["status"] == "COLLECTING"
    monkeypatch.undo()
    again = Ledger(ledger.path)  # the next ledger to open records it
    row = again.get("late-1")
    assert row["status"] == "SUCCEEDED" and row["verified"] == "signed" and row["exit_code"] == 0


# ------------------------------------------------- one owner of a run's record
def _heard(hooks_log: list[tuple[str, str]], run_id: str) -> list[str]:
    return [phase for rid, phase in hooks_log if rid == run_id]


@pytest.mark.parametrize(
    ("script", "expect_end"),
    [
        (Script(outputs=None, exit_code=0), "SUCCEEDED"),
        (Script(phases=[Phase.RUNNING, Phase.FAILED], exit_code=3), "FAILED"),
        (Script(fail_on={"submit": RuntimeError("quota exceeded")}), "FAILED"),
        (Script(fail_on={"status": RuntimeError("the daemon went away")}), "FAILED"),
        (Script(fail_on={"fetch_results": OSError("disk full")}), "FAILED"),
    ],
    ids=["succeeded", "the run failed", "submit failed", "the wait failed", "collect failed"],
)
def test_listeners_hear_every_transition_the_ledger_records_ending_with_one_terminal(
    runner, ledger, backend, script: Script, expect_end: str
) -> None:
    if script.outputs is None and expect_end == "SUCCEEDED":
        script.outputs = sealed_outputs({"y": 1})
    backend.scripts = {"*": script}
    heard: list[tuple[str, str]] = []
    hooks = Hooks(on_phase=[lambda rid, phase, _t: heard.append((rid, phase.value))])
    # The failing rows raise: what matters here is what was recorded and heard.
    with contextlib.suppress(Exception):
        runner.run(_req(name="t"), {"x": 1}, hooks)
    recorded = _phases(ledger, "t-1")
    assert _heard(heard, "t-1") == recorded
    assert recorded[-1] == expect_end and [p for p in recorded if p in TERMINAL] == [expect_end]
    assert ledger.get("t-1")["status"] == expect_end


def test_a_sweeps_parent_and_children_are_heard_ending_as_recorded(runner, ledger, backend) -> None:
    backend.scripts = lambda spec: Script(
        phases=[Phase.RUNNING, Phase.FAILED if spec.params["x"] == 2 else Phase.SUCCEEDED],
        exit_code=1 if spec.params["x"] == 2 else 0,
        outputs=sealed_outputs({"y": spec.params["x"]}),
    )
    heard: list[tuple[str, str]] = []
    hooks = Hooks(on_phase=[lambda rid, phase, _t: heard.append((rid, phase.value))])
    with pytest.raises(SweepFailed):
        runner.run(_req(name="sw", sweep=("x", [1, 2, 3])), {"x": 0}, hooks)
    for row in ledger.find(name="sw"):
        assert _heard(heard, row["id"]) == _phases(ledger, row["id"]), row["id"]
    assert ledger.get("sw-1")["status"] == "FAILED"


def test_the_verdict_and_the_timeout_have_columns_of_their_own(runner, ledger, backend) -> None:
    backend.scripts = {"ok-1": Script(outputs=sealed_outputs({"y": 1}))}
    runner.run(_req(name="ok"), {"x": 1}, Hooks())
    assert ledger.get("ok-1")["verdict"] == "signed" and ledger.get("ok-1")["timed_out"] == 0
    backend.scripts = {"*": Script(wait_for_cancel=True)}
    with pytest.raises(RunTimeout):
        runner.run(_req(name="slow", timeout=0.2), {"x": 1}, Hooks())
    row = ledger.get("slow-1")
    assert row["timed_out"] == 1
    # Read back from the column, not from the words: changing them changes nothing.
    ledger.update("slow-1", failure="stopped")
    assert runner.result_of("slow-1").timed_out is True
    assert runner.result_of("ok-1").timed_out is False


def test_refused_outputs_are_a_refused_verdict_in_the_ledger(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 1}, key=new_key()))}
    with pytest.raises(UntrustedResults):
        runner.run(_req(name="forged"), {"x": 1}, Hooks())
    row = ledger.get("forged-1")
    assert row["verdict"] == "refused" and row["verified"].startswith("refused: ")
    assert runner.result_of("forged-1").verdict is not None


def test_a_run_s_outputs_are_hashed_once_from_collect_to_its_values(
    runner, ledger, backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbcontainer_kernel.runtime import trust

    hashed: list[str] = []
    real = trust.RunOutputs.verify_all

    def counting(self: trust.RunOutputs) -> None:
        if not self._all_verified and not self.lenient:
            hashed.append(str(self.root))
        real(self)

    monkeypatch.setattr(trust.RunOutputs, "verify_all", counting)
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 5, "z": "text"}))}
    ns = {"x": 1}
    result = runner.run(_req(name="once", cell="y = x\nz = 'text'"), ns, Hooks())
    assert ns["y"] == 5 and result.succeeded
    assert len(hashed) == 1


def test_the_one_result_type_says_pending_for_a_run_that_goes_on(runner, ledger, backend) -> None:
    backend.scripts = {"*": Script(outputs=sealed_outputs({"y": 1}), polls_to_stop=0)}
    started = runner.run(_req(name="bg", wait=False), {"x": 1}, Hooks())
    assert started.pending and started.status in {"SUBMITTED", "QUEUED", "RUNNING"}
    runner.join("bg-1", 10)
    done = runner.result_of("bg-1")
    assert not done.pending and done.status == "SUCCEEDED" and done.result("y") == 1


def test_a_ledger_from_before_the_verdict_columns_reads_them_from_its_words(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "runs.db"
    old = Ledger(path)
    old.create("a", "local")
    old.create("b", "local")
    old.create("c", "local")
    old.close()
    db = sqlite3.connect(path)
    # As version 3 left them: no verdict, no timed_out; the words only.
    db.execute("ALTER TABLE runs DROP COLUMN verdict")
    db.execute("ALTER TABLE runs DROP COLUMN timed_out")
    db.execute("UPDATE runs SET verified = 'signed' WHERE name = 'a'")
    db.execute(
        "UPDATE runs SET verified = 'refused: model/x: changed', "
        "failure = 'the run timed out after 5 s and was stopped' WHERE name = 'b'"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    ledger = Ledger(path)
    rows = {r["name"]: r for r in ledger.find()}
    assert (rows["a"]["verdict"], rows["a"]["timed_out"]) == ("signed", 0)
    assert (rows["b"]["verdict"], rows["b"]["timed_out"]) == ("refused", 1)
    assert (rows["c"]["verdict"], rows["c"]["timed_out"]) == (None, 0)


def test_two_waiters_of_one_run_collect_it_one_after_the_other(
    ledger: Ledger, backend, tmp_path: Path
) -> None:
    """A --no-wait run's own thread and %remote_attach (or two kernels) both collect the
    run. A fetch rewrites the files, so a second one would rewrite them under whoever
    reads them: one collector at a time, and what was fetched is not fetched again."""
    sealed = sealed_outputs({"y": list(range(20000))})
    fetches: list[str] = []
    other_fetched = threading.Event()

    def fetch(spec, dest: Path) -> None:
        sealed(spec, dest)
        fetches.append(threading.current_thread().name)
        if len(fetches) > 1:
            other_fetched.set()  # the second fetch ends here; its verify comes next
            return
        # The first fetch rewrites a file once a second fetch ended (or after half a second):
        # a second collector reading meanwhile would see it half-written.
        other_fetched.wait(0.5)
        target = next((dest / "model").glob("y.*"))
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        time.sleep(0.3)
        target.write_bytes(data)

    backend.scripts = {"*": Script(outputs=fetch)}
    first = RemoteRunner(ledger, image_builder=fake_image_builder)
    first.run(_req(name="two", cell="y = list(range(20000))", wait=False), {}, Hooks())
    ns: dict = {}
    second = RemoteRunner(Ledger(ledger.path), image_builder=fake_image_builder)
    result = second.attach("two-1", ns, Hooks())
    first.join("two-1", 10)
    assert len(fetches) == 1 and result.succeeded and ns["y"] == list(range(20000))
    row = ledger.get("two-1")
    assert row["status"] == "SUCCEEDED" and row["verdict"] == "signed"

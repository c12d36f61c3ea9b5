"""Backend settings: each backend's own Configurable, resolved and frozen when a run starts,
carried with the run; nothing one run (or the shell's %config) does changes another's."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from traitlets import Int, Unicode
from traitlets.config import Config

from nbcontainer_kernel import config
from nbcontainer_kernel.backends.base import Hooks, Phase, RunSpec
from nbcontainer_kernel.backends.batch import BatchBackend
from nbcontainer_kernel.backends.local import LocalBackend
from nbcontainer_kernel.backends.sagemaker import SageMakerBackend
from nbcontainer_kernel.backends.settings import backend_classes, legacy_names, translate_legacy
from nbcontainer_kernel.remote.ledger import Ledger
from nbcontainer_kernel.remote.runs import RemoteRequest, RemoteRunner
from nbcontainer_kernel.runtime.errors import InvalidOption
from tests.fakes import Script, ScriptedBackend, fake_image_builder, sealed_outputs
from tests.helpers import full_tier, ipython_shell
from tests.unit.conftest import registered

README = Path(__file__).resolve().parents[2] / "README.md"


class QueueBackend(ScriptedBackend):
    """A scripted backend with settings, as Batch has: a queue and a size."""

    name = "scripted-queues"
    queue = Unicode(None, allow_none=True, help="A queue (env NBCONTAINER_TEST_QUEUE).").tag(
        config=True, env="NBCONTAINER_TEST_QUEUE"
    )
    size = Int(1, min=1, max=8, help="A size.").tag(config=True, setting="queue_size")


@pytest.fixture
def queues() -> Iterator[QueueBackend]:
    yield from registered("scripted-queues", QueueBackend())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in config.environment_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NBCONTAINER_TEST_QUEUE", raising=False)
    monkeypatch.chdir(tmp_path)  # no pyproject.toml above it
    config._table_of.cache_clear()


def test_runs_from_many_threads_at_once_each_carry_their_own_settings(
    queues: QueueBackend, ledger: Ledger, clean_env: None
) -> None:
    queues.scripts = {"*": Script(outputs=sealed_outputs({"y": 1}))}
    runner = RemoteRunner(ledger, image_builder=fake_image_builder)
    n = 12 if full_tier() else 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        start.wait()
        try:
            req = RemoteRequest(
                "y = x",
                name=f"t{i}",
                backend="scripted-queues",
                overrides={"queue": f"q{i}", "queue_size": 1 + i % 8},
            )
            runner.run(req, {"x": i}, Hooks())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    by_run = {spec.run_id: spec.settings for spec in queues.specs.values()}
    for i in range(n):
        assert dict(by_run[f"t{i}-1"]) == {"queue": f"q{i}", "size": 1 + i % 8}


def test_a_runs_settings_do_not_change_when_the_backend_is_configured_meanwhile(
    queues: QueueBackend, ledger: Ledger, clean_env: None
) -> None:
    queues.update_config(Config({"QueueBackend": {"queue": "before"}}))
    seen: list[str] = []

    def reconfigure(run_id: str, phase: Phase, _t: dict) -> None:
        if phase == Phase.RUNNING and not seen:
            queues.update_config(Config({"QueueBackend": {"queue": "after"}}))
            seen.append(str(queues.specs[run_id].settings["queue"]))

    queues.scripts = {"*": Script(outputs=sealed_outputs({"y": 1}))}
    runner = RemoteRunner(ledger, image_builder=fake_image_builder)
    runner.run(
        RemoteRequest("y = 1", name="a", backend="scripted-queues"),
        {},
        Hooks(on_phase=[reconfigure]),
    )
    assert seen == ["before"] and queues.specs["a-1"].settings["queue"] == "before"
    with pytest.raises(TypeError):
        queues.specs["a-1"].settings["queue"] = "x"
    runner.run(RemoteRequest("y = 1", name="b", backend="scripted-queues"), {}, Hooks())
    assert queues.specs["b-1"].settings["queue"] == "after"


@pytest.mark.parametrize(
    ("toml", "env", "configured", "flag", "expected"),
    [
        (None, None, None, None, None),
        ("t", None, None, None, "t"),
        ("t", "e", None, None, "e"),
        ("t", "e", "c", None, "c"),
        ("t", "e", "c", "f", "f"),
        (None, None, None, "f", "f"),
    ],
)
def test_a_backend_setting_comes_from_the_most_explicit_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    toml: str | None,
    env: str | None,
    configured: str | None,
    flag: str | None,
    expected: str | None,
) -> None:
    if toml is not None:  # under the name earlier releases read: batch_queue
        (tmp_path / "pyproject.toml").write_text(f"[tool.nbcontainer]\nbatch-queue = '{toml}'\n")
    if env is not None:
        monkeypatch.setenv("NBCONTAINER_BATCH_QUEUE", env)
    backend = BatchBackend()
    if configured is not None:
        backend.update_config(Config({"BatchBackend": {"queue": configured}}))
    assert backend.settings({"queue": flag})["queue"] == expected


def test_a_setting_configured_back_to_none_lets_the_environment_speak_again(
    monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("NBCONTAINER_BATCH_QUEUE", "from-env")
    backend = BatchBackend()
    backend.update_config(Config({"BatchBackend": {"queue": "configured"}}))
    assert backend.settings()["queue"] == "configured"
    backend.update_config(Config({"BatchBackend": {"queue": None}}))  # `%config ... = None`
    assert backend.settings()["queue"] == "from-env"


def test_a_bad_value_is_refused_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("NBCONTAINER_RUN_POOL_SIZE", "many")
    with pytest.raises(InvalidOption, match="environment variable NBCONTAINER_RUN_POOL_SIZE"):
        LocalBackend().settings()
    with pytest.raises(InvalidOption, match="--volume-size"):
        SageMakerBackend().settings({"volume_size": 0})


def test_settings_shared_by_the_aws_backends_are_set_once_for_all() -> None:
    cfg = Config({"AWSBackend": {"registry": "127.0.0.1:5000/all"}})
    assert BatchBackend(config=cfg).settings()["registry"] == "127.0.0.1:5000/all"
    assert SageMakerBackend(config=cfg).settings()["registry"] == "127.0.0.1:5000/all"
    cfg.BatchBackend.registry = "127.0.0.1:5000/batch"
    assert BatchBackend(config=cfg).settings()["registry"] == "127.0.0.1:5000/batch"


@pytest.mark.parametrize(
    ("old", "new"),
    sorted((old, f"{cls}.{name}") for old, (cls, name) in legacy_names().items()),
)
def test_each_setting_of_earlier_releases_still_works_with_a_warning(old: str, new: str) -> None:
    cls, name = new.split(".")
    value = {"retries": 2, "volume_size": 40, "spot": True, "run_pool_size": 3}.get(name, "v1")
    if name == "platform":
        value = "FARGATE"
    with pytest.warns(DeprecationWarning, match=f"RemoteRun.{old} is {new} now"):
        out = translate_legacy(Config({"RemoteRun": {old: value}}))
    assert out[cls][name] == value


def test_the_shells_config_reaches_the_backends_and_the_old_names_too() -> None:
    shell = ipython_shell()
    shell.run_line_magic("load_ext", "nbcontainer_kernel")
    from nbcontainer_kernel.backends.registry import get_backend

    batch = get_backend("batch")
    assert batch in shell.configurables
    try:
        shell.run_line_magic("config", "BatchBackend.queue = 'from-config'")
        assert batch.settings()["queue"] == "from-config"
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            shell.run_line_magic("config", "RemoteRun.batch_queue = 'old-name'")
        assert batch.settings()["queue"] == "old-name"
        assert any("BatchBackend.queue" in str(w.message) for w in said)
    finally:
        shell.run_line_magic("config", "BatchBackend.queue = None")
        # %config merges into the shell's own config too: the old name goes from there.
        for configurable in shell.configurables:
            if "RemoteRun" in configurable.config:
                configurable.config["RemoteRun"].pop("batch_queue", None)


def test_the_readmes_list_of_settings_is_the_one_the_traits_make() -> None:
    from nbcontainer_kernel.magics.remote_run import RemoteRun

    table = config.settings_table([RemoteRun, *backend_classes()])
    assert table in README.read_text(), "README: paste config.settings_table's output"


def test_a_runspec_made_without_settings_has_an_empty_frozen_mapping() -> None:
    spec = RunSpec("r-1", "img")
    assert dict(spec.settings) == {}
    with pytest.raises(TypeError):
        spec.settings["x"] = 1

"""Settings: flag > %config > environment variable > [tool.nbcontainer] > default, every
source validated; server-wide provisioner defaults from a Jupyter config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from traitlets.config import Config

from nbcontainer_kernel import config
from nbcontainer_kernel.backends.settings import backend_classes
from nbcontainer_kernel.magics.remote_run import RemoteRun
from nbcontainer_kernel.runtime.errors import InvalidOption
from tests.helpers import ipython_shell


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory (the cwd) whose pyproject.toml the test writes; no NBCONTAINER_* env."""
    for name in config.environment_variables():
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    config._table_of.cache_clear()
    yield tmp_path
    config._table_of.cache_clear()


def _magics(cfg: Config | None = None) -> RemoteRun:
    return RemoteRun(shell=ipython_shell(), config=cfg or Config())


# (pyproject value, env value, %config value, flag) -> what the run gets
PRECEDENCE = [
    (None, None, None, None, 4),
    (8, None, None, None, 8),
    (8, "6", None, None, 6),
    (8, "6", 3, None, 3),
    (8, "6", 3, 2, 2),
    (None, None, 3, None, 3),
    (None, "6", None, 2, 2),
]


@pytest.mark.parametrize(("toml", "env", "configured", "flag", "expected"), PRECEDENCE)
def test_a_setting_comes_from_the_most_explicit_source(
    project: Path, monkeypatch, toml, env, configured, flag, expected
) -> None:
    if toml is not None:
        (project / "pyproject.toml").write_text(f"[tool.nbcontainer]\nmax-parallel = {toml}\n")
    if env is not None:
        monkeypatch.setenv("NBCONTAINER_MAX_PARALLEL", env)
    cfg = Config()
    if configured is not None:
        cfg.RemoteRun.max_parallel = configured
    assert _magics(cfg)._setting("max_parallel", flag) == expected


@pytest.mark.parametrize(
    ("toml", "where", "why"),
    [
        ('max-parallel = "8"', "[tool.nbcontainer] max-parallel", "expected an int"),
        ("max-parallel = 0", "[tool.nbcontainer] max-parallel", "should not be less than 1"),
        ('trust = "sometimes"', "[tool.nbcontainer] trust", "any of"),
        ("timeout = [1]", "[tool.nbcontainer] timeout", "float"),
    ],
)
def test_a_bad_pyproject_value_is_refused_and_says_where(
    project: Path, toml: str, where: str, why: str
) -> None:
    (project / "pyproject.toml").write_text(f"[tool.nbcontainer]\n{toml}\n")
    name = toml.split(" =")[0].replace("-", "_")
    with pytest.raises(InvalidOption) as err:
        getattr(_magics(), name)
    assert where in str(err.value) and str(project / "pyproject.toml") in str(err.value)
    assert why in str(err.value)
    with pytest.raises(UsageError, match="tool.nbcontainer"):
        _magics()._setting(name)


def test_a_bad_environment_value_is_refused_and_names_the_variable(
    project: Path, monkeypatch
) -> None:
    monkeypatch.setenv("NBCONTAINER_MAX_PARALLEL", "many")
    with pytest.raises(UsageError, match="environment variable NBCONTAINER_MAX_PARALLEL"):
        _magics()._setting("max_parallel")


def test_every_environment_setting_is_named_in_its_trait_help() -> None:
    variables = config.environment_variables()
    classes: list[type[Any]] = [RemoteRun, *backend_classes()]
    for cls in classes:
        for name, trait in cls.class_own_traits(config=True).items():
            env = trait.metadata.get("env")
            if env:
                assert env in trait.help, name
                assert variables[env].startswith(f"{cls.__name__}.{name}: "), env
    # Each named once: no two settings read one variable.
    envs = [
        t.metadata["env"]
        for cls in classes
        for t in cls.class_own_traits(config=True).values()
        if t.metadata.get("env")
    ]
    assert len(envs) == len(set(envs))


def test_the_pyproject_table_is_read_once_per_directory(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.nbcontainer]\nbackend = 'batch'\n")
    path, table = config.pyproject_table()
    assert path == str(project / "pyproject.toml") and table == {"backend": "batch"}
    (project / "pyproject.toml").write_text("[tool.nbcontainer]\nbackend = 'sagemaker'\n")
    assert config.pyproject_table()[1] == {"backend": "batch"}  # this session's reading stands


def test_in_a_containerized_kernel_is_one_question(monkeypatch) -> None:
    monkeypatch.delenv("NBCONTAINER_KERNEL_ID", raising=False)
    assert not config.in_container_kernel()
    monkeypatch.setenv("NBCONTAINER_KERNEL_ID", "abc")
    assert config.in_container_kernel() and config.kernel_id() == "abc"


def test_server_wide_provisioner_defaults_apply_unless_the_kernelspec_says(monkeypatch) -> None:
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    from nbcontainer_kernel.kernel.kernelspec import render
    from nbcontainer_kernel.kernel.provisioner import DockerProvisioner

    cfg = Config()
    cfg.DockerProvisioner.memory = "1g"
    cfg.DockerProvisioner.pull_policy = "never"
    km = KernelManager(config=cfg)
    for spec_options, memory in (({}, "1g"), ({"memory": "2g"}, "2g")):
        spec = render("img:1", options=spec_options, check_paths=False)
        config_of_spec = spec["metadata"]["kernel_provisioner"]["config"]
        kernel_spec = KernelSpec(
            **{k: v for k, v in spec.items() if k != "metadata"}, metadata=spec["metadata"]
        )
        prov = DockerProvisioner(
            kernel_id="k", kernel_spec=kernel_spec, parent=km, **config_of_spec
        )
        assert (prov.memory, prov.pull_policy, prov.image) == (memory, "never", "img:1")

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbcontainer_kernel.kernel import kernelspec
from nbcontainer_kernel.runtime.errors import InvalidOption, KernelSpecError


def test_render_puts_options_in_the_provisioner_config() -> None:
    spec = kernelspec.render("img:1", "Py (Docker)", {"memory": "1g", "cpus": 2.0}, {"A": "b"})
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "nbcontainer-docker"
    assert prov["config"] == {"image": "img:1", "memory": "1g", "cpus": 2.0}
    assert spec["interrupt_mode"] == "message"
    assert spec["env"] == {"A": "b"}
    assert spec["argv"][-2:] == ["-f", "{connection_file}"]


def test_install_list_remove_roundtrip() -> None:
    path = kernelspec.install(
        "img:1", "nbc-unit", "Unit (Docker)", options={"memory": "1g"}, check_image=False
    )
    written = json.loads((Path(path) / "kernel.json").read_text())
    assert written["metadata"]["kernel_provisioner"]["config"]["memory"] == "1g"
    names = [s.name for s in kernelspec.list_specs()]
    assert "nbc-unit" in names
    kernelspec.remove("nbc-unit")
    assert "nbc-unit" not in [s.name for s in kernelspec.list_specs()]
    with pytest.raises(KernelSpecError, match="No kernelspec named"):
        kernelspec.remove("nbc-unit")


def test_bad_values_are_rejected_at_install() -> None:
    with pytest.raises(InvalidOption, match="memory"):
        kernelspec.install("img:1", "nbc-bad", options={"memory": "a lot"}, check_image=False)
    with pytest.raises(InvalidOption, match="name"):
        kernelspec.install("img:1", "bad name!", check_image=False)
    assert "nbc-bad" not in [s.name for s in kernelspec.list_specs()]


def test_cli_reports_a_bad_value_clearly() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbcontainer_kernel.cli",
            "kernelspec",
            "install",
            "--image",
            "img:1",
            "--name",
            "nbc-cli",
            "--gpus",
            "plenty",
            "--no-check-image",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("nbcontainer: error: Invalid value for gpus: 'plenty'")
    assert "Traceback" not in proc.stderr


def test_provisioner_entry_point_is_registered() -> None:
    from jupyter_client.provisioning import KernelProvisionerFactory

    from nbcontainer_kernel.kernel.provisioner import DockerProvisioner

    factory = KernelProvisionerFactory.instance()
    assert factory._check_availability("nbcontainer-docker")
    ep = factory.provisioners["nbcontainer-docker"]
    assert ep.load() is DockerProvisioner


def test_every_provisioner_option_has_an_install_flag_made_from_its_trait() -> None:
    from nbcontainer_kernel.cli import build_parser
    from nbcontainer_kernel.docker.options import ContainerOptions

    install = build_parser()._subparsers._group_actions[0].choices["kernelspec"]
    install = install._subparsers._group_actions[0].choices["install"]
    by_dest = {a.dest: a for a in install._actions}
    for name, trait in ContainerOptions.class_traits(config=True).items():
        assert f"opt_{name}" in by_dest, f"no flag for {name}"
        assert by_dest[f"opt_{name}"].help == trait.help.replace("%", "%%")
    # --help shows each trait's help as written (%pip, %%remote_run and all).
    text = install.format_help()
    assert "%pip" in text and "%%remote_run" in text


def test_every_commands_help_renders() -> None:
    """`nbcontainer X --help` for every command (argparse formats help with %)."""
    from nbcontainer_kernel.cli import build_parser

    def walk(parser: object) -> list[object]:
        found = [parser]
        for action in getattr(parser, "_actions", []):
            choices = getattr(action, "choices", None)
            for sub in choices.values() if isinstance(choices, dict) else []:
                found += walk(sub)
        return found

    parsers = walk(build_parser())
    assert len(parsers) > 8
    for parser in parsers:
        assert parser.format_help()  # type: ignore[attr-defined]


def test_install_flags_reach_the_kernelspec(tmp_path: Path) -> None:
    from nbcontainer_kernel.cli import main

    assert (
        main(
            [
                "kernelspec",
                "install",
                "--image",
                "img:1",
                "--name",
                "nbc-flags",
                "--no-check-image",
                "--no-init",
                "--no-mount-ledger",
                "--startup-log-lines",
                "5",
                "--mount",
                f"{tmp_path}:/data:ro",
                "--env-allow",
                "MY_VAR",
                "--pull",
                "never",
                "--no-docker-socket",
                "--memory",
                "1g",
            ]
        )
        == 0
    )
    try:
        config = next(s.config for s in kernelspec.list_specs() if s.name == "nbc-flags")
        assert (
            config["init"] is False
            and config["mount_ledger"] is False
            and config["startup_log_lines"] == 5
        )
        assert config["mounts"] == [f"{tmp_path}:/data:ro"] and config["pull_policy"] == "never"
        assert config["env_allowlist"][-1] == "MY_VAR" and "LANG" in config["env_allowlist"]
        assert config["docker_socket"] is False and config["memory"] == "1g"
    finally:
        kernelspec.remove("nbc-flags")


@pytest.mark.parametrize(
    ("flags", "written", "effective", "warned"),
    [
        ([], {"docker_access": "guarded"}, "guarded", False),
        (["--docker-access", "none"], {"docker_access": "none"}, "none", False),
        (["--docker-access", "raw"], {"docker_access": "raw"}, "raw", True),
        (["--docker-socket"], {"docker_socket": True}, "raw", True),  # the old flag
        (["--no-docker-socket"], {"docker_socket": False}, "none", False),
    ],
)
def test_docker_access_is_guarded_unless_asked_and_raw_is_warned_about(
    flags: list[str],
    written: dict[str, object],
    effective: str,
    warned: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nbcontainer_kernel.cli import main
    from nbcontainer_kernel.docker.options import effective_docker_access

    argv = ["kernelspec", "install", "--image", "img:1", "--name", "nbc-access"]
    assert main([*argv, "--no-check-image", *flags]) == 0
    try:
        config = next(s.config for s in kernelspec.list_specs() if s.name == "nbc-access")
        assert {k: config[k] for k in written} == written
        assert (
            effective_docker_access(
                config.get("docker_access", "guarded"), config.get("docker_socket")
            )
            == effective
        )
        assert ("root on this host" in capsys.readouterr().err) is warned
    finally:
        kernelspec.remove("nbc-access")

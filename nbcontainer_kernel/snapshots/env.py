"""Environment variables that may travel: the secret filter of DESIGN.md."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["is_secret", "filter_env"]

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|AUTH",
                          re.IGNORECASE)
_SECRET_PREFIX = ("AWS_", "AZURE_", "GOOGLE_", "GCP_")
# A URL with a password in it (postgres://user:pw@host) is a secret whatever its name.
_CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
# Describe this machine or session, not the computation: never shipped.
_MACHINE = {"PATH", "HOME", "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "TERM", "SHELL", "USER",
            "LOGNAME", "MAIL", "DISPLAY", "_", "VIRTUAL_ENV", "CONDA_PREFIX", "DOCKER_HOST",
            "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "TMPDIR", "XDG_RUNTIME_DIR", "PS1",
            "LS_COLORS", "COLUMNS", "LINES", "CLICOLOR", "PAGER", "GIT_PAGER", "MPLBACKEND",
            "NBCONTAINER_KERNEL_ID", "NBCONTAINER_IMAGE", "PYTHONEXECUTABLE"}
_MACHINE_PREFIX = ("JPY_", "JUPYTER_", "IPYKERNEL", "LC_", "XDG_", "PYENV", "SSH_", "KUBERNETES_",
                   "NBCONTAINER_TEST", "PYTEST_", "ECS_", "SAGEMAKER_", "PIP_", "SSL_CERT_")
# Paths of this machine's certificate bundles and tool configs (the image has its own).
_MACHINE_SUFFIX = ("_CA_BUNDLE", "_CERTS_FILE", "_CA_CERTS", "_CAINFO", "_CONFIG_FILE", "_ROOTS_FILE_PATH")


def is_secret(name: str, value: str = "") -> bool:
    return (bool(_SECRET_NAME.search(name)) or name.upper().startswith(_SECRET_PREFIX)
            or bool(_CREDENTIAL_URL.search(value)))


def filter_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(kept, dropped as secrets, dropped as machine-specific) — dropped lists hold names only."""
    kept, secrets, machine = {}, [], []
    for name, value in sorted(env.items()):
        if is_secret(name, value):
            secrets.append(name)
        elif (name in _MACHINE or name.upper().startswith(_MACHINE_PREFIX)
              or name.upper().endswith(_MACHINE_SUFFIX)):
            machine.append(name)
        else:
            kept[name] = value
    return kept, secrets, machine

"""The PUSH phase, shared by every remote backend: a run image goes to a registry
and the job is given it by digest (``repo@sha256:...``), so what runs is what
was built.

``AWSBackend.registry`` is ``host[:port]/repository``. For an ECR address
(``ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO``) the login comes from
``ecr.get_authorization_token`` (boto3's credential chain), the repository is
created when missing, and the login travels with the push request only (never
into ``~/.docker/config.json``). Only layers the registry lacks move; the
progress counts layers pushed, layers already there, and bytes sent.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..runtime.errors import EngineError, InvalidOption, RegistryError

if TYPE_CHECKING:
    from ..docker.engine import Engine

__all__ = [
    "Registry",
    "PushProgress",
    "parse_registry",
    "push_image",
    "push_to_registry",
    "ecr_login",
]

_ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$")
_REPO = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


@dataclass(frozen=True)
class Registry:
    """Where run images are pushed: a registry host and a repository in it."""

    host: str
    repository: str

    @property
    def address(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def ecr(self) -> tuple[str, str] | None:
        """(account, region) for an ECR registry, else None."""
        m = _ECR_HOST.match(self.host)
        return (m.group(1), m.group(2)) if m else None


def parse_registry(text: str) -> Registry:
    """'host[:port]/repository' -> Registry; InvalidOption naming the setting otherwise."""
    host, sep, repo = text.strip().partition("/")
    if not sep or not _HOST.match(host) or not ("." in host or ":" in host or host == "localhost"):
        raise InvalidOption(
            "AWSBackend.registry",
            text,
            "expected host[:port]/repository, e.g. "
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbcontainer or 127.0.0.1:5000/runs",
        )
    if not _REPO.match(repo):
        raise InvalidOption(
            "AWSBackend.registry",
            text,
            "the repository part must be lowercase letters, digits and . _ - / separators",
        )
    return Registry(host, repo)


@dataclass
class PushProgress:
    """What a push did so far: layers (pushed, already there, total) and bytes sent."""

    layers: dict[str, str] = field(default_factory=dict)  # layer id -> last status
    sent: dict[str, int] = field(default_factory=dict)  # layer id -> bytes sent so far
    digest: str | None = None

    @property
    def total(self) -> int:
        return len(self.layers)

    @property
    def existing(self) -> int:
        return sum(s == "Layer already exists" for s in self.layers.values())

    @property
    def pushed(self) -> int:
        return sum(s == "Pushed" for s in self.layers.values())

    @property
    def bytes_sent(self) -> int:
        return sum(self.sent.values())

    def update(self, event: dict[str, Any]) -> None:
        layer, status = event.get("id"), event.get("status", "")
        aux = event.get("aux") or {}
        if aux.get("Digest"):
            self.digest = aux["Digest"]
        if not layer or not status or status.startswith(("The push refers", "latest")):
            return
        if ":" in str(layer):  # the final "TAG: digest: sha256:... size: N" line
            return
        self.layers[layer] = status
        detail = event.get("progressDetail") or {}
        if status == "Pushing" and detail.get("current"):
            self.sent[layer] = max(self.sent.get(layer, 0), int(detail["current"]))
        elif status == "Pushed" and layer not in self.sent and detail.get("total"):
            self.sent[layer] = int(detail["total"])

    def line(self) -> str:
        return (
            f"push: {self.pushed + self.existing}/{self.total} layers "
            f"({self.existing} already there), {self.bytes_sent / 1e6:.1f} MB sent"
        )


def ecr_login(registry: Registry) -> dict[str, str]:
    """The push login for an ECR registry; creates the repository when it is missing."""
    from .aws import aws_errors, client

    assert registry.ecr is not None
    account, _region = registry.ecr
    ecr = client("ecr")
    with aws_errors("ecr", "DescribeRepositories"):
        try:
            ecr.describe_repositories(registryId=account, repositoryNames=[registry.repository])
        except ecr.exceptions.RepositoryNotFoundException:
            with aws_errors("ecr", "CreateRepository"):
                ecr.create_repository(
                    registryId=account,
                    repositoryName=registry.repository,
                    imageScanningConfiguration={"scanOnPush": False},
                )
    with aws_errors("ecr", "GetAuthorizationToken"):
        data = ecr.get_authorization_token(registryIds=[account])["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return {"username": user, "password": password, "serveraddress": registry.host}


def push_image(
    engine: Engine,
    image: str,
    registry: Registry,
    on_progress: Callable[[PushProgress], None] | None = None,
    every: float = 5.0,
) -> tuple[str, PushProgress]:
    """Push `image` to the registry; returns (``repo@sha256:...``, what the push did).

    `on_progress` hears of each layer done and, while a layer moves, every `every`
    seconds. The registry tag is removed again once pushed: what runs is named by digest.
    """
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    auth = ecr_login(registry) if registry.ecr else None
    progress = PushProgress()
    engine.tag(image, registry.address, tag)
    last, layers_done = time.monotonic(), 0
    try:
        for event in engine.push(registry.address, tag, auth_config=auth):
            progress.update(event)
            done = progress.pushed + progress.existing
            if on_progress is not None and (
                done != layers_done or time.monotonic() - last >= every
            ):
                last, layers_done = time.monotonic(), done
                on_progress(progress)
    except EngineError as exc:
        raise RegistryError(registry.address, exc.explanation) from exc
    finally:
        engine.remove_image(f"{registry.address}:{tag}")
    if on_progress is not None and progress.pushed + progress.existing != layers_done:
        on_progress(progress)
    if not progress.digest:
        raise RegistryError(registry.address, "the registry did not report the image's digest")
    return f"{registry.address}@{progress.digest}", progress


def push_to_registry(
    registry: str, image: str, hooks: Any = None, run_id: str = ""
) -> tuple[str, PushProgress]:
    """A remote backend's PUSH phase: `image` to ``AWSBackend.registry``, progress as log
    lines of `run_id` on `hooks`; returns (repo@sha256:..., what the push did)."""
    from ..docker.engine import get_engine

    def report(progress: PushProgress) -> None:
        if hooks is not None:
            hooks.log(run_id, f"[nbcontainer] {progress.line()}")

    return push_image(get_engine(), image, parse_registry(registry), report)

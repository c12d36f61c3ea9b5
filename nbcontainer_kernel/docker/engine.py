"""The one place that talks to the Docker daemon (through docker-py).

Everything else in the package calls :class:`Engine`; docker-py's and
requests' exceptions are translated here, once, into
:mod:`nbcontainer_kernel.runtime.errors`, so callers see messages that say what to do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import docker
import docker.constants
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.images import Image

from .. import config
from ..runtime.errors import (
    AccessRefused,
    CommandNotFound,
    Conflict,
    DaemonNotAvailable,
    EngineError,
    ImageBuildError,
    ImageNotFound,
    NbcontainerError,
    PortInUse,
    ResourceNotFound,
)
from .archives import make_tar

__all__ = [
    "Engine",
    "get_engine",
    "translate_errors",
]

DEFAULT_TIMEOUT = 120


def _daemon_address() -> str:
    address = config.docker_host()
    if os.environ.get("NBCONTAINER_DOCKER_ACCESS") == "none":
        # Said where the user meets it: a containerized kernel whose kernelspec gives no Docker.
        address += " (this kernel's kernelspec has docker_access 'none': it has no Docker)"
    return address


def classify(
    operation: str, status_code: int | None, explanation: str, image: str | None = None
) -> NbcontainerError:
    """The error for a daemon's answer, by its HTTP status code (docker-py's errors.py way).

    The status decides the class; within a status, the daemon's words pick out the
    cases callers act on (a missing image, a taken port, a missing command).
    """
    text = explanation.lower()
    if status_code == 404:
        if image is not None and ("image" in text or "manifest" in text or "repository" in text):
            return ImageNotFound(image, explanation)
        return ResourceNotFound(operation, explanation, 404)
    if status_code == 409:
        return Conflict(operation, explanation, 409)
    if status_code == 403:
        return AccessRefused(operation, explanation, 403)
    if "port is already allocated" in text or "address already in use" in text:
        return PortInUse(operation, explanation, status_code)
    if "executable file not found" in text or (
        "no such file or directory" in text and "exec" in text
    ):
        return CommandNotFound(operation, explanation, status_code)
    return EngineError(operation, explanation, status_code)


@contextlib.contextmanager
def translate_errors(operation: str, image: str | None = None) -> Iterator[None]:
    """Map docker-py / transport errors raised inside the block to NbcontainerError (once)."""
    try:
        yield
    except NbcontainerError:
        raise
    except docker.errors.APIError as exc:
        raise classify(operation, exc.status_code, _explain(exc), image) from exc
    except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as exc:
        raise DaemonNotAvailable(_daemon_address(), type(exc).__name__) from exc
    except docker.errors.DockerException as exc:
        # Raised without an HTTP answer: docker-py wraps a failed connection this way.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (requests.exceptions.ConnectionError, ConnectionError)):
            raise DaemonNotAvailable(_daemon_address(), type(cause).__name__) from exc
        raise EngineError(operation, str(exc)) from exc


def _explain(exc: docker.errors.APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)


class Engine:
    """A connected Docker daemon: the thin layer the rest of the package uses."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.api = client.api

    @classmethod
    def connect(
        cls, timeout: int = DEFAULT_TIMEOUT, *, base_url: str | None = None, tls: Any = None
    ) -> Engine:
        """Connect to the daemon named by the environment (DOCKER_HOST etc.), or at
        `base_url` (a remote host's forwarded socket, or TCP with `tls`), and ping it."""
        with translate_errors("connect"):
            if base_url is None:
                client = docker.from_env(timeout=timeout)
            elif tls:
                # requests lets REQUESTS_CA_BUNDLE (and proxy variables) override a session's
                # own CA: a daemon verified by its own CA is reached with nothing of the
                # environment's. The API version is asked once that holds.
                client = docker.DockerClient(
                    base_url=base_url,
                    tls=tls,
                    timeout=timeout,
                    version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                )
                client.api.trust_env = False
                client.api._version = client.api.version(api_version=False)["ApiVersion"]
            else:
                client = docker.DockerClient(base_url=base_url, timeout=timeout)
            client.ping()
        return cls(client)

    # ----------------------------------------------------------------- images
    def get_image(self, ref: str) -> Image:
        with translate_errors(f"inspect image {ref}", image=ref):
            return self.client.images.get(ref)

    def has_image(self, ref: str) -> bool:
        try:
            self.get_image(ref)
            return True
        except ImageNotFound:
            return False

    def pull(self, ref: str, on_line: Callable[[str], None] | None = None) -> Image:
        """Pull an image, reporting layer progress lines; ImageNotFound when it cannot."""
        repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        try:
            with translate_errors(f"pull {ref}", image=ref):
                for event in self.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                    if on_line and "status" in event:
                        parts = (event.get("id", ""), event["status"], event.get("progress", ""))
                        on_line(" ".join(p for p in parts if p))
                    if "error" in event:
                        raise ImageNotFound(ref, event["error"])
        except EngineError as exc:
            raise ImageNotFound(ref, exc.reason) from exc
        return self.get_image(ref)

    def ensure_image(
        self, ref: str, policy: str = "missing", on_line: Callable[[str], None] | None = None
    ) -> Image:
        """Return the image, pulling it first when the policy says so.

        policy: "missing" pulls only when absent, "always" pulls every time
        (falling back to a local copy), "never" only looks locally.
        """
        if policy == "always":
            try:
                return self.pull(ref, on_line)
            except ImageNotFound:
                return self.get_image(ref)
        try:
            return self.get_image(ref)
        except ImageNotFound:
            if policy == "never":
                raise
            return self.pull(ref, on_line)

    def tag(self, image: str, repository: str, tag: str) -> None:
        with translate_errors(f"tag {image} as {repository}:{tag}", image=image):
            self.api.tag(image, repository, tag=tag)

    def push(
        self, repository: str, tag: str, auth_config: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Push repository:tag, yielding the daemon's progress events as they come; an
        error event raises EngineError with the registry's words. The login travels with
        this request only (never into ~/.docker/config.json)."""
        with translate_errors(f"push {repository}:{tag}"):
            stream = self.api.push(
                repository, tag=tag, stream=True, decode=True, auth_config=auth_config
            )
            for event in stream:
                if "error" in event:
                    raise EngineError(f"push {repository}:{tag}", str(event["error"]))
                yield event

    def images(self, labels: dict[str, str] | Iterable[str]) -> list[Image]:
        with translate_errors("list images"):
            found: list[Any] = self.client.images.list(filters={"label": _label_filters(labels)})
            return found

    def remove_image(self, ref: str, force: bool = False) -> None:
        """Remove an image (idempotent: one already gone is fine)."""
        with (
            contextlib.suppress(ImageNotFound, ResourceNotFound),
            translate_errors(f"remove image {ref}", image=ref),
        ):
            self.client.images.remove(ref, force=force, noprune=False)

    def remove_unused_image(self, image_id: str) -> bool:
        """Remove an untagged image nothing uses; False when it is kept."""
        try:
            img = self.get_image(image_id)
            if img.tags:
                return False
            with translate_errors(f"remove image {image_id}", image=image_id):
                self.client.images.remove(image_id, noprune=False)
            return True
        except (ImageNotFound, Conflict):  # already gone, or in use by a container
            return False

    def commit(self, ident: str, repository: str, tag: str, changes: list[str]) -> Image:
        """Commit a running container as an image, without pausing it."""
        with translate_errors(f"commit container {ident}"):
            self.api.commit(ident, repository=repository, tag=tag, changes=changes, pause=False)
        return self.get_image(f"{repository}:{tag}")

    def build(
        self,
        context: IO[bytes],
        tag: str,
        *,
        labels: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        buildargs: dict[str, str] | None = None,
    ) -> tuple[Image, list[str]]:
        """Build from a tar build context; streams each output line to on_line.

        Returns the image and the whole log. Raises ImageBuildError (with the
        log's tail) when a step fails. The context is closed afterwards.
        """
        log: list[str] = []
        image_id = None
        with contextlib.closing(context), translate_errors(f"build {tag}"):
            stream = self.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
                buildargs=buildargs,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        if line.strip():
                            log.append(line)
                            if on_line:
                                on_line(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    raise ImageBuildError(tag, chunk["error"].strip(), log)
        if image_id is None:
            raise ImageBuildError(tag, "the daemon reported no image id", log)
        return self.get_image(tag), log

    # ------------------------------------------------------------- containers
    def create_container(self, image: str, **kwargs: Any) -> Container:
        with translate_errors(f"create a container from {image}", image=image):
            return self.client.containers.create(image, **kwargs)

    def container(self, ident: str) -> Container | None:
        """The container, or None when it no longer exists."""
        try:
            with translate_errors(f"inspect container {ident}"):
                return self.client.containers.get(ident)
        except ResourceNotFound:
            return None

    def inspect(self, ident: str) -> dict[str, Any] | None:
        """Raw inspect data, or None when the container no longer exists."""
        try:
            with translate_errors(f"inspect container {ident}"):
                info: dict[str, Any] = self.api.inspect_container(ident)
                return info
        except ResourceNotFound:
            return None

    def containers(
        self, labels: dict[str, str] | Iterable[str], all: bool = True
    ) -> list[Container]:
        """Containers with these labels. docker-py lists, then inspects each one: a container
        removed in between (a cleanup running meanwhile) makes the listing start again."""
        for attempt in range(5):
            try:
                with translate_errors("list containers"):
                    found: list[Any] = self.client.containers.list(
                        all=all, filters={"label": _label_filters(labels)}
                    )
                    return found
            except ResourceNotFound:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def start(self, container: Container) -> None:
        with translate_errors(f"start container {container.name}"):
            container.start()

    def signal(self, ident: str, signum: int | str) -> bool:
        """Send a signal; False when the container is gone (404) or not running (409)."""
        try:
            with translate_errors(f"signal container {ident}"):
                self.api.kill(ident, signal=signum)
            return True
        except (ResourceNotFound, Conflict):
            return False

    def rename(self, ident: str, name: str) -> None:
        with translate_errors(f"rename container {ident} to {name}"):
            self.api.rename(ident, name)

    def remove(self, ident: str, volumes: bool = True) -> bool:
        """Force-remove a container (and, `volumes`, the anonymous volumes it made);
        idempotent (False when it is gone or already going)."""
        try:
            with translate_errors(f"remove container {ident}"):
                self.api.remove_container(ident, force=True, v=volumes)
            return True
        except ResourceNotFound:
            return False
        except Conflict as exc:
            if "already in progress" in exc.explanation:
                return False
            raise

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        with translate_errors(f"create volume {name}"):
            self.api.create_volume(name, labels=labels)

    def remove_volume(self, name: str) -> bool:
        """Remove a volume; False when it is gone already or still in use."""
        try:
            with translate_errors(f"remove volume {name}"):
                self.api.remove_volume(name, force=True)
            return True
        except (ResourceNotFound, Conflict):
            return False

    def volumes(self, labels: dict[str, str] | Iterable[str]) -> list[dict[str, Any]]:
        with translate_errors("list volumes"):
            found = self.api.volumes(filters={"label": _label_filters(labels)})
        return list((found or {}).get("Volumes") or [])

    def ensure_network(self, name: str, labels: dict[str, str]) -> str:
        """The id of the one bridge network called `name`, made when none is. Docker allows
        several networks of one name (two makers racing); idle extras are removed, since a
        name that matches two networks fails every `docker-compose up` that uses it."""
        with translate_errors(f"list networks {name}"):
            found = [n for n in self.api.networks(names=[name]) if n.get("Name") == name]
        if not found:
            with translate_errors(f"create network {name}"):
                return str(self.api.create_network(name, driver="bridge", labels=labels)["Id"])
        found.sort(key=lambda n: str(n.get("Created", "")))
        keep = next((n for n in found if self._network_in_use(n["Id"])), found[0])
        for extra in found:
            if extra["Id"] != keep["Id"]:
                self.remove_network_if_idle(extra["Id"])
        return str(keep["Id"])

    def network_ids(self, labels: dict[str, str]) -> list[str]:
        with translate_errors("list networks"):
            return [
                str(n["Id"]) for n in self.api.networks(filters={"label": _label_filters(labels)})
            ]

    def _network_in_use(self, ident: str) -> bool:
        try:
            with translate_errors(f"inspect network {ident}"):
                return bool(self.api.inspect_network(ident).get("Containers"))
        except ResourceNotFound:
            return False

    def remove_network_if_idle(self, name: str) -> bool:
        """Remove a network no container is attached to; False when it is gone or in use."""
        try:
            with translate_errors(f"inspect network {name}"):
                info = self.api.inspect_network(name)
            if info.get("Containers"):
                return False
            with translate_errors(f"remove network {name}"):
                self.api.remove_network(name)
            return True
        except (ResourceNotFound, Conflict):
            return False

    def container_changes(self, ident: str) -> list[dict[str, Any]]:
        """What a container changed in its filesystem (docker diff): Path and Kind."""
        with translate_errors(f"list the changes of container {ident}"):
            return self.api.diff(ident) or []

    def logs_tail(self, ident: str, lines: int | str = 20) -> list[str]:
        """The container's last log lines (all with lines="all"); [] when it is gone."""
        try:
            with translate_errors(f"read the log of container {ident}"):
                raw = self.api.logs(ident, stdout=True, stderr=True, tail=lines)
        except (ResourceNotFound, Conflict):
            return []
        return str(raw.decode("utf-8", "replace")).splitlines()

    def follow_logs(self, ident: str) -> Iterator[bytes]:
        """The container's output as it is written, until it exits or is removed."""
        # A container removed under the stream (cancel, cleanup) ends the log there.
        with (
            contextlib.suppress(NbcontainerError),
            translate_errors(f"follow the log of container {ident}"),
        ):
            yield from self.api.logs(ident, stream=True, follow=True, stdout=True, stderr=True)

    def get_archive(self, ident: str, path: str) -> Iterator[bytes] | None:
        """A tar stream of `path` in the container; None when the path does not exist."""
        try:
            with translate_errors(f"copy {path} out of container {ident}"):
                stream, _stat = self.api.get_archive(ident, path, chunk_size=1 << 20)
        except ResourceNotFound:
            return None
        return _translated(stream, f"copy {path} out of container {ident}")

    def path_exists(self, ident: str, path: str) -> bool:
        """Whether `path` exists in a container (running or not)."""
        try:
            with translate_errors(f"look for {path} in container {ident}"):
                stream, _stat = self.api.get_archive(ident, path, chunk_size=1 << 16)
        except ResourceNotFound:
            return False
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        return True

    def put_files(
        self,
        ident: str,
        dest: str,
        files: dict[str, bytes],
        *,
        uid: int = 0,
        gid: int = 0,
        mode: int = 0o600,
        dirs: Iterable[str] = (),
    ) -> None:
        """Copy files into a (possibly not yet started) container through the API.

        `dirs` (relative to dest) are made 0700 and owned by uid:gid, so the
        container's user can remove what it was given.
        """
        self.put_archive(ident, dest, make_tar(files, uid=uid, gid=gid, mode=mode, dirs=dirs))

    def put_archive(self, ident: str, dest: str, archive: bytes | IO[bytes]) -> None:
        """Extract a tar archive (bytes, or a file streamed as it is read) at `dest` in a
        container (created or running), through the API."""
        with translate_errors(f"copy files into container {ident}"):
            ok = self.api.put_archive(ident, dest, archive)
        if not ok:
            raise EngineError(f"copy files into container {ident}", f"{dest} does not exist in it")

    def run_probe(
        self,
        image: str,
        command: list[str],
        labels: dict[str, str],
        timeout: float = 60,
        mounts: list[Any] | None = None,
    ) -> tuple[int, str]:
        """Run a short command in a throwaway container; returns (exit code, output)."""
        container = self.create_container(
            image,
            entrypoint=command[:1],
            command=command[1:],
            labels=labels,
            network_disabled=True,
            detach=True,
            mounts=mounts or None,
        )
        try:
            self.start(container)
            with translate_errors(f"wait for a probe of {image}"):
                result = container.wait(timeout=timeout)
                out = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            return int(result.get("StatusCode", 1)), out
        finally:
            self.remove(container.id)


def _translated(chunks: Iterable[bytes], operation: str) -> Iterator[bytes]:
    with translate_errors(operation):
        yield from chunks


def _label_filters(labels: dict[str, str] | Iterable[str]) -> list[str]:
    if isinstance(labels, dict):
        return [f"{k}={v}" if v is not None else k for k, v in labels.items()]
    return list(labels)


_shared: Engine | None = None
_shared_lock = threading.Lock()


def get_engine() -> Engine:
    """A process-wide connected Engine (connections are pooled by docker-py)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Engine.connect()
        return _shared
